"""Run real ``tasklib worker`` processes for tests and read what their tasks recorded."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent


def start_worker(
    database_url: str,
    log_path: Path,
    *extra: str,
    app: str = "tests.integration.jobs",
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """A worker in its own process group (so a test can kill it and its children at once)."""
    environ = {**os.environ, "TASKLIB_TEST_LOG": str(log_path), "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tasklib.cli",
            "--log-level",
            "info",
            "worker",
            "--app",
            app,
            "--database-url",
            database_url,
            *extra,
        ],
        cwd=ROOT,
        env=environ,
        start_new_session=True,
        stdout=open(log_path.with_suffix(f".{time.monotonic_ns()}.out"), "wb"),
        stderr=subprocess.STDOUT,
    )


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 30) -> int:
    if proc.poll() is None:
        try:
            os.kill(proc.pid, sig)
        except ProcessLookupError:
            pass
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait(5)


@contextmanager
def workers(
    database_url: str, log_path: Path, count: int = 1, *extra: str, app: str = "tests.integration.jobs"
) -> Iterator[list[subprocess.Popen[bytes]]]:
    procs = [start_worker(database_url, log_path, *extra, app=app) for _ in range(count)]
    try:
        yield procs
    finally:
        for proc in procs:
            stop(proc)
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # leftovers (children) never outlive a test
            except ProcessLookupError:
                pass


def wait_for(predicate: Callable[[], bool], timeout: float = 30, interval: float = 0.05) -> bool:
    """The suite's one way to wait: until ``predicate()`` holds (True), or ``timeout`` seconds (its last answer)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def started(log: Path, key: str) -> Callable[[], bool]:
    """A predicate for ``wait_for``: has the task marked ``key`` started (its child logged it)?"""
    return lambda: any(line[:2] == ["start", key] for line in read_log(log))


async def await_for(predicate: Callable[[], bool], timeout: float = 30, interval: float = 0.05) -> bool:
    """``wait_for`` inside an event loop: the predicate runs in a thread, the loop goes on meanwhile."""
    return await asyncio.to_thread(wait_for, predicate, timeout, interval)


def states(database_url: str) -> dict[str, int]:
    with psycopg.connect(database_url) as conn:
        return dict(conn.execute("SELECT state, count(*) FROM tasks GROUP BY state").fetchall())  # type: ignore[arg-type]


def read_log(log_path: Path) -> list[list[str]]:
    if not log_path.exists():
        return []
    return [line.split() for line in log_path.read_text().splitlines() if line.strip()]


def task_row(url: str, task_id) -> dict:
    with psycopg.connect(url, row_factory=psycopg.rows.dict_row) as conn:
        return conn.execute("SELECT * FROM tasks WHERE id = %s", (task_id,)).fetchone()  # type: ignore[return-value]


def live_workers(url: str) -> int:
    """Workers whose presence in this test's database is fresh (announced, and not gone)."""
    from tasklib import sql

    with psycopg.connect(url) as conn:
        return sum(1 for row in conn.execute(sql.WORKERS, {"after": sql.VANISHED_AFTER_SECONDS}) if row[-1])


def all_done(url: str, total: int, final=("completed",)) -> bool:
    return sum(n for s, n in states(url).items() if s in final) == total
