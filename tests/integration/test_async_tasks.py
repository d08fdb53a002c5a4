"""``async def`` tasks: they run on an event loop in a child, beside sync tasks, with the same
results, retries, timeouts and cancels."""

from __future__ import annotations

import asyncio
import inspect
from pathlib import Path

import tasklib
from tests.integration import jobs
from tests.workers import read_log, start_worker, stop, wait_for


def test_async_tasks_run_beside_sync_ones(tl: tasklib.Config, tmp_path: Path) -> None:
    log = tmp_path / "runs.log"
    assert inspect.iscoroutinefunction(jobs.amark)  # still the user's function
    assert asyncio.run(jobs.amark(key="direct")) == "async direct"
    ok = asyncio.run(tasklib.submit_task(jobs.amark, key="a1", sleep=0.05))
    sync = tasklib.submit_task_sync(jobs.mark, key="s1")
    failing = tasklib.submit_task_sync(jobs.amark, key="a2", fail=True)
    slow = tasklib.submit_task_sync(jobs.amark, key="a3", sleep=10, timeout_seconds=1, max_retries=0)
    cancel_me = tasklib.submit_task_sync(jobs.amark, key="a4", sleep=30)
    worker = start_worker(tl.database_url, log, "--concurrency", "3", "--retry-delay", "0.2")
    try:
        finished = ("completed", "failed", "cancelled")
        assert wait_for(lambda: any(line[:2] == ["start", "a4"] for line in read_log(log)), timeout=20)
        tasklib.cancel_task(cancel_me)
        every = (ok, sync, failing, slow, cancel_me)
        assert wait_for(lambda: all(tasklib.get_task(t).state in finished for t in every), timeout=30)  # type: ignore[union-attr]
    finally:
        stop(worker)
    got = {t: tasklib.get_task(t) for t in (ok, sync, failing, slow, cancel_me)}
    assert got[ok].state == "completed" and got[ok].result == "async a1"  # type: ignore[union-attr]
    assert got[sync].state == "completed"  # type: ignore[union-attr]
    assert got[failing].state == "failed" and got[failing].retry_count == 1  # type: ignore[union-attr]
    assert "RuntimeError: async failure a2" in (got[failing].error or "") and "amark" in (got[failing].error or "")  # type: ignore[union-attr]
    assert got[slow].state == "failed" and "TimeoutError" in (got[slow].error or "")  # type: ignore[union-attr]
    assert got[cancel_me].state == "cancelled"  # type: ignore[union-attr]
    assert ["done", "a4"] not in [line[:2] for line in read_log(log)]  # the cancelled one was stopped
