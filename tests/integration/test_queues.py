"""Queues, concurrency limits, rate limits and pause, across real worker processes; and pagination."""

from __future__ import annotations

import bisect
import os
import signal
import threading
import time
import uuid
from pathlib import Path

import psycopg
import pytest

import tasklib
from tests.cluster import Cluster
from tests.integration import queue_jobs as qj
from tests.workers import read_log, start_worker, states, stop, wait_for, workers

APP = "tests.integration.queue_jobs"


def _run(url: str, log: Path, count: int, *extra: str):  # type: ignore[no-untyped-def]
    return workers(url, log, count, "--concurrency", "4", "--poll-interval", "0.5", *extra, app=APP)


def _running(url: str, name: str) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT count(*) FROM tasks WHERE name = %s AND state = 'running'", [name]).fetchone()[0]  # type: ignore[index]


def _most_at_once(log: Path) -> int:
    """The most limited tasks whose runs overlapped, from their children's own start and end times."""
    events = sorted(
        [(float(line[3]), 1) for line in read_log(log) if line[0] == "limited-start"]
        + [(float(line[3]), -1) for line in read_log(log) if line[0] == "limited-end"],
        key=lambda e: (e[0], e[1]),  # an end at the same instant as a start counts first
    )
    most = current = 0
    for _, step in events:
        current += step
        most = max(most, current)
    return most


class Sampler:
    """Samples a task's running count every 10 ms in a thread; ``most`` is the highest seen."""

    def __init__(self, url: str, name: str) -> None:
        self.url, self.name, self.most, self.samples = url, name, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self._stop.is_set():
                n = conn.execute("SELECT count(*) FROM tasks WHERE name = %s AND state = 'running'", [self.name]).fetchone()
                self.most, self.samples = max(self.most, n[0]), self.samples + 1  # type: ignore[index]
                time.sleep(0.01)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)


# -- queues ----------------------------------------------------------------------------------------


def test_tasks_go_to_their_queue_and_workers_serve_only_theirs(tl: tasklib.Config, tmp_path: Path) -> None:
    url, log = tl.database_url, tmp_path / "runs.log"
    assert url is not None
    mails = tasklib.submit_many_sync(qj.mail, [{"i": i} for i in range(5)])
    plain = tasklib.submit_many_sync(qj.plain, [{"i": i} for i in range(5)])
    moved = tasklib.submit_task_sync(qj.plain, i=99, queue="emails")  # a submit may name another queue
    assert {t.queue for t in map(tasklib.get_task, mails)} == {"emails"}  # type: ignore[union-attr]
    assert tasklib.get_task(moved).queue == "emails"  # type: ignore[union-attr]
    with pytest.raises(tasklib.ValidationError, match="queue"):
        tasklib.submit_task_sync(qj.plain, i=1, queue="no spaces")
    with _run(url, log, 1, "--queue", "emails"):
        assert wait_for(lambda: states(url).get("completed", 0) == 6, 30)
        time.sleep(1.0)  # a worker of the emails queue leaves the default queue's tasks alone
        assert all(tasklib.get_task(i).state == "pending" for i in plain)  # type: ignore[union-attr]
    queues = {q.name: q for q in tasklib.list_queues()}
    assert (queues["default"].pending, queues["emails"].pending) == (5, 0)
    assert {t.id for t in tasklib.list_tasks(queue="emails")} == {*mails, moved}
    assert {t.id for t in tasklib.iter_tasks(state="pending", queue="default", page_size=2)} == set(plain)
    with _run(url, log, 1):  # no --queue: every queue its tasks name
        assert wait_for(lambda: states(url).get("completed", 0) == 11, 30)


def test_a_worker_refuses_a_queue_name_it_cannot_use(tl: tasklib.Config, tmp_path: Path) -> None:
    proc = start_worker(tl.database_url, tmp_path / "w.log", "--queue", "bad name", app=APP)  # type: ignore[arg-type]
    assert proc.wait(30) != 0


# -- concurrency limits ----------------------------------------------------------------------------


def test_a_concurrency_limit_holds_across_three_workers(tl: tasklib.Config, tmp_path: Path) -> None:
    """60 tasks of 0.2 s limited to 2 at once on 3 workers x 4: never more than 2 running (sampled and
    from the tasks' own clocks), about 60 x 0.2 / 2 s in all, and other tasks run meanwhile."""
    url, log = tl.database_url, tmp_path / "runs.log"
    assert url is not None
    tasklib.submit_many_sync(qj.limited, [{"i": i} for i in range(60)])
    with _run(url, log, 3), Sampler(url, "tests.integration.queue_jobs.limited") as sampler:
        time.sleep(0.5)
        tasklib.submit_many_sync(qj.plain, [{"i": i} for i in range(30)])
        assert wait_for(lambda: states(url).get("completed", 0) == 90, 60), states(url)
    starts = sorted(float(line[3]) for line in read_log(log) if line[0] == "limited-start")
    ends = sorted(float(line[3]) for line in read_log(log) if line[0] == "limited-end")
    plain_done = max(float(line[2]) for line in read_log(log) if line[0] == "plain")
    assert sampler.samples > 100 and sampler.most == 2, (sampler.samples, sampler.most)
    assert _most_at_once(log) == 2
    # 60 x 0.2 / 2 = 6 s when slots change hands at once (the bench measures how close: 6.87 s). Under
    # the parallel suite the workers are starved at times (a full run saw 9.2 s): twice the ideal.
    assert 5.8 <= ends[-1] - starts[0] <= 12.0, ends[-1] - starts[0]
    assert plain_done < ends[-1] - 2  # the other tasks did not wait for the limited ones


def test_a_queue_limit_holds_across_workers(tl: tasklib.Config, tmp_path: Path) -> None:
    url, log = tl.database_url, tmp_path / "runs.log"
    assert url is not None
    tasklib.set_queue_limit("emails", 3)
    assert {q.name: q.concurrency_limit for q in tasklib.list_queues()}["emails"] == 3
    with pytest.raises(tasklib.ValidationError):
        tasklib.set_queue_limit("emails", 0)
    tasklib.submit_many_sync(qj.mail, [{"i": i, "sleep": 0.1} for i in range(40)])
    with _run(url, log, 2), Sampler(url, "tests.integration.queue_jobs.mail") as sampler:
        assert wait_for(lambda: states(url).get("completed", 0) == 40, 60)
    assert sampler.most == 3, sampler.most
    tasklib.set_queue_limit("emails", None)
    assert {q.name: q.concurrency_limit for q in tasklib.list_queues()}["emails"] is None


def test_a_killed_worker_s_limited_slots_are_freed_by_the_rescue(tl: tasklib.Config, tmp_path: Path) -> None:
    """kill -9 of the worker holding both slots: its tasks are rescued (the slots free) and the
    other worker runs the rest, never more than 2 at once, the rescued ones again."""
    url, log = tl.database_url, tmp_path / "runs.log"
    assert url is not None
    tasklib.submit_many_sync(qj.limited, [{"i": i, "sleep": 1.0} for i in range(6)])
    first = start_worker(url, log, "--concurrency", "4", "--lock-timeout", "2", app=APP)
    try:
        assert wait_for(lambda: _running(url, "tests.integration.queue_jobs.limited") == 2, 30)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(10)
        with _run(url, log, 1, "--lock-timeout", "2"), Sampler(url, "tests.integration.queue_jobs.limited") as sampler:
            assert wait_for(lambda: states(url).get("completed", 0) == 6, 60), states(url)
    finally:
        stop(first)
    assert sampler.most == 2
    assert _most_at_once(log) <= 2 + 2  # the killed pair's ends were never written; the live runs overlap by 2 at most
    ended = [line[1] for line in read_log(log) if line[0] == "limited-end"]
    assert sorted(ended) == sorted(str(i) for i in range(6))


def test_a_limit_stays_exact_through_a_postgres_restart(cluster: Cluster, tmp_path: Path) -> None:
    url, log = cluster.url, tmp_path / "runs.log"
    tasklib.submit_many_sync(qj.limited, [{"i": i, "sleep": 0.2} for i in range(30)])
    with _run(url, log, 2, "--lock-timeout", "3", "--poll-interval", "0.2"):
        assert wait_for(lambda: states(url).get("completed", 0) >= 6, 30)
        cluster.stop()
        time.sleep(2.0)
        cluster.start()
        with Sampler(url, "tests.integration.queue_jobs.limited") as sampler:
            assert wait_for(lambda: states(url).get("completed", 0) == 30, 60), states(url)
    assert sampler.most <= 2
    assert _most_at_once(log) <= 2


# -- rate limits -----------------------------------------------------------------------------------


def test_a_rate_limit_spreads_starts_across_three_workers(tl: tasklib.Config, tmp_path: Path) -> None:
    """rate_limit="20/s" on 3 workers with 10 s of backlog and more: never more than 210 starts in the
    first 10 s, nor 22 in any 1-second window, and not far below the rate. How close to 200 it gets
    is a throughput figure, measured where the machine is not shared (``python -m bench
    --only-queues``: 200 +- 10); under the parallel suite on two cores the workers' claims are
    starved late (it has seen 177), so here the floor is 80 %."""
    url, log = tl.database_url, tmp_path / "runs.log"
    assert url is not None
    tasklib.submit_many_sync(qj.paced, [{"i": i} for i in range(300)])
    with _run(url, log, 3):
        assert wait_for(lambda: len([x for x in read_log(log) if x[0] == "paced"]) >= 230, 30)
    with psycopg.connect(url) as conn:  # the starts as the claims recorded them
        rows = conn.execute(
            "SELECT started_at FROM tasks WHERE name = %s AND started_at IS NOT NULL", [qj.paced.__tasklib_name__]
        )
        starts = sorted(r[0].timestamp() for r in rows)  # type: ignore[attr-defined]
    first = starts[0]
    in_ten = bisect.bisect_left(starts, first + 10.0)
    busiest = max(bisect.bisect_left(starts, t + 1.0) - i for i, t in enumerate(starts))
    print(f"20/s on 3 workers: {in_ten} starts in the first 10 s, {busiest} in the busiest second")
    assert 160 <= in_ten <= 210, in_ten
    assert busiest <= 22, busiest


# -- pause -----------------------------------------------------------------------------------------


def test_a_paused_queue_is_not_claimed_and_resume_drains_it(tl: tasklib.Config, tmp_path: Path) -> None:
    url, log = tl.database_url, tmp_path / "runs.log"
    assert url is not None
    tasklib.submit_many_sync(qj.mark, [{"key": f"k{i}", "sleep": 0.05} for i in range(400)])
    with _run(url, log, 3):
        assert wait_for(lambda: states(url).get("completed", 0) >= 20, 30)
        tasklib.pause_queue("default")
        paused_at = time.time()
        assert {q.name: q.paused for q in tasklib.list_queues()}["default"]
        time.sleep(2.0)
        assert wait_for(lambda: "running" not in states(url), 5)  # running ones finished
        with psycopg.connect(url) as conn:
            late = conn.execute(
                "SELECT count(*) FROM tasks WHERE started_at > to_timestamp(%s) + interval '1 second'", [paused_at]
            ).fetchone()[0]  # type: ignore[index]
        assert late == 0
        left = states(url).get("pending", 0)
        assert left > 100  # the backlog waits
        tasklib.resume_queue("default")
        assert wait_for(lambda: states(url).get("completed", 0) == 400, 60)


# -- pagination ------------------------------------------------------------------------------------


def test_paging_with_before_returns_each_task_once_while_a_producer_adds_more(tl: tasklib.Config) -> None:
    ids = set(tasklib.submit_many_sync(qj.plain, [{"i": i} for i in range(10_050)]))
    stop_adding = threading.Event()

    def produce() -> None:
        while not stop_adding.is_set():
            tasklib.submit_many_sync(qj.plain, [{"i": -1} for _ in range(20)])

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        seen: list[uuid.UUID] = []
        page = tasklib.list_tasks(limit=1000)
        started = {t.id for t in page}
        seen += [t.id for t in page]
        while page:
            page = tasklib.list_tasks(limit=1000, before=page[-1].id)
            seen += [t.id for t in page]
        walked = [t.id for t in tasklib.iter_tasks(name="plain", page_size=777)]
    finally:
        stop_adding.set()
        producer.join()
    assert len(seen) == len(set(seen))  # none twice
    assert ids <= set(seen)  # every one present at the start
    assert len(walked) == len(set(walked)) and ids <= set(walked)
    assert set(seen) - ids <= started  # tasks added meanwhile are newer: only the first page can hold them
    with pytest.raises(tasklib.ValidationError, match="before"):
        tasklib.list_tasks(before=uuid.uuid4())
    with pytest.raises(tasklib.ValidationError, match="before"):
        tasklib.list_tasks(before="nope")
