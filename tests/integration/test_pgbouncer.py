"""Behind PgBouncer (Debian's, started here on a free port): the application and the dashboard
through transaction pooling, the worker through session pooling. No prepared-statement errors,
no lost NOTIFY, every task once."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
from litestar.testing import TestClient

import tasklib
from dashboard.app import create_app
from tests.integration import jobs
from tests.net import free_port
from tests.workers import read_log, start_worker, stop, wait_for

PGBOUNCER = shutil.which("pgbouncer") or ("/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None)
pytestmark = pytest.mark.skipif(PGBOUNCER is None, reason="needs Debian's pgbouncer (make systools installs it)")


@contextmanager
def pgbouncer(database_url: str) -> Iterator[tuple[str, str, Path]]:
    """(transaction-pooling URL, session-pooling URL, log file) for ``database_url``'s database."""
    server = urlsplit(database_url)
    dbname = server.path.lstrip("/")
    folder = Path(tempfile.mkdtemp(prefix="tasklib-pgbouncer-", dir="/tmp"))
    folder.chmod(0o777)  # pgbouncer runs as nobody (it refuses root) and writes its log and pid here
    port = free_port()
    target = f"host={server.hostname} port={server.port or 5432} dbname={dbname} user={server.username or 'postgres'}"
    (folder / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"tl_tx = {target} pool_mode=transaction\n"
        f"tl_session = {target} pool_mode=session\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        "auth_type = any\nmax_client_conn = 500\ndefault_pool_size = 20\n"
        f"logfile = {folder}/pgbouncer.log\npidfile = {folder}/pgbouncer.pid\n"
        "server_reset_query = DISCARD ALL\n"
    )
    (folder / "pgbouncer.ini").chmod(0o644)
    args = (
        [PGBOUNCER, "-u", "nobody", str(folder / "pgbouncer.ini")]
        if os.geteuid() == 0
        else [PGBOUNCER, str(folder / "pgbouncer.ini")]
    )
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # type: ignore[list-item]
    base = f"postgresql://{server.username or 'postgres'}@127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                psycopg.connect(f"{base}/tl_tx", connect_timeout=2).close()
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"pgbouncer did not start: {proc.stdout.read() if proc.stdout else ''}") from None
                time.sleep(0.1)
        yield f"{base}/tl_tx", f"{base}/tl_session", folder / "pgbouncer.log"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(folder, ignore_errors=True)


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
                assert "connected" in client.get("/workers").text  # the worker's sessions, seen through the pooler
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
