"""Task functions for the queue and limit tests (and everything in ``jobs``, so one ``--app`` serves both)."""

from __future__ import annotations

import os
import time

import tasklib
from tests.integration.jobs import mark, record  # noqa: F401  (registered for the workers too)


@tasklib.task(concurrency_limit=2)
def limited(i: int, sleep: float = 0.2) -> int:
    record("limited-start", i, os.getpid(), time.time())
    time.sleep(sleep)
    record("limited-end", i, os.getpid(), time.time())
    return i


@tasklib.task(rate_limit="20/s")
def paced(i: int) -> int:
    record("paced", i, time.time())
    return i


@tasklib.task(queue="emails")
def mail(i: int, sleep: float = 0.0) -> int:
    record("mail", i, os.getpid(), time.time())
    if sleep:
        time.sleep(sleep)
    return i


@tasklib.task
def plain(i: int) -> int:
    record("plain", i, time.time())
    return i
