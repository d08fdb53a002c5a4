"""Recurring tasks for the schedule tests (a module of their own: workers of other tests never schedule them)."""

from __future__ import annotations

import os

import tasklib
from tests.integration.jobs import record

#: The period of ``tick``; tests set it per worker process before import (default: 1 s).
EVERY = int(os.environ.get("TASKLIB_TEST_EVERY", "1"))
CATCH_UP = os.environ.get("TASKLIB_TEST_CATCH_UP") == "1"


@tasklib.task(every=EVERY, schedule_kwargs={"label": "tick"}, catch_up=CATCH_UP)
def tick(label: str) -> str:
    record("tick", label, os.getpid())
    return label
