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
