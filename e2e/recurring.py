"""A recurring task for the Schedules e2e test (its own module: the other tests' worker never schedules it)."""

from __future__ import annotations

import tasklib


@tasklib.task(every=2, schedule_kwargs={"text": "beat"})
def heartbeat(text: str) -> str:
    return text
