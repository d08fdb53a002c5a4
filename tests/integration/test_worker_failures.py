"""The worker when things die: killed workers and fork servers, cut connections, PostgreSQL
restarts. Every case ends with each task recorded, none lost, none run twice in normal operation."""

from __future__ import annotations

import collections
import os
import signal
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

import tasklib
from tests.cluster import Cluster
from tests.integration import jobs
from tests.workers import all_done, live_workers, read_log, start_worker, started, states, stop, task_row, wait_for, workers


def test_kill_9_worker_group_mid_task_is_rescued_and_counted(tl, tmp_path: Path) -> None:
    log = tmp_path / "runs.log"
    task_id = tasklib.submit_task_sync(jobs.mark, key="victim", sleep=3)
    first = start_worker(tl.database_url, log, "--lock-timeout", "2")
    try:
        assert wait_for(started(log, "victim"), timeout=20)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(5)
        killed_at = time.monotonic()
        with workers(tl.database_url, log, 1, "--lock-timeout", "2"):
            assert wait_for(lambda: task_row(tl.database_url, task_id)["state"] == "completed", timeout=20)
        assert time.monotonic() - killed_at < 12
    finally:
        stop(first, signal.SIGKILL)
    row = task_row(tl.database_url, task_id)
    assert row["retry_count"] == 1  # the lost attempt counts
    assert [line[1] for line in read_log(log) if line[0] == "done"] == ["victim"]  # the killed run never finished


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as status:
            return "\nState:\tZ" not in status.read()  # a zombie runs no code
    except FileNotFoundError:
        return False


def test_kill_9_with_the_default_lock_is_rescued_in_seconds(tl, tmp_path: Path) -> None:
    """Default 600 s lock: the killed worker stops refreshing its presence, so the other worker
    rescues its claims within seconds instead of minutes; its children die with it, so the killed attempts never
    finish (the only repeats are the tasks that were running at the kill)."""
    log = tmp_path / "runs.log"
    ids = tasklib.submit_many_sync(jobs.mark, [{"key": f"v{i}", "sleep": 4} for i in range(4)])
    first = start_worker(tl.database_url, log, "--concurrency", "4", "--worker-id", "victim")
    try:
        assert wait_for(lambda: len([x for x in read_log(log) if x[0] == "start"]) == 4, timeout=20)
        pids = [int(line[2]) for line in read_log(log) if line[0] == "start"]
        with workers(tl.database_url, log, 1, "--worker-id", "rescuer"):
            time.sleep(3)  # the rescuer is up and has looked (it sees the victim live, then gone)
            os.kill(first.pid, signal.SIGKILL)  # the worker process alone: its children must follow it
            killed_at = time.monotonic()
            assert wait_for(lambda: not any(_alive(pid) for pid in pids), timeout=3), "children outlived the worker"
            rescued = wait_for(lambda: all(task_row(tl.database_url, i)["retry_count"] == 1 for i in ids), timeout=20)
            took = time.monotonic() - killed_at
            assert rescued and took < 12, f"rescued after {took:.1f} s"  # 5 s stale after its last refresh, a look
            assert wait_for(lambda: all_done(tl.database_url, 4), timeout=30)
    finally:
        stop(first, signal.SIGKILL)
    rows = [task_row(tl.database_url, i) for i in ids]
    assert all(r["worker_id"] == "rescuer" and r["retry_count"] == 1 for r in rows)
    worker_logs = "".join(p.read_text() for p in tmp_path.glob("runs.*.out"))
    assert "worker victim stopped announcing itself: rescuing 4 task(s)" in worker_logs
    finished = collections.Counter(line[1] for line in read_log(log) if line[0] == "done")
    assert finished == {f"v{i}": 1 for i in range(4)}  # only the rescued attempts finished
    print(f"rescued {len(ids)} tasks {took:.1f} s after kill -9 (lock timeout 600 s)")


def test_a_worker_that_died_before_any_other_started_is_rescued_in_seconds(tl, tmp_path: Path) -> None:
    """No live worker ever saw the victim (all workers down, then a new one starts): its presence
    row has gone stale meanwhile, so the new worker rescues its claims within seconds of starting,
    despite the default 600 s lock."""
    log = tmp_path / "runs.log"
    ids = tasklib.submit_many_sync(jobs.mark, [{"key": f"e{i}", "sleep": 30} for i in range(2)])
    first = start_worker(tl.database_url, log, "--concurrency", "2", "--worker-id", "early")
    try:
        assert wait_for(lambda: len([x for x in read_log(log) if x[0] == "start"]) == 2, timeout=20)
    finally:
        stop(first, signal.SIGKILL)
    assert wait_for(lambda: live_workers(tl.database_url) == 0, timeout=10)
    time.sleep(1)
    assert {task_row(tl.database_url, i)["state"] for i in ids} == {"running"}  # locked for 600 s
    with workers(tl.database_url, log, 1, "--worker-id", "later"):
        started_at = time.monotonic()
        rescued = wait_for(lambda: all(task_row(tl.database_url, i)["retry_count"] == 1 for i in ids), timeout=20)
        took = time.monotonic() - started_at
        assert rescued and took < 12, f"rescued {took:.1f} s after the new worker started"
    rows = [task_row(tl.database_url, i) for i in ids]
    assert all("WorkerLost: worker early stopped announcing itself" in (r["error"] or "") for r in rows)


def test_long_task_on_live_worker_is_not_stolen(tl, tmp_path: Path) -> None:
    log = tmp_path / "runs.log"
    task_id = tasklib.submit_task_sync(jobs.mark, key="long", sleep=6)
    with workers(tl.database_url, log, 2, "--lock-timeout", "2"):
        assert wait_for(lambda: task_row(tl.database_url, task_id)["state"] == "completed", timeout=30)
    assert [line[1] for line in read_log(log) if line[0] == "start"] == ["long"]
    assert task_row(tl.database_url, task_id)["retry_count"] == 0


@pytest.mark.parametrize("cut_seconds", [1.0, 4.0])
def test_dropped_connections_lose_nothing(tl, tmp_path: Path, cut_seconds: float) -> None:
    from tests.proxy import TcpProxy

    log = tmp_path / "runs.log"
    server = urlsplit(tl.database_url)
    with TcpProxy(server.hostname or "127.0.0.1", server.port or 5432) as proxy:
        url = proxy.through(tl.database_url)
        tasklib.submit_many_sync(jobs.mark, [{"key": f"d{i}", "sleep": 0.01} for i in range(300)])
        proc = start_worker(url, log, "--lock-timeout", "3", "--poll-interval", "0.2", "--concurrency", "2")
        try:
            assert wait_for(lambda: states(tl.database_url).get("completed", 0) > 20, timeout=30)
            # The worker's claim, write and LISTEN connections all go through the proxy, and the cut
            # closes them: otherwise this test would pass without any outage.
            assert proxy.cut() >= 3
            time.sleep(cut_seconds)
            before = proxy.accepted
            proxy.restore()
            assert wait_for(lambda: all_done(tl.database_url, 300), timeout=60), states(tl.database_url)
            assert proxy.accepted >= before + 2, "the worker did not reconnect through the proxy"
        finally:
            stop(proc)
    done = collections.Counter(line[1] for line in read_log(log) if line[0] == "done")
    assert len(done) == 300
    assert "running" not in states(tl.database_url)


@pytest.mark.parametrize("outage_seconds", [2.0, 8.0])
def test_postgres_restart_mid_run_loses_nothing(cluster: Cluster, tmp_path: Path, outage_seconds: float) -> None:
    """A real PostgreSQL restart (a throwaway embedded cluster of our own) while tasks run, shorter
    and longer than the 3 s lock: nothing lost, nothing run twice (after the long outage the worker
    renews and writes what is its own instead of rescuing it), and work resumes within seconds."""
    url, log = cluster.url, tmp_path / "runs.log"
    tasklib.submit_many_sync(jobs.mark, [{"key": f"r{i}", "sleep": 0.05} for i in range(300)])
    proc = start_worker(url, log, "--lock-timeout", "3", "--poll-interval", "0.2", "--concurrency", "4")
    try:
        assert wait_for(lambda: states(url).get("completed", 0) > 30, timeout=30)
        cluster.stop()  # fast shutdown: every connection is cut
        time.sleep(outage_seconds)
        cluster.start()
        back = time.monotonic()
        before = len([line for line in read_log(log) if line[0] == "done"])
        assert wait_for(lambda: len([line for line in read_log(log) if line[0] == "done"]) > before + 4, timeout=30)
        resumed = time.monotonic() - back
        assert wait_for(lambda: all_done(url, 300), timeout=90), states(url)
    finally:
        stop(proc)
    done = collections.Counter(line[1] for line in read_log(log) if line[0] == "done")
    starts = collections.Counter(line[1] for line in read_log(log) if line[0] == "start")
    assert len(done) == 300
    assert [key for key, n in starts.items() if n > 1] == []
    assert "running" not in states(url)
    assert resumed < 2.5, resumed  # reconnect attempts at most 1 s apart


def _fork_server_of(worker_pid: int) -> int | None:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if ppid == worker_pid and b"tasklib.worker.forkserver" in cmdline:
            return int(entry.name)
    return None


def test_a_killed_fork_server_is_replaced_and_its_running_task_retried(tl, tmp_path: Path) -> None:
    log = tmp_path / "runs.log"
    running = tasklib.submit_task_sync(jobs.mark, key="r", sleep=2, max_retries=1)
    worker = start_worker(tl.database_url, log, "--concurrency", "2", "--retry-delay", "0.2")
    try:
        assert wait_for(lambda: ["start", "r"] in [line[:2] for line in read_log(log)], timeout=20)
        server = _fork_server_of(worker.pid)
        assert server is not None
        os.kill(server, signal.SIGKILL)  # its children die with it (PR_SET_PDEATHSIG)
        after = tasklib.submit_task_sync(jobs.mark, key="after")
        assert wait_for(lambda: states(tl.database_url).get("completed") == 2, timeout=30)
        replacement = _fork_server_of(worker.pid)
        assert replacement is not None and replacement != server
    finally:
        assert stop(worker) == 0
    task = tasklib.get_task(running)
    assert task is not None and task.state == "completed" and task.retry_count == 1  # one attempt lost, retried
    assert tasklib.get_task(after).state == "completed"  # type: ignore[union-attr]
