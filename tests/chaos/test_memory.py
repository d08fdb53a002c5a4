"""Runaway memory: a task past its memory limit fails with a clear message; the worker goes on."""

from __future__ import annotations

from pathlib import Path

import psycopg

import tasklib
from tests.chaos import jobs
from tests.integration import jobs as plain
from tests.workers import read_log, start_worker, stop, wait_for


def row(url: str, task_id: object) -> tuple[str, int, str | None, object]:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT state, retry_count, error, result FROM tasks WHERE id = %s", [task_id]).fetchone()  # type: ignore[return-value]


def test_a_task_past_its_memory_limit_fails_and_the_worker_goes_on(tl: tasklib.Config, tmp_path: Path) -> None:
    url = tl.database_url
    log = tmp_path / "log"
    big = tasklib.submit_task_sync(jobs.hog, mb=512)  # limit 64 MB, one retry
    small = tasklib.submit_task_sync(jobs.hog, mb=8)
    over_default = tasklib.submit_task_sync(jobs.hog_default, mb=300)  # the worker's default: 128 MB
    under_default = tasklib.submit_task_sync(jobs.hog_default, mb=50)
    after = tasklib.submit_task_sync(plain.mark, key="after")
    worker = start_worker(url, log, "--app", "tests.chaos.jobs", "--memory-limit", "128", "--retry-delay", "0.2")
    try:
        finished = ("completed", "failed")
        assert wait_for(
            lambda: all(row(url, t)[0] in finished for t in (big, small, over_default, under_default, after)), 60
        )
        state, retries, error, _ = row(url, big)
        assert state == "failed" and retries == 1, (state, retries)  # retried by its policy, then failed
        assert "MemoryError" in (error or "") and "memory limit of 64 MB" in (error or ""), error
        assert row(url, small)[0::3] == ("completed", 8)
        state, _, error, _ = row(url, over_default)
        assert state == "failed" and "memory limit of 128 MB" in (error or ""), error
        assert row(url, under_default)[0::3] == ("completed", 50)
        assert row(url, after)[0] == "completed"
        assert worker.poll() is None  # the worker is alive
        # the children that hit the limit keep serving: no child died (pids repeat across tasks)
        pids = {line[2] for line in read_log(log) if line[0] in ("hog", "hog_default")}
        assert len(pids) == 1, pids
    finally:
        stop(worker)
