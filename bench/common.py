"""Helpers shared by the benchmark modules."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
from pathlib import Path

import psycopg

import tasklib
from bench import tasks as btasks

ROOT = Path(__file__).resolve().parent.parent


def tasklib_process(url: str, command: str, *args: str) -> subprocess.Popen[bytes]:
    """`tasklib COMMAND …` in its own process group, quiet, against ``url``."""
    return subprocess.Popen(
        [sys.executable, "-m", "tasklib.cli", "--log-level", "warning", command, *args, "--database-url", url],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        start_new_session=True,
    )


def percentiles(values: list[float]) -> dict[str, float]:
    q = statistics.quantiles(values, n=100)
    return {"count": len(values), "p50_ms": statistics.median(values), "p95_ms": q[94], "p99_ms": q[98]}


def truncate(url: str) -> None:
    """An empty table whose statistics say so (as after any quiet spell)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE tasks")
        conn.execute("VACUUM ANALYZE tasks")


def prefill(url: str, n: int) -> None:
    """``n`` no-op tasks waiting, analyzed, before any worker starts (the friendliest shape)."""
    truncate(url)
    tasklib.init(tasklib.Config(database_url=url))
    tasklib.submit_many_sync(btasks.noop, [{"i": i} for i in range(n)])
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE tasks")
