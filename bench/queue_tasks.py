"""The queue and limit measures' tasks, beside the no-op ones (``--app bench.queue_tasks`` serves both)."""

from __future__ import annotations

import time

import tasklib
from bench.tasks import noop, stamp  # noqa: F401  (registered for the same workers)


@tasklib.task(queue="emails")
def mail(i: int) -> None:
    """A no-op in a queue of its own (queue isolation)."""
    return None


@tasklib.task(concurrency_limit=2)
def limited(i: int, sleep: float = 0.2) -> None:
    time.sleep(sleep)


@tasklib.task(rate_limit="20/s")
def paced(i: int) -> float:
    return time.time()
