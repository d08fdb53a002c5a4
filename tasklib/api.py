"""The public library API on the default database: init, submit, inspect, cancel and retry tasks.

Reads and state changes are ``tasklib.actions`` applied to the database ``init`` configured.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypedDict, Unpack

import psycopg
import pydantic
from pydantic import BaseModel, ConfigDict, Field

from tasklib import actions, sql
from tasklib.actions import row_to_task
from tasklib.config import Config
from tasklib.db import Database, translated_errors
from tasklib.errors import DatabaseError, NotInitialized, ValidationError, problems_of, summary_of
from tasklib.models import PRIORITY_MAX, PRIORITY_MIN, Task
from tasklib.registry import definition_for, dumps_json, resolve_names
from tasklib.schema import ensure_schema
from tasklib.states import TaskState

_MAX_DELAY_SECONDS = 10 * 365 * 24 * 3600
_MAX_LIST_LIMIT = 10_000

_lock = threading.Lock()
_config: Config | None = None
_database: Database | None = None


def init(config: Config) -> None:
    """Make ``config`` the default and create or upgrade the ``tasks`` table. Idempotent.

    Calling it again with another config switches to it and closes the previous pools.
    """
    global _config, _database
    database = Database(config.resolved_database_url())
    with database.connect("tasklib-init") as conn:
        try:
            ensure_schema(conn)
        except psycopg.Error as exc:
            raise DatabaseError(f"could not create the tasks table: {exc}") from exc
    with _lock:
        previous, _config, _database = _database, config, database
    if previous is not None:
        previous.close()


def current_config() -> Config:
    """The config passed to the last ``init`` call."""
    if _config is None:
        raise NotInitialized()
    return _config


def database() -> Database:
    """The pools of the current config's database."""
    if _database is None:
        raise NotInitialized()
    return _database


class SubmitOptions(BaseModel):
    """The options every submit function takes, validated like the arguments. Their names are
    reserved: a task cannot have parameters called ``delay_seconds``, ``max_retries``,
    ``timeout_seconds``, ``priority`` or ``tags``."""

    model_config = ConfigDict(extra="forbid", strict=False)

    delay_seconds: float = Field(0, ge=0, le=_MAX_DELAY_SECONDS)
    max_retries: int | None = Field(None, ge=0, le=1000)
    timeout_seconds: int | None = Field(None, ge=1)
    priority: int = Field(0, ge=PRIORITY_MIN, le=PRIORITY_MAX)
    tags: dict[str, pydantic.JsonValue] | None = None

    @classmethod
    def of(cls, options: Mapping[str, Any]) -> SubmitOptions:
        try:
            return cls.model_validate(dict(options))
        except pydantic.ValidationError as exc:
            problems = problems_of(exc)
            raise ValidationError(f"invalid submit options: {summary_of(problems)}", problems) from None

    @classmethod
    def split(cls, call: Mapping[str, Any]) -> tuple[SubmitOptions, dict[str, Any]]:
        """A submit call's keywords -> (its options, the task's own arguments)."""
        options = {k: v for k, v in call.items() if k in cls.model_fields}
        return cls.of(options), {k: v for k, v in call.items() if k not in cls.model_fields}


class SubmitArgs(TypedDict, total=False):
    """``SubmitOptions`` as keywords, for the type checker (``submit_many(..., **options)``)."""

    delay_seconds: float
    max_retries: int | None
    timeout_seconds: int | None
    priority: int
    tags: dict[str, Any] | None


def _insert_params(
    func: Callable[..., Any] | str, opts: SubmitOptions, kwargs: Mapping[str, Any], *, validate: bool = True
) -> dict[str, Any]:
    """Validate one call and build the INSERT parameters (all text/number, for any driver)."""
    definition = definition_for(func)
    payload = definition.validate(dict(kwargs)) if validate else {}
    config = _config
    max_retries = opts.max_retries
    if max_retries is None:
        max_retries = definition.max_retries if definition.max_retries is not None else (config.max_retries if config else 3)
    timeout = opts.timeout_seconds or definition.timeout_seconds or (config.default_task_timeout_seconds if config else None)
    try:
        kwargs_json = dumps_json(payload)
        tags_json = None if opts.tags is None else dumps_json(opts.tags)
    except ValueError as exc:
        raise ValidationError(f"{definition.name}: {exc}") from None
    return {
        "id": str(uuid.uuid4()),
        "name": definition.name,
        "kwargs": kwargs_json,
        "max_retries": max_retries,
        "delay": float(opts.delay_seconds),
        "timeout": timeout,
        "priority": opts.priority,
        "tags": tags_json,
    }


async def _awrite(statement: str, params: Mapping[str, Any]) -> None:
    pool = await database().apool()
    with translated_errors():
        async with pool.connection() as conn:
            await conn.execute(statement, params)  # type: ignore[arg-type]


def _one(func: Callable[..., Any] | str, call: Mapping[str, Any]) -> dict[str, Any]:
    opts, kwargs = SubmitOptions.split(call)
    return _insert_params(func, opts, kwargs)


async def submit_task(func: Callable[..., Any] | str, /, **kwargs: Any) -> uuid.UUID:
    """Validate the arguments and enqueue a task; returns its id. Raises ValidationError on bad input.

    ``kwargs`` are the task's arguments plus any of :class:`SubmitOptions` (``delay_seconds``,
    ``max_retries``, ``timeout_seconds``, ``priority``, ``tags``).
    """
    params = _one(func, kwargs)
    await _awrite(sql.INSERT_TASK, params)
    return uuid.UUID(params["id"])


def submit_task_sync(func: Callable[..., Any] | str, /, **kwargs: Any) -> uuid.UUID:
    """``submit_task`` for sync code (Flask, Django, scripts): same validation, same result."""
    params = _one(func, kwargs)
    database().rows(sql.INSERT_TASK, params)
    return uuid.UUID(params["id"])


def _dbapi_cursor(tx: Any) -> Any:
    """A DB-API cursor inside the caller's transaction (psycopg 3/2 connection, SQLAlchemy Session or Connection)."""
    if isinstance(tx, psycopg.Connection):
        return tx.cursor()
    if hasattr(tx, "get_bind") and hasattr(tx, "connection"):  # sqlalchemy.orm.Session
        tx = tx.connection()
    raw = getattr(tx, "connection", None)  # sqlalchemy Connection -> pooled DB-API connection
    if raw is not None and hasattr(raw, "cursor") and hasattr(tx, "execute"):
        return raw.cursor()
    if hasattr(tx, "cursor") and hasattr(tx, "commit"):  # any other DB-API connection (psycopg2)
        return tx.cursor()
    raise TypeError(f"submit_task_in needs a psycopg Connection or a SQLAlchemy Session/Connection, got {type(tx).__name__}")


def submit_task_in(tx: Any, func: Callable[..., Any] | str, /, **kwargs: Any) -> uuid.UUID:
    """Enqueue inside the caller's open transaction: the task exists only if that transaction commits.

    ``tx`` is a SQLAlchemy/SQLModel ``Session`` or ``Connection``, or a psycopg connection. Workers are
    woken when it commits (NOTIFY is transactional). Uses the config's defaults if ``init`` was called.
    """
    params = _one(func, kwargs)
    cursor = _dbapi_cursor(tx)
    try:
        cursor.execute(sql.INSERT_TASK, params)
    finally:
        cursor.close()
    return uuid.UUID(params["id"])


def _many_params(
    func: Callable[..., Any] | str, kwargs_list: Iterable[Mapping[str, Any]], opts: SubmitOptions
) -> tuple[list[str], dict[str, Any]]:
    """Validate every call, then build the one-statement INSERT's parameters. Returns (ids, params)."""
    definition = definition_for(func)
    encoded = definition.validate_many([dict(kwargs) for kwargs in kwargs_list])
    params = _insert_params(func, opts, {}, validate=False)
    ids = [str(uuid.uuid4()) for _ in encoded]
    params.update(ids="{" + ",".join(ids) + "}", kwargs="[" + ",".join(encoded) + "]")
    del params["id"]
    return ids, params


async def submit_many(
    func: Callable[..., Any] | str, kwargs_list: Iterable[Mapping[str, Any]], /, **options: Unpack[SubmitArgs]
) -> list[uuid.UUID]:
    """Enqueue one task per kwargs dict in a single statement, all with the same ``options``. All are
    validated first; any error rejects the whole batch and nothing is written."""
    ids, params = _many_params(func, kwargs_list, SubmitOptions.of(options))
    if ids:
        await _awrite(sql.INSERT_MANY, params)
    return [uuid.UUID(i) for i in ids]


def submit_many_sync(
    func: Callable[..., Any] | str, kwargs_list: Iterable[Mapping[str, Any]], /, **options: Unpack[SubmitArgs]
) -> list[uuid.UUID]:
    """``submit_many`` for sync code."""
    ids, params = _many_params(func, kwargs_list, SubmitOptions.of(options))
    if ids:
        database().rows(sql.INSERT_MANY, params)
    return [uuid.UUID(i) for i in ids]


def get_task(task_id: uuid.UUID | str) -> Task | None:
    """The task with that id, or None."""
    return actions.get(database(), task_id)


def parse_state(state: TaskState | str) -> TaskState:
    try:
        return TaskState(state)
    except ValueError:
        valid = ", ".join(s.value for s in TaskState)
        raise ValidationError(f"unknown state {str(state)[:40]!r}; expected one of: {valid}") from None


def list_tasks(state: TaskState | str | None = None, name: str | None = None, limit: int = 100) -> list[Task]:
    """Tasks newest first (by ``created_at``, then id), optionally of one state and/or task name.

    ``name`` is a full name (``myapp.tasks.send_email``) or, for tasks registered in this process, the
    bare function name (``send_email``).
    """
    if not isinstance(limit, int) or not 1 <= limit <= _MAX_LIST_LIMIT:
        raise ValidationError(f"limit must be an integer from 1 to {_MAX_LIST_LIMIT}")
    query, params = sql.page_query(
        state=None if state is None else parse_state(state).value,
        names=None if name is None else tuple(resolve_names(name)),
    )
    rows = database().rows(query, {**params, "limit": limit})
    return [row_to_task(r) for r in rows]


def cancel_task(task_id: uuid.UUID | str) -> Task:
    """pending/running -> cancelled. A running task's worker kills its code. Returns the updated task."""
    return actions.cancel(database(), task_id)


def retry_task(task_id: uuid.UUID | str) -> Task:
    """failed/cancelled -> pending, due now. Returns the updated task."""
    return actions.retry(database(), task_id)


def count_by_state() -> dict[str, int]:
    """Exact number of tasks per state (every state present, zero included)."""
    counts = {s.value: 0 for s in TaskState}
    for state, count in database().rows(sql.COUNT_BY_STATE, as_dict=False):
        counts[state] = count
    return counts
