"""No-op and timing tasks for the benchmarks."""

from __future__ import annotations

import time

import tasklib


@tasklib.task
def noop(i: int) -> None:
    return None


@tasklib.task
def stamp() -> float:
    """Returns when it started (wall clock), for pickup latency."""
    return time.time()


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
