"""Connections: one sync pool and one async pool per event loop, for one database URL.

Every connection TaskLib opens plans each statement afresh, except the few marked ``sql.Prepared``
(inserts and updates by primary key, whose plan cannot depend on the data), and the worker's
connections carry the planner settings below: a queue table swings from empty to a million rows
faster than its statistics follow, so no plan may depend on them (docs/design/plans.md).
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.rows import dict_row, tuple_row
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from tasklib.config import redact_url
from tasklib.errors import DatabaseError, UniqueKeyTaken
from tasklib.sql.kinds import prepare

APPLICATION_NAME = "tasklib"
#: How long a caller waits for a pooled connection before a DatabaseError (the default 30 s would
#: leave a dashboard request hanging while the database is down).
POOL_TIMEOUT_SECONDS = 10.0


@contextmanager
def translated_errors() -> Iterator[None]:
    """The one place psycopg's errors become TaskLib's: callers see ``DatabaseError`` only."""
    try:
        yield
    except psycopg.errors.UniqueViolation as exc:
        if exc.diag.constraint_name != "tasks_unique_key_idx":
            raise DatabaseError(f"PostgreSQL refused the statement: {exc}") from exc
        # Two retried tasks with one key in the same bulk retry, or a submit that won the race.
        raise UniqueKeyTaken(f"another pending or running task holds that unique_key: {exc.diag.message_detail}") from exc
    except (psycopg.errors.DuplicatePreparedStatement, psycopg.errors.InvalidSqlStatementName) as exc:
        # Another client's session, or none of this one's: a pooler moved the statement between server sessions.
        raise DatabaseError(
            f"PostgreSQL refused a prepared statement ({exc}): behind PgBouncer's transaction pooling "
            "(before 1.21, or without max_prepared_statements), use Config(prepared_statements=False)"
        ) from exc
    except psycopg.errors.QueryCanceled as exc:
        raise DatabaseError(f"the statement took too long and was cancelled (statement_timeout): {exc}") from exc
    except psycopg.Error as exc:
        raise DatabaseError(f"PostgreSQL refused the statement: {exc}") from exc


#: For the worker's claim connection: the claim walks tasks_queue_pending_idx in order, never a bitmap scan
#: and a sort of every pending row, whatever stale statistics say. No parallel plans on either
#: worker connection: its statements touch a few hundred rows, and a Gather competes with the task
#: children for the cores (docs/design/plans.md).
_NO_PARALLEL = {"max_parallel_workers_per_gather": "0"}
_ORDERED_WALK = {"enable_sort": "off", "enable_bitmapscan": "off", "enable_seqscan": "off"}
CLAIM_PLANNER_SETTINGS = {**_ORDERED_WALK, **_NO_PARALLEL}
#: For the dashboard's bounded tag walk (``listing.tag_walk_query``), in its own transaction: each
#: state's range is walked in order until the walk stops, even where statistics call the state small.
TAG_WALK_PLANNER_SETTINGS = dict(_ORDERED_WALK)
#: For the tag index's query, which answers when those walks cannot: bitmaps only (the tag index's
#: rows ANDed with the state's range), never an ordered walk that filters every row of a state.
TAG_INDEX_PLANNER_SETTINGS = {"enable_indexscan": "off", "enable_indexonlyscan": "off", "enable_seqscan": "off"}
#: For the worker's result connection: its statements touch a few hundred rows by primary key; a
#: hash join over a sequential scan (what "the table is small" statistics suggest) would read the
#: whole table on every batch. Plain index scans (no bitmaps) also mark dead index entries as they
#: pass them, which keeps the partial index of running tasks from filling with finished ones.
WRITE_PLANNER_SETTINGS = {
    "enable_seqscan": "off",
    "enable_bitmapscan": "off",
    "enable_hashjoin": "off",
    "enable_mergejoin": "off",
    **_NO_PARALLEL,
}


def set_statement(settings: dict[str, str], *, local: bool = False) -> str:
    """One statement applying ``settings`` to the session (``local``: to the transaction only, as
    ``SET LOCAL``). TaskLib's connections set them this way, after connecting, not as startup
    options: PgBouncer refuses startup options, and in session pooling it resets what a session set
    when the client leaves (``DISCARD ALL``); in transaction pooling nothing may outlive a
    transaction, so they are set at the start of each one."""
    scope = "true" if local else "false"
    return "SELECT " + ", ".join(f"set_config('{name}', '{value}', {scope})" for name, value in settings.items())


#: psycopg prepares a statement automatically after this many runs: never, on TaskLib's connections.
#: Only ``sql.Prepared`` statements are, explicitly (docs/design/plans.md).
NEVER_AUTOMATICALLY = 2**62


def connect_kwargs(application_name: str = APPLICATION_NAME, *, prepared_statements: bool = True) -> dict[str, Any]:
    """Options for every TaskLib connection. Autocommit: each statement is its own short transaction.
    ``prepared_statements=False`` prepares nothing (PgBouncer before 1.21 in transaction pooling)."""
    kwargs: dict[str, Any] = {
        "autocommit": True,
        "prepare_threshold": NEVER_AUTOMATICALLY if prepared_statements else None,
        "application_name": application_name,
        # Notice a silently dead peer (a dropped NAT entry, a failed-over host) within about a minute
        # instead of the kernel's two hours: a worker's LISTEN connection would otherwise wait forever.
        "keepalives": 1,
        "keepalives_idle": 30,
        "keepalives_interval": 10,
        "keepalives_count": 3,
    }
    return kwargs


class Database:
    """Pools for one database. Closed and replaced as a whole when ``init`` switches databases."""

    def __init__(
        self,
        url: str,
        max_size: int = 10,
        *,
        application_name: str = APPLICATION_NAME,
        statement_timeout_ms: int | None = None,
        pool_timeout_seconds: float = POOL_TIMEOUT_SECONDS,
        prepared_statements: bool = True,
    ) -> None:
        self.url = url
        self.max_size = max_size
        self.pool_timeout = pool_timeout_seconds
        self.prepared_statements = prepared_statements
        self._kwargs = connect_kwargs(application_name, prepared_statements=prepared_statements)
        #: Applied to each statement of ``rows()`` with ``SET LOCAL`` in its own transaction: a
        #: session setting would not survive PgBouncer's transaction pooling (or would leak to
        #: another client through it).
        self.statement_timeout_ms = statement_timeout_ms
        self._lock = threading.Lock()
        self._pool: ConnectionPool | None = None
        # asyncio.run() makes a new loop each call; a pool is bound to the loop it was opened on.
        self._apools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncConnectionPool] = weakref.WeakKeyDictionary()

    def __repr__(self) -> str:
        return f"Database({redact_url(self.url)!r})"

    def pool(self) -> ConnectionPool:
        with self._lock:
            if self._pool is None:
                self._pool = ConnectionPool(
                    self.url,
                    min_size=1,
                    max_size=self.max_size,
                    kwargs=self._kwargs,
                    open=False,
                    name="tasklib",
                    timeout=self.pool_timeout,
                )
                try:
                    self._pool.open(wait=True, timeout=self.pool_timeout)
                except Exception as exc:
                    self._pool = None
                    raise DatabaseError(f"cannot connect to {redact_url(self.url)}: {exc}") from exc
            return self._pool

    async def apool(self) -> AsyncConnectionPool:
        loop = asyncio.get_running_loop()
        pool = self._apools.get(loop)
        if pool is None:
            pool = AsyncConnectionPool(
                self.url,
                min_size=1,
                max_size=self.max_size,
                kwargs=self._kwargs,
                open=False,
                name="tasklib-async",
                timeout=self.pool_timeout,
            )
            try:
                await pool.open(wait=True, timeout=self.pool_timeout)
            except Exception as exc:
                raise DatabaseError(f"cannot connect to {redact_url(self.url)}: {exc}") from exc
            self._apools[loop] = pool
        return pool

    def rows(
        self,
        query: str,
        params: Mapping[str, Any] | None = None,
        *,
        as_dict: bool = True,
        settings: Mapping[str, str] | None = None,
    ) -> list[Any]:
        """Run one statement on a pooled connection (committed on return) and fetch what it returns.
        ``settings`` apply to this statement only (set in its transaction, gone when it ends)."""
        factory: Any = dict_row if as_dict else tuple_row
        local = dict(settings or {})
        if self.statement_timeout_ms:
            local["statement_timeout"] = str(int(self.statement_timeout_ms))
        with translated_errors(), self.pool().connection() as conn, conn.cursor(row_factory=factory) as cur:
            if not local:
                cur.execute(query, params or {}, prepare=prepare(query))  # type: ignore[arg-type]
                return cur.fetchall() if cur.description else []
            with conn.transaction():
                cur.execute(
                    "SELECT " + ", ".join("set_config(%s, %s, true)" for _ in local),
                    [value for item in local.items() for value in item],
                )
                cur.execute(query, params or {})  # type: ignore[arg-type]
                return cur.fetchall() if cur.description else []

    @contextmanager
    def transaction(self) -> Iterator[Callable[..., list[Any]]]:
        """One transaction on a pooled connection (with the statement timeout): yields
        ``run(query, params=None, as_dict=False)``, which returns each statement's rows."""
        with translated_errors(), self.pool().connection() as conn, conn.transaction(), conn.cursor() as cur:
            if self.statement_timeout_ms:
                cur.execute("SELECT set_config('statement_timeout', %s, true)", [str(int(self.statement_timeout_ms))])

            def run(query: str, params: Mapping[str, Any] | None = None, as_dict: bool = False) -> list[Any]:
                cur.row_factory = dict_row if as_dict else tuple_row  # type: ignore[assignment]
                cur.execute(query, params or {})  # type: ignore[arg-type]
                return cur.fetchall() if cur.description else []

            yield run

    def value(self, query: str, params: Mapping[str, Any] | None = None) -> Any:
        """The first column of the first row (statements that return exactly one row)."""
        return self.rows(query, params, as_dict=False)[0][0]

    def connect(self, application_name: str = APPLICATION_NAME) -> psycopg.Connection[Any]:
        """A dedicated connection outside the pools (schema setup, tools)."""
        try:
            kwargs = connect_kwargs(application_name, prepared_statements=self.prepared_statements)
            return psycopg.connect(self.url, **kwargs)
        except psycopg.Error as exc:
            raise DatabaseError(f"cannot connect to {redact_url(self.url)}: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.close()
                self._pool = None
        for loop, pool in list(self._apools.items()):
            if loop.is_closed():
                continue
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is loop:
                loop.create_task(pool.close())
        self._apools.clear()
