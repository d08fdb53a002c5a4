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
