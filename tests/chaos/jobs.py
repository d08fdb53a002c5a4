"""Tasks for the chaos tests. Each run appends a line to $TASKLIB_TEST_LOG (see tests.integration.jobs)."""

from __future__ import annotations

import os

import tasklib
from tests.integration.jobs import record

MB = 1024 * 1024


@tasklib.task(memory_limit_mb=64, max_retries=1)
def hog(mb: int) -> int:
    """Allocate ``mb`` megabytes and touch them."""
    record("hog", mb, os.getpid())
    block = bytearray(mb * MB)
    return len(block) // MB


@tasklib.task(max_retries=0)
def hog_default(mb: int) -> int:
    """Like ``hog`` with no limit of its own: the worker's --memory-limit applies."""
    record("hog_default", mb, os.getpid())
    return len(bytearray(mb * MB)) // MB


@tasklib.task(max_retries=1, timeout_seconds=1)
def soak(key: str, mode: str) -> str:
    """One soak task: ``ok`` returns, ``fail`` raises (retried once), ``slow`` takes half a second,
    ``hang`` outlives its 1 s timeout."""
    import time

    record("start", key, os.getpid())
    if mode == "fail":
        raise RuntimeError(f"soak failure {key}")
    if mode == "slow":
        time.sleep(0.5)
    if mode == "hang":
        time.sleep(10)
    record("done", key, os.getpid())
    return key
