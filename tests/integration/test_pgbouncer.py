"""Behind PgBouncer (Debian's, started here on a free port): the application and the dashboard
through transaction pooling, the worker through session pooling. No prepared-statement errors,
no lost NOTIFY, every task once."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import psycopg
import pytest
from litestar.testing import TestClient

import tasklib
from dashboard.app import create_app
from tests.integration import jobs
from tests.pgbouncer import PGBOUNCER, pgbouncer
from tests.workers import read_log, start_worker, stop, wait_for

pytestmark = pytest.mark.skipif(PGBOUNCER is None, reason="needs Debian's pgbouncer (make systools installs it)")


def test_through_pgbouncer(database_url: str, tmp_path: Path) -> None:
    log = tmp_path / "runs.log"
    with pgbouncer(database_url) as (tx_url, session_url, bouncer_log):
        # Transaction pooling in PgBouncer 1.18 cannot carry a prepared statement: the application says so.
        tasklib.init(tasklib.Config(database_url=tx_url, prepared_statements=False))
        # A long poll interval: only a NOTIFY can make the worker claim within seconds.
        worker = start_worker(session_url, log, "--poll-interval", "30", "--concurrency", "2")
        try:
            assert wait_for(lambda: "worker" in "".join(p.read_text() for p in tmp_path.glob("runs.*.out")), 20)
            time.sleep(1)
            for i in range(5):  # each submit, alone, is picked up at once
                started = time.monotonic()
                task_id = tasklib.submit_task_sync(jobs.mark, key=f"notify{i}")
                assert wait_for(lambda: tasklib.get_task(task_id).state == "completed", timeout=5)  # type: ignore[union-attr]  # noqa: B023
                assert time.monotonic() - started < 3
            ids = [tasklib.submit_task_sync(jobs.mark, key=f"sync{i}") for i in range(50)]
            ids += asyncio.run(_async_submits())
            ids += tasklib.submit_many_sync(jobs.mark, [{"key": f"many{i}"} for i in range(100)])
            held = tasklib.submit_task_sync(jobs.mark, key="unique", unique_key="k", delay_seconds=60)
            assert tasklib.submit_task_sync(jobs.mark, key="again", unique_key="k") == held
            with psycopg.connect(tx_url) as tx:  # the application's own transaction, through the pool
                ids.append(tasklib.submit_task_in(tx, jobs.mark, key="in-tx"))
            assert wait_for(lambda: tasklib.count_by_state()["completed"] == 5 + len(ids), timeout=60)

            with TestClient(create_app(tasklib.Config(database_url=tx_url, prepared_statements=False))) as client:
                for path in ("/", "/tasks", f"/tasks/{ids[0]}", "/schedules", "/workers", "/metrics", "/partials/overview"):
                    assert client.get(path).status_code == 200, path
                client.get("/tasks")
                response = client.post(f"/tasks/{held}/cancel", data={"_csrf_token": client.cookies["csrftoken"]})
                assert response.status_code == 200 and tasklib.get_task(held).state == "cancelled"  # type: ignore[union-attr]
                assert "live" in client.get("/workers").text  # the worker's presence, read through the pooler
        finally:
            stop(worker)
        problems = bouncer_log.read_text()
    output = "".join(p.read_text() for p in tmp_path.glob("runs.*.out"))
    for text in (output, problems):
        assert "prepared statement" not in text and "unsupported startup parameter" not in text, text[-3000:]
    starts = [line[1] for line in read_log(log) if line[0] == "start"]
    assert len(starts) == len(set(starts)) == 5 + len(ids)


async def _async_submits() -> list:
    return [await tasklib.submit_task(jobs.mark, key=f"async{i}") for i in range(50)]
