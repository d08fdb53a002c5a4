"""Task functions for the workflow tests (and everything in ``jobs``, so one ``--app`` serves both)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import tasklib
from tests.integration.jobs import mark, record  # noqa: F401  (registered for the workers too)


@tasklib.task
def value(x: int) -> int:
    record("value", x, time.time())
    return x


@tasklib.task
def total() -> int:
    """The sum of the parents' results."""
    results = tasklib.parent_results()
    record("total", sum(results.values()), time.time())
    return sum(results.values())


@tasklib.task
def collect() -> dict[str, object]:
    """The parents' results as it saw them (ids as text)."""
    return {str(k): v for k, v in tasklib.parent_results().items()}


@tasklib.task
async def collect_async() -> dict[str, object]:
    return {str(k): v for k, v in tasklib.parent_results().items()}


@tasklib.task(max_retries=0)
def boom(key: str) -> None:
    record("boom", key, time.time())
    raise RuntimeError(f"boom {key}")


@tasklib.task(max_retries=0)
def fail_until(marker: str) -> str:
    """Fails while the file ``marker`` does not exist (a fix deployed later, say)."""
    if not Path(marker).exists():
        raise RuntimeError(f"{marker} is missing")
    return "fixed"


@tasklib.task
def pid() -> int:
    return os.getpid()
