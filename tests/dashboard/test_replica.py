"""The dashboard on a real streaming replica (``pg_basebackup -R`` of a throwaway cluster): pages
read the replica, actions write to the primary, the header shows the lag, and a page says when it
does not show the change just made yet."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from litestar.testing import TestClient

import tasklib
from dashboard.app import create_app
from tests.integration import jobs
from tests.net import free_port
from tests.workers import wait_for

BIN = next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)), None)
pytestmark = pytest.mark.skipif(
    BIN is None or shutil.which("runuser") is None, reason="needs Debian's PostgreSQL server binaries and runuser"
)


def _as_postgres(*argv: str) -> subprocess.CompletedProcess[str]:
    """Run a server binary as the ``postgres`` user when root (the server refuses to run as root)."""
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    result = subprocess.run([*prefix, *argv], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{argv[0]} failed: {result.stdout}{result.stderr}"
    return result


@pytest.fixture
def streaming() -> Iterator[tuple[str, str]]:
    """(primary URL, replica URL): a primary of the test's own and its streaming replica."""
    folder = Path(tempfile.mkdtemp(prefix="tasklib-replica-", dir="/tmp"))
    os.chmod(folder, 0o777)
    primary, replica = folder / "primary", folder / "replica"
    ports = free_port(), free_port()
    started: list[Path] = []
    try:
        _as_postgres(f"{BIN}/initdb", "-D", str(primary), "--auth=trust", "-U", "postgres")
        for data, port in ((primary, ports[0]), (replica, ports[1])):
            if data == replica:
                _as_postgres(f"{BIN}/pg_basebackup", "-h", "127.0.0.1", "-p", str(ports[0]), "-U", "postgres",
                             "-D", str(replica), "-R", "-X", "stream")  # fmt: skip
            options = f"-p {port} -c listen_addresses=127.0.0.1 -k {folder} -c fsync=off"
            _as_postgres(
                f"{BIN}/pg_ctl", "-D", str(data), "-o", options, "-l", str(folder / f"{data.name}.log"), "-w", "start"
            )
            started.append(data)
        urls = tuple(f"postgresql://postgres@127.0.0.1:{port}/postgres" for port in ports)
        with psycopg.connect(urls[1]) as conn:
            assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
        yield urls  # type: ignore[misc]
    finally:
        for data in reversed(started):
            subprocess.run(["runuser", "-u", "postgres", "--", f"{BIN}/pg_ctl", "-D", str(data), "-m", "immediate", "stop"],
                           capture_output=True, timeout=60)  # fmt: skip
        shutil.rmtree(folder, ignore_errors=True)


def replayed_tasks(standby: psycopg.Connection) -> int | None:  # type: ignore[type-arg]
    """Tasks on the replica; None while it has not replayed the table's creation yet."""
    try:
        return standby.execute("SELECT count(*) FROM tasks").fetchone()[0]  # type: ignore[index,no-any-return]
    except psycopg.errors.UndefinedTable:
        return None


def test_pages_read_the_replica_and_actions_write_the_primary(streaming: tuple[str, str]) -> None:
    primary, replica = streaming
    tasklib.init(tasklib.Config(database_url=primary))
    first = tasklib.submit_task_sync(jobs.mark, key="before")
    with psycopg.connect(replica, autocommit=True) as standby:
        assert wait_for(lambda: replayed_tasks(standby) == 1, timeout=20)
        config = tasklib.Config(database_url=primary, replica_url=replica)
        with TestClient(create_app(config)) as client:
            assert wait_for(lambda: "replica: caught up" in client.get("/").text, timeout=20)
            assert str(first) in client.get("/tasks").text

            standby.execute("SELECT pg_wal_replay_pause()")
            second = tasklib.submit_task_sync(jobs.mark, key="while-paused")
            # The page reads the replica: the task committed on the primary is not there yet.
            page = client.get("/tasks").text
            assert str(first) in page and str(second) not in page
            assert client.get(f"/tasks/{second}").status_code == 404
            metrics = client.get("/metrics").text
            assert 'tasklib_tasks{state="pending",name="tests.integration.jobs.mark"} 1' in metrics  # (not 2)
            assert wait_for(lambda: "kB behind (replay paused)" in client.get("/").text, timeout=10)

            # An action goes to the primary at once; the next page says the replica has not caught up.
            client.get("/tasks")
            token = client.cookies["csrftoken"]
            done = client.post(f"/tasks/{first}/cancel", data={"_csrf_token": token}, follow_redirects=False)
            assert done.status_code == 303
            assert tasklib.get_task(first).state == "cancelled"  # type: ignore[union-attr]  # (read on the primary)
            detail = client.get(f"/tasks/{first}").text
            assert "has not replayed it yet" in detail and ">pending<" in detail.split("Timeline")[0]

            standby.execute("SELECT pg_wal_replay_resume()")
            assert wait_for(lambda: str(second) in client.get("/tasks").text, timeout=20)
            detail = client.get(f"/tasks/{first}").text
            assert "has not replayed it yet" not in detail and "cancelled" in detail
            assert wait_for(lambda: "replica: caught up" in client.get("/").text, timeout=20)
