"""``async def`` tasks: they run on an event loop in a child, beside sync tasks, with the same
results, retries, timeouts and cancels."""

from __future__ import annotations

import asyncio
import inspect
from pathlib import Path

import pytest

import tasklib
from tests.integration import jobs
from tests.workers import read_log, start_worker, started, stop, wait_for


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
        assert wait_for(started(log, "a4"), timeout=20)
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


# -- many at once, in a few children ------------------------------------------------------------


def runs(log: Path, event: str = "start") -> dict[str, list[tuple[int, float]]]:
    """key -> [(pid, time), …] of each ``event`` line the tasks recorded."""
    found: dict[str, list[tuple[int, float]]] = {}
    for line in read_log(log):
        if line[0] == event:
            found.setdefault(line[1], []).append((int(line[2]), float(line[3])))
    return found


def finished(ids: list) -> bool:  # type: ignore[type-arg]
    return all(tasklib.get_task(t).state in ("completed", "failed", "cancelled") for t in ids)  # type: ignore[union-attr]


def run_until_finished(url: str, log: Path, ids: list, *args: str, timeout: float = 60) -> None:  # type: ignore[type-arg]
    """A worker with ``args`` until every task in ``ids`` has finished."""
    worker = start_worker(url, log, *args)
    try:
        assert wait_for(lambda: finished(ids), timeout=timeout)
    finally:
        stop(worker)


def test_many_async_tasks_run_at_once_in_one_event_loop(tl: tasklib.Config, tmp_path: Path) -> None:
    log = tmp_path / "runs.log"
    ids = tasklib.submit_many_sync(jobs.amark, [{"key": f"m{i}", "sleep": 1.5} for i in range(60)])
    run_until_finished(tl.database_url, log, ids, "--async-concurrency", "60", timeout=60)
    assert all(tasklib.get_task(t).state == "completed" for t in ids)  # type: ignore[union-attr]
    starts, dones = runs(log), runs(log, "done")
    assert len(starts) == 60 and all(len(v) == 1 for v in starts.values())
    # All 60 were in flight together: the last one started before the first one finished.
    assert max(t for ((_, t),) in starts.values()) < min(t for ((_, t),) in dones.values())
    assert len({pid for ((pid, _),) in starts.values()}) == 1  # 60 tasks fit one async child


def test_an_async_timeout_cancels_the_task_and_spares_its_neighbours(tl: tasklib.Config, tmp_path: Path) -> None:
    log = tmp_path / "runs.log"
    slow = tasklib.submit_task_sync(jobs.amark, key="slow", sleep=30, timeout_seconds=1, max_retries=0)
    others = [tasklib.submit_task_sync(jobs.amark, key=f"o{i}", sleep=2.5) for i in range(5)]
    run_until_finished(tl.database_url, log, [slow, *others], "--async-concurrency", "10", timeout=30)
    failed = tasklib.get_task(slow)
    assert failed is not None and failed.state == "failed"
    assert "TimeoutError: task exceeded its timeout of 1 s and was cancelled" in (failed.error or "")
    assert "amark" in (failed.error or "")  # the traceback shows where it was when cancelled
    starts = runs(log)
    for task_id in others:
        task = tasklib.get_task(task_id)
        assert task is not None and task.state == "completed" and task.retry_count == 0
    assert all(len(v) == 1 for v in starts.values())  # nobody ran twice
    assert len({pid for v in starts.values() for pid, _ in v}) == 1  # cancelled inside: no child was killed


@pytest.mark.parametrize("how", ["block", "swallow"])
def test_a_task_that_cannot_be_cancelled_costs_its_child_and_only_its_own_attempt(
    tl: tasklib.Config, tmp_path: Path, how: str
) -> None:
    log = tmp_path / "runs.log"
    stubborn = tasklib.submit_task_sync(
        jobs.astubborn, key="stubborn", seconds=30, how=how, timeout_seconds=1, max_retries=0
    )
    others = [tasklib.submit_task_sync(jobs.amark, key=f"o{i}", sleep=6) for i in range(4)]
    run_until_finished(tl.database_url, log, [stubborn, *others], "--async-concurrency", "10", timeout=60)
    task = tasklib.get_task(stubborn)
    assert task is not None and task.state == "failed" and task.retry_count == 0
    assert "TimeoutError: task exceeded its timeout of 1 s and did not stop when cancelled" in (task.error or "")
    starts = runs(log)
    assert "stubborn" not in runs(log, "done")
    first_child = starts["stubborn"][0][0]
    for i, task_id in enumerate(others):
        other = tasklib.get_task(task_id)
        # Killed with the stubborn task's child before they could finish, then run again in a new
        # child, with no attempt counted: they did nothing wrong.
        assert other is not None and other.state == "completed" and other.retry_count == 0 and other.error is None
        pids = [pid for pid, _ in starts[f"o{i}"]]
        assert pids[-1] != first_child and len(runs(log, "done")[f"o{i}"]) == 1
        if how == "swallow":  # they were running beside it: started there, then again elsewhere
            assert pids[0] == first_child and len(pids) == 2
        # (a blocked loop never even started them there)
    if how == "swallow":
        assert "stubborn" in runs(log, "ignored-cancel")


def test_a_crashed_async_child_counts_an_attempt_for_every_task_it_held(tl: tasklib.Config, tmp_path: Path) -> None:
    log = tmp_path / "runs.log"
    crash = tasklib.submit_task_sync(jobs.acrash, key="crash", max_retries=0)
    others = [tasklib.submit_task_sync(jobs.amark, key=f"o{i}", sleep=3, max_retries=1) for i in range(3)]
    run_until_finished(
        tl.database_url, log, [crash, *others], "--async-concurrency", "10", "--retry-delay", "0.2", timeout=60
    )
    task = tasklib.get_task(crash)
    assert task is not None and task.state == "failed" and "WorkerChildDied" in (task.error or "")
    for task_id in others:
        other = tasklib.get_task(task_id)
        assert other is not None and other.state == "completed" and other.retry_count == 1


def test_a_dashboard_cancel_stops_one_running_async_task_among_many(tl: tasklib.Config, tmp_path: Path) -> None:
    from litestar.testing import TestClient

    from dashboard.app import create_app

    log = tmp_path / "runs.log"
    ids = [tasklib.submit_task_sync(jobs.amark, key=f"c{i}", sleep=4) for i in range(10)]
    target = ids[3]
    worker = start_worker(tl.database_url, log, "--async-concurrency", "20")
    try:
        assert wait_for(lambda: len(runs(log)) == 10, timeout=30)  # all ten running at once
        with TestClient(create_app(tl)) as client:
            client.get("/tasks")
            response = client.post(
                f"/tasks/{target}/cancel", data={"_csrf_token": client.cookies["csrftoken"]}, follow_redirects=False
            )
            assert response.status_code == 303
        assert wait_for(lambda: finished(ids), timeout=30)
    finally:
        stop(worker)
    assert tasklib.get_task(target).state == "cancelled"  # type: ignore[union-attr]
    done = runs(log, "done")
    assert "c3" not in done and len(done) == 9  # stopped; the nine others ran to the end
    assert all(tasklib.get_task(t).state == "completed" for t in ids if t != target)  # type: ignore[union-attr]
    assert len({pid for v in runs(log).values() for pid, _ in v}) == 1  # by cancellation, not by a kill


def test_shutdown_lets_async_tasks_finish_within_the_grace_and_releases_the_rest(tl: tasklib.Config, tmp_path: Path) -> None:
    log = tmp_path / "runs.log"
    quick = [tasklib.submit_task_sync(jobs.amark, key=f"q{i}", sleep=1) for i in range(3)]
    long = [tasklib.submit_task_sync(jobs.amark, key=f"l{i}", sleep=60) for i in range(3)]
    worker = start_worker(tl.database_url, log, "--async-concurrency", "10", "--shutdown-grace", "3")
    try:
        assert wait_for(lambda: len(runs(log)) == 6, timeout=30)
    finally:
        assert stop(worker) == 0
    assert all(tasklib.get_task(t).state == "completed" for t in quick)  # type: ignore[union-attr]
    for task_id in long:
        task = tasklib.get_task(task_id)
        assert task is not None and task.state == "pending" and task.retry_count == 0


def test_async_tasks_keep_priorities_tags_unique_keys_and_schedules(tl: tasklib.Config, tmp_path: Path) -> None:
    log = tmp_path / "runs.log"
    low = [tasklib.submit_task_sync(jobs.amark, key=f"low{i}") for i in range(3)]
    high = tasklib.submit_task_sync(jobs.amark, key="high", priority=9, tags={"kind": "urgent"})
    unique = tasklib.submit_task_sync(jobs.amark, key="u1", unique_key="only-one")
    assert tasklib.submit_task_sync(jobs.amark, key="u2", unique_key="only-one") == unique  # held: not written twice
    app = ("--app", "tests.integration.async_recurring_jobs")
    worker = start_worker(tl.database_url, log, *app, "--async-concurrency", "1")
    try:
        assert wait_for(lambda: finished([*low, high, unique]), timeout=30)
        assert wait_for(lambda: sum(1 for line in read_log(log) if line[0] == "atick") >= 2, timeout=10)
    finally:
        stop(worker)
    starts = [line[1] for line in read_log(log) if line[0] == "start"]
    assert starts[0] == "high" and sorted(starts) == ["high", "low0", "low1", "low2", "u1"]  # one slot: priority first
    assert tasklib.get_task(high).tags == {"kind": "urgent"}  # type: ignore[union-attr]
    ticks = [t for t in tasklib.list_tasks(name="tests.integration.async_recurring_jobs.atick", limit=50)]
    assert sum(1 for t in ticks if t.state == "completed" and t.result == "atick") >= 2
