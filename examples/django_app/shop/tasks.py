"""Tasks of the Django example. Plain functions: a task that uses the ORM would call django.setup()."""

from __future__ import annotations

import tasklib


@tasklib.task
def ship_order(order_id: int) -> str:
    return f"order {order_id} shipped"
