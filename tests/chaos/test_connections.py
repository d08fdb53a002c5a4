"""Connections used up by another client: clear errors within bounded waits, then recovery."""

from __future__ import annotations

import time
from pathlib import Path

import psycopg
from litestar.testing import TestClient

import tasklib
from dashboard.app import create_app
from tests.cluster import Cluster
from tests.integration import jobs
from tests.workers import read_log, start_worker, states, stop, wait_for

_OTHERS = (
    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
    " WHERE application_name <> 'hog' AND backend_type = 'client backend'"
)


def _hog(url: str) -> list[psycopg.Connection]:
    """Take every connection slot and end every other session: the workers and this process's pool
    must reconnect, and cannot. (Ended sessions free slots that reconnecting clients race for, so
    fill, end the others, and fill again until no other session is left.)"""
    held: list[psycopg.Connection] = []
    for _ in range(20):
        while True:
            try:
                held.append(psycopg.connect(url, autocommit=True, application_name="hog"))
            except psycopg.OperationalError as exc:
                assert "too many clients" in str(exc) or "reserved" in str(exc), exc
                break
        if held[0].execute(_OTHERS).fetchone()[0] == 0:  # type: ignore[index]
            return held
        time.sleep(0.05)
    raise AssertionError("could not take every connection slot")


def _recovered(output: str) -> bool:
    """Each time claiming started failing, the worker later said it works again."""
    return output.count("claiming tasks works again") == output.count("claiming tasks failed")


def test_used_up_connections_fail_clearly_and_everything_resumes(cluster: Cluster, tmp_path: Path) -> None:
    url, log = cluster.url, tmp_path / "runs.log"
    tasklib.submit_many_sync(jobs.mark, [{"key": f"a{i}"} for i in range(100)])
    workers = [start_worker(url, log, "--poll-interval", "0.2") for _ in range(2)]
    held: list[psycopg.Connection] = []
    try:
        assert wait_for(lambda: states(url).get("completed", 0) == 100, timeout=30)
        held = _hog(url)
        time.sleep(1)

        started = time.monotonic()
        try:
            tasklib.submit_task_sync(jobs.mark, key="refused")
            raise AssertionError("a submit succeeded with every connection taken")
        except tasklib.DatabaseError as exc:
            refused_after = time.monotonic() - started
            assert "too many clients" in str(exc) or "connection" in str(exc), exc
        assert refused_after < 12, refused_after  # the pool's timeout, not a hang

        config = tasklib.Config(database_url=url)
        with TestClient(create_app(config, ensure_table=False)) as client:
            started = time.monotonic()
            page = client.get("/")
            assert page.status_code == 503 and "Database unavailable" in page.text
            assert time.monotonic() - started < 6

        time.sleep(3)  # the workers keep retrying meanwhile
        for conn in held:
            conn.close()
        held = []
        later = tasklib.submit_many_sync(jobs.mark, [{"key": f"b{i}"} for i in range(50)])
        assert len(later) == 50
        assert wait_for(lambda: states(url).get("completed", 0) == 150, timeout=30), states(url)
        # Every worker's claim loop is back too (one may not have retried yet when the others drained it all).
        assert wait_for(lambda: all(_recovered(p.read_text()) for p in tmp_path.glob("runs.*.out")), timeout=15)
    finally:
        for conn in held:
            conn.close()
        for proc in workers:
            stop(proc)
    assert len({line[1] for line in read_log(log) if line[0] == "done"}) == 150
    # Each worker says so when claiming starts failing and when it works again, not at every retry
    # (about one a second here for 7 s): its claim lines alternate, failed then works again. How
    # many such episodes there are depends on how often taking the slots cut it (a worker may
    # reconnect into a slot freed between two of the hog's rounds, more often on a loaded machine).
    for output in (p.read_text() for p in tmp_path.glob("runs.*.out")):
        claims = [line for line in output.splitlines() if "claiming tasks failed" in line or "claiming tasks works" in line]
        assert claims and all(("failed" in line) == (i % 2 == 0) for i, line in enumerate(claims)), output[-3000:]
        assert _recovered(output) and len(claims) < 14, output[-3000:]  # not one a retry for the whole outage
        assert output.count("still failing") == 0  # the retries are debug lines, not shown at info
