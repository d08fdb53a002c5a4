"""PostgreSQL restarts under load: four workers draining, producers submitting through the outage."""

from __future__ import annotations

import collections
import threading
import time
from pathlib import Path

import pytest

import tasklib
from tests.cluster import Cluster
from tests.integration import jobs
from tests.workers import read_log, start_worker, states, stop, wait_for

BACKLOG = 10_000


@pytest.mark.parametrize("outage_seconds", [2.0, 6.0])
def test_restart_under_load_loses_nothing_and_runs_nothing_twice(
    cluster: Cluster, tmp_path: Path, outage_seconds: float
) -> None:
    """Shorter and longer than the 3 s lock (and than the 5 s after which a worker without a session
    counts as gone): the outcomes workers hold through the outage are written, not rescued and run again."""
    url, log = cluster.url, tmp_path / "runs.log"
    tasklib.submit_many_sync(jobs.mark, [{"key": f"b{i}"} for i in range(BACKLOG)])
    accepted: list[str] = []
    refused: list[float] = []  # how long each refused submit took to say so
    slowest = [0.0]
    stop_producing = threading.Event()

    def produce(who: int) -> None:
        n = 0
        while not stop_producing.is_set():
            key = f"p{who}-{n}"
            n += 1
            started = time.monotonic()
            try:
                tasklib.submit_task_sync(jobs.mark, key=key)
                accepted.append(key)
            except tasklib.DatabaseError:
                refused.append(time.monotonic() - started)
            slowest[0] = max(slowest[0], time.monotonic() - started)
            time.sleep(0.01)

    procs = [start_worker(url, log, "--lock-timeout", "3", "--poll-interval", "0.2", "--concurrency", "2") for _ in range(4)]
    producers = [threading.Thread(target=produce, args=(who,)) for who in range(2)]
    try:
        for thread in producers:
            thread.start()
        assert wait_for(lambda: states(url).get("completed", 0) > 2_000, timeout=60)
        cluster.stop()
        time.sleep(outage_seconds)
        cluster.start()
        back = time.monotonic()
        done_before = sum(1 for line in read_log(log) if line[0] == "done")
        assert wait_for(lambda: sum(1 for line in read_log(log) if line[0] == "done") > done_before + 50, timeout=30)
        resumed = time.monotonic() - back
        time.sleep(1)
        stop_producing.set()
        for thread in producers:
            thread.join(30)
        total = BACKLOG + len(accepted)
        assert wait_for(lambda: states(url).get("completed", 0) == total, timeout=120), states(url)
    finally:
        stop_producing.set()
        for proc in procs:
            stop(proc)
    starts = collections.Counter(line[1] for line in read_log(log) if line[0] == "start")
    doubles = [key for key, n in starts.items() if n > 1]
    print(
        f"\nrestart under load: {total} tasks, {len(accepted)} submitted by producers ({len(refused)} refused during the"
        f" outage, slowest submit {slowest[0]:.1f} s), resumed {resumed:.1f} s after the restart, {len(doubles)} ran twice"
    )
    assert states(url) == {"completed": total}  # nothing lost, nothing left running
    assert len(starts) == total and doubles == [], doubles
    assert refused, "no submit met the outage: the test did not test it"
    assert slowest[0] < 15, "a submit hung past its pool timeout"
    assert resumed < 3
