"""A fleet through transaction pooling: many workers on a few server connections, dead ones found
without their sessions, and a pooled worker without LISTEN that still picks up a lone task."""

from __future__ import annotations

import collections
import signal
import time
from pathlib import Path

import psycopg
import pytest

import tasklib
from tests.integration import jobs
from tests.pgbouncer import PGBOUNCER, pgbouncer
from tests.workers import live_workers, read_log, start_worker, stop, wait_for

pytestmark = pytest.mark.skipif(PGBOUNCER is None, reason="needs Debian's pgbouncer (make systools installs it)")

POOL = 4


def server_connections(url: str) -> int:
    """Client sessions on this test's database, other than the one asking."""
    with psycopg.connect(url) as conn:
        return conn.execute(  # type: ignore[no-any-return]
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
        ).fetchone()[0]


def unrescued(url: str, held: set[object]) -> int:
    """Of ``held``, the claims still running their first attempt (not rescued yet)."""
    with psycopg.connect(url) as conn:
        return conn.execute(  # type: ignore[no-any-return]
            "SELECT count(*) FROM tasks WHERE id = ANY(%s) AND state = 'running' AND retry_count = 0", [list(held)]
        ).fetchone()[0]


def test_twelve_workers_through_a_pool_of_four(tl: tasklib.Config, tmp_path: Path) -> None:
    """12 workers x concurrency 2 through PgBouncer's transaction pooling (4 server connections),
    each LISTENing on the server directly: 3,000 tasks each run once; the database sees at most the
    pool, the 12 listeners and a few more; two workers killed mid-drain have their claims rescued
    within seconds although the lock is the default 600 s."""
    url, log = tl.database_url, tmp_path / "runs.log"
    assert url is not None
    ids = tasklib.submit_many_sync(jobs.mark, [{"key": f"f{i}", "sleep": 0.02} for i in range(3000)])
    with pgbouncer(url, pool_size=POOL) as (tx_url, _, bouncer_log):
        fleet = [
            start_worker(tx_url, log, "--pool-mode", "transaction", "--listen-url", url, "--concurrency", "2")
            for _ in range(12)
        ]
        peak = 0
        try:
            assert wait_for(lambda: live_workers(url) == 12, timeout=60), live_workers(url)

            def some_done() -> bool:
                nonlocal peak
                peak = max(peak, server_connections(url))
                return tasklib.count_by_state()["completed"] >= 600

            assert wait_for(some_done, timeout=120, interval=0.2)
            # The two workers holding the most claims right now (any two may be between claims),
            # and those claims, read in one snapshot.
            by_pid = {proc.pid: proc for proc in fleet}
            held_by: dict[int, set[object]] = {}

            def two_busy() -> bool:
                with psycopg.connect(url) as conn:
                    rows = conn.execute(
                        "SELECT w.pid, t.id FROM tasks AS t JOIN tasklib_workers AS w USING (worker_id)"
                        " WHERE t.state = 'running'"
                    ).fetchall()
                held_by.clear()
                for pid, task_id in rows:
                    if pid in by_pid:
                        held_by.setdefault(pid, set()).add(task_id)
                return len(held_by) >= 2

            assert wait_for(two_busy, timeout=20, interval=0.02)
            busiest = sorted(held_by, key=lambda pid: len(held_by[pid]), reverse=True)[:2]
            victims = [by_pid[pid] for pid in busiest]
            held = held_by[busiest[0]] | held_by[busiest[1]]
            assert held, "the killed workers held no claim"
            for victim in victims:
                stop(victim, signal.SIGKILL)
            killed_at = time.monotonic()
            rescued = wait_for(lambda: unrescued(url, held) == 0, timeout=30)
            took = time.monotonic() - killed_at
            assert rescued and took < 20, f"claims of the killed workers rescued after {took:.1f} s"

            def all_done() -> bool:
                nonlocal peak
                peak = max(peak, server_connections(url))
                return tasklib.count_by_state()["completed"] == 3000

            assert wait_for(all_done, timeout=60, interval=0.2), tasklib.count_by_state()
        finally:
            for proc in fleet:
                stop(proc)
        problems = bouncer_log.read_text()
    assert peak <= POOL + 12 + 3, f"{peak} server connections"
    starts = collections.Counter(line[1] for line in read_log(log) if line[0] == "start")
    assert set(starts) == {f"f{i}" for i in range(3000)}  # every task ran
    doubled = {key for key, n in starts.items() if n > 1}
    in_flight = {f"f{i}" for i, task_id in enumerate(ids) if task_id in held}
    assert doubled <= in_flight  # run twice only if it was running in a killed worker
    assert "prepared statement" not in problems
    print(f"peak {peak} server connections; {len(held)} claims of 2 killed workers rescued {took:.1f} s later")


def test_a_pooled_worker_without_listen_url_polls(tl: tasklib.Config, tmp_path: Path) -> None:
    """No LISTEN through a transaction pooler and no listen_url: the worker says so, and a lone task
    is picked up within about one poll interval."""
    url, log = tl.database_url, tmp_path / "runs.log"
    assert url is not None
    with pgbouncer(url, pool_size=2) as (tx_url, _, _):
        worker = start_worker(tx_url, log, "--pool-mode", "transaction", "--poll-interval", "1")
        try:
            assert wait_for(lambda: live_workers(url) == 1, timeout=30)
            for i in range(3):
                time.sleep(1.3)  # an idle spell: the next task arrives between two polls
                submitted = time.monotonic()
                task_id = tasklib.submit_task_sync(jobs.mark, key=f"lone{i}")
                assert wait_for(lambda: tasklib.get_task(task_id).state == "completed", timeout=5)  # type: ignore[union-attr]  # noqa: B023
                assert time.monotonic() - submitted < 1.2 + 0.5  # one jittered poll, plus the run
        finally:
            stop(worker)
    output = "".join(p.read_text() for p in tmp_path.glob("runs.*.out"))
    assert "no listen_url is set: this worker cannot LISTEN through the pooler, so it polls every 1.0s" in output
