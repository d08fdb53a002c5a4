"""A network partition of one worker host, made with a network namespace and a veth pair."""

from __future__ import annotations

import collections
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest

import tasklib
from tests.chaos import netns
from tests.integration import jobs
from tests.proxy import TcpProxy
from tests.workers import ROOT, read_log, start_worker, states, stop, wait_for

REASON = netns.unavailable()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"partition test skipped: {REASON}")


def _running_on(url: str, worker_id: str) -> dict[str, object]:
    """Claims held by ``worker_id``: task id -> the claim's started_at."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT id::text, started_at FROM tasks WHERE state = 'running' AND worker_id = %s", [worker_id]
        ).fetchall()
    return dict(rows)  # type: ignore[arg-type]


def _island_worker(island: netns.Island, url: str, log: Path) -> subprocess.Popen[bytes]:
    import os

    env = {**os.environ, "TASKLIB_TEST_LOG": str(log), "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-m", "tasklib.cli", "worker", "--app", "tests.integration.jobs", "--database-url", url]
    argv += ["--worker-id", "island", "--lock-timeout", "3", "--poll-interval", "0.2", "--concurrency", "2"]
    return subprocess.Popen(
        island.command(*argv),
        cwd=ROOT,
        env=env,
        start_new_session=True,
        stdout=open(log.with_suffix(".island.out"), "wb"),
        stderr=subprocess.STDOUT,
    )


def test_partitioned_worker_is_rescued_and_its_late_outcomes_change_nothing(tl: tasklib.Config, tmp_path: Path) -> None:
    url, log = tl.database_url, tmp_path / "runs.log"
    assert url is not None
    server = urlsplit(url)
    tasklib.submit_many_sync(jobs.mark, [{"key": f"t{i}", "sleep": 0.2} for i in range(300)])
    with netns.island() as island, TcpProxy(server.hostname or "127.0.0.1", server.port or 5432, island.host_ip) as proxy:
        remote = _island_worker(island, proxy.through(url), log)
        local = [
            start_worker(url, log, "--lock-timeout", "3", "--poll-interval", "0.2", "--concurrency", "2") for _ in range(2)
        ]
        try:
            assert wait_for(lambda: len(_running_on(url, "island")) >= 2, timeout=30), "the island never claimed"
            island.cut()
            cut_at = time.monotonic()
            in_flight = _running_on(url, "island")
            time.sleep(8)  # longer than the 3 s lock: the other workers rescue the island's claims
            still = _running_on(url, "island")
            rescued = {task_id for task_id, started in in_flight.items() if still.get(task_id) != started}
            island.restore()
            assert wait_for(lambda: states(url).get("completed", 0) == 300, timeout=90), states(url)
            # The island works again once its connections resume: give it work only it can take.
            for proc in local:
                stop(proc)
            later = tasklib.submit_many_sync(jobs.mark, [{"key": f"late{i}"} for i in range(10)])
            assert wait_for(lambda: states(url).get("completed", 0) == 310, timeout=60), "the island did not resume"
        finally:
            for proc in [remote, *local]:
                stop(proc)
    starts = collections.Counter(line[1] for line in read_log(log) if line[0] == "start")
    doubles = sorted(key for key, n in starts.items() if n > 1)
    print(
        f"\npartition: {len(in_flight)} claimed by the island at the cut, {len(rescued)} rescued, {len(doubles)} ran twice"
    )
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT id::text, state, worker_id, retry_count, started_at FROM tasks").fetchall()
    assert {r[1] for r in rows} == {"completed"} and len(rows) == 310
    by_id = {r[0]: r for r in rows}
    for task_id in rescued:  # the outcome that counts is a later claim's: the island's late one was refused
        assert by_id[task_id][4] != in_flight[task_id] and by_id[task_id][3] >= 1, by_id[task_id]
    assert len(doubles) <= len(in_flight), (doubles, in_flight)
    assert rescued, "nothing was rescued: the partition did not outlast the lock"
    assert all(by_id[str(i)][2] == "island" for i in later)
    assert time.monotonic() - cut_at > 8
