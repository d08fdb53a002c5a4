"""Debian's PgBouncer, started for one test on a free port in front of that test's database."""

from __future__ import annotations

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

from tests.net import free_port

PGBOUNCER = shutil.which("pgbouncer") or ("/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None)


@contextmanager
def pgbouncer(database_url: str, pool_size: int = 20) -> Iterator[tuple[str, str, Path]]:
    """(transaction-pooling URL, session-pooling URL, log file) for ``database_url``'s database, with
    at most ``pool_size`` server connections for each of the two."""
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
        "auth_type = any\nmax_client_conn = 500\n"
        f"default_pool_size = {pool_size}\nmax_db_connections = {pool_size}\nreserve_pool_size = 0\n"
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
