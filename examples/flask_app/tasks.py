"""Tasks of the Flask example."""

from __future__ import annotations

import tasklib


@tasklib.task
def ship_order(order_id: int) -> str:
    return f"order {order_id} shipped"
