"""Throwaway databases for tests: one fresh database per test, dropped afterwards.

Nothing here connects at import time: the unit tier imports this module (through conftest) and
must run with no PostgreSQL at all. The admin URL is found on first use.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from urllib.parse import urlsplit, urlunsplit

import psycopg

LOCAL_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


@cache
def admin_url() -> str:
    """$TASKLIB_TEST_DATABASE_URL, else the local server on 5432, else TaskLib's embedded PostgreSQL
    (so the suite runs on a machine without a PostgreSQL server of its own)."""
    if os.environ.get("TASKLIB_TEST_DATABASE_URL"):
        return os.environ["TASKLIB_TEST_DATABASE_URL"]
    try:
        psycopg.connect(LOCAL_URL, connect_timeout=3).close()
        return LOCAL_URL
    except psycopg.OperationalError:
        from tasklib import embedded

        global STARTED_EMBEDDED
        STARTED_EMBEDDED = not embedded.is_running()
        embedded.start()
        return embedded.url("postgres")


#: True when this test session started the embedded server (conftest stops it at the end).
STARTED_EMBEDDED = False


def url_for(dbname: str) -> str:
    parts = urlsplit(admin_url())
    return urlunsplit(parts._replace(path=f"/{dbname}"))


@contextmanager
def fresh_database(prefix: str = "tasklib_test") -> Iterator[str]:
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url(), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield url_for(name)
    finally:
        with psycopg.connect(admin_url(), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
