"""Submitting tasks: validate the arguments and options, then insert (-> pending) and notify.

One set of steps per kind of submit, written as generators that yield (statement, params) and
receive the rows, driven on the sync pool, the async pool or the caller's own transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Generator, Iterable, Mapping
from typing import Any, Literal, TypedDict, TypeVar, Unpack

import psycopg
import pydantic
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tasklib import sql
from tasklib.api import configured, database
from tasklib.db import translated_errors
from tasklib.errors import DatabaseError, ValidationError, problems_of, summary_of
from tasklib.ids import new_id, new_ids
from tasklib.limits import check_queue
from tasklib.models import PRIORITY_MAX, PRIORITY_MIN
from tasklib.registry import definition_for, dumps_json

_MAX_DELAY_SECONDS = 10 * 365 * 24 * 3600
_MAX_KEY_LENGTH = 500
_MAX_PARENTS = 10_000
#: How often a keyed submit is run again when the key's holder committed after the statement's
#: snapshot (it saw the conflict but not the row). Once is almost always enough; a caller's
#: REPEATABLE READ transaction never sees it, hence a bound and a clear error.
_KEY_ATTEMPTS = 5
T = TypeVar("T")


class SubmitOptions(BaseModel):
    """The options every submit function takes, validated like the arguments. Their names are
    reserved: a task cannot have parameters called ``delay_seconds``, ``max_retries``,
    ``timeout_seconds``, ``priority``, ``tags``, ``unique_key``, ``depends_on``, ``on_parent_failure``
    or ``queue``."""

    model_config = ConfigDict(extra="forbid", strict=False, frozen=True)

    delay_seconds: float = Field(0, ge=0, le=_MAX_DELAY_SECONDS)
    max_retries: int | None = Field(None, ge=0, le=1000)
    timeout_seconds: int | None = Field(None, ge=1)
    priority: int = Field(0, ge=PRIORITY_MIN, le=PRIORITY_MAX)
    tags: dict[str, pydantic.JsonValue] | None = None
    #: While a task with this key is pending or running, submitting another creates nothing and
    #: returns that task's id. Enforced by a unique index, so concurrent submitters cannot race.
    unique_key: str | None = Field(None, min_length=1, max_length=_MAX_KEY_LENGTH)
    #: Tasks this one waits for (a workflow): it is ``waiting`` until each has ended, and runs once
    #: they have completed. Each must exist already.
    depends_on: list[uuid.UUID] | None = Field(None, max_length=_MAX_PARENTS)
    #: What a parent that fails (retries used up) or is cancelled does to this task: ``"cancel"`` it
    #: (and what waits for it), or ``"run"`` it anyway once every parent has ended (clean-up steps).
    on_parent_failure: Literal["cancel", "run"] = "cancel"
    #: The queue it goes to, instead of its ``@task``'s (only workers serving that queue run it).
    queue: str | None = None

    @field_validator("queue")
    @classmethod
    def _check_queue(cls, value: str | None) -> str | None:
        return None if value is None else check_queue(value)

    @field_validator("depends_on")
    @classmethod
    def _distinct_parents(cls, value: list[uuid.UUID] | None) -> list[uuid.UUID] | None:
        return list(dict.fromkeys(value)) or None if value is not None else None

    @model_validator(mode="after")
    def _parents_without_key(self) -> SubmitOptions:
        if self.depends_on and self.unique_key is not None:
            raise ValueError("depends_on cannot be combined with unique_key")
        return self

    @field_validator("unique_key")
    @classmethod
    def _check_key(cls, value: str | None) -> str | None:
        return None if value is None else check_unique_key(value)

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
        if not options:  # the everyday submit: nothing to validate
            return _DEFAULTS, dict(call)
        return cls.of(options), {k: v for k, v in call.items() if k not in cls.model_fields}


_DEFAULTS = SubmitOptions()


class SubmitArgs(TypedDict, total=False):
    """``SubmitOptions`` as keywords, for the type checker (``submit_many(..., **options)``)."""

    delay_seconds: float
    max_retries: int | None
    timeout_seconds: int | None
    priority: int
    tags: dict[str, Any] | None
    unique_key: str | None
    depends_on: list[uuid.UUID] | None
    on_parent_failure: Literal["cancel", "run"]
    queue: str | None


def check_unique_key(key: str) -> str:
    """``key`` if a user may submit it, else ValueError (slot keys are the scheduler's own)."""
    if not isinstance(key, str) or not 1 <= len(key) <= _MAX_KEY_LENGTH:
        raise ValueError(f"unique_key must be a string of 1 to {_MAX_KEY_LENGTH} characters")
    if key.startswith(sql.SLOT_KEY_PREFIX):
        raise ValueError(f"unique_key may not start with {sql.SLOT_KEY_PREFIX!r}: recurring tasks use those keys")
    if "\x00" in key:
        raise ValueError("unique_key contains a NUL character, which PostgreSQL's text refuses")
    return key


def _insert_params(
    func: Callable[..., Any] | str, opts: SubmitOptions, kwargs: Mapping[str, Any], *, validate: bool = True
) -> dict[str, Any]:
    """Validate one call and build the INSERT parameters (all text/number, for any driver)."""
    definition = definition_for(func)
    payload = definition.validate(dict(kwargs)) if validate else {}
    config = configured()
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
        "id": str(new_id()),
        "name": definition.name,
        "kwargs": kwargs_json,
        "max_retries": max_retries,
        "delay": float(opts.delay_seconds),
        "timeout": timeout,
        "priority": opts.priority,
        "tags": tags_json,
        "unique_key": opts.unique_key,
        "parents": _array(opts.depends_on) if opts.depends_on else None,
        "on_failure": "run" if opts.on_parent_failure == "run" else None,
        "queue": opts.queue or definition.queue,
    }


def _array(ids: Iterable[Any]) -> str:
    """A uuid[] literal (text, cast in the statement): the same for psycopg 3 and psycopg2."""
    return "{" + ",".join(str(i) for i in ids) + "}"


# A keyed submit may need a second statement (who holds the key?) or a second attempt (the holder
# committed after the first one's snapshot). The steps are written once, as generators that yield
# (statement, params) and receive the rows, and driven on a sync pool, an async pool or the
# caller's own transaction.
Steps = Generator[tuple[str, dict[str, Any]], list[Any], T]


def _drive(steps: Steps[T], run: Callable[[str, dict[str, Any]], list[Any]]) -> T:
    try:
        step = next(steps)
        while True:
            step = steps.send(run(*step))
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


async def _adrive(steps: Steps[T], run: Callable[[str, dict[str, Any]], Awaitable[list[Any]]]) -> T:
    try:
        step = next(steps)
        while True:
            step = steps.send(await run(*step))
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


def _sync_run(statement: str, params: dict[str, Any]) -> list[Any]:
    return database().rows(statement, params, as_dict=False)


async def _async_run(statement: str, params: dict[str, Any]) -> list[Any]:
    pool = await database().apool()
    with translated_errors():
        async with pool.connection() as conn:
            cursor = await conn.execute(statement, params, prepare=sql.prepare(statement))  # type: ignore[arg-type]
            return await cursor.fetchall() if cursor.description else []


def _submit_steps(params: dict[str, Any]) -> Steps[uuid.UUID]:
    """Insert one task; with a unique key, the id of whichever task holds the key afterwards."""
    if params["parents"] is not None:
        one = {**params, "ids": _array([params["id"]]), "kwargs": "[" + params["kwargs"] + "]"}
        yield from _children_steps(one)
        return uuid.UUID(params["id"])
    if params["unique_key"] is None:
        yield sql.INSERT_TASK, params
        return uuid.UUID(params["id"])
    for _ in range(_KEY_ATTEMPTS):
        rows = yield sql.INSERT_TASK_UNIQUE, params
        if rows:
            return uuid.UUID(str(rows[0][0]))
    raise DatabaseError(_key_unseen(params["unique_key"]))


def _children_steps(params: dict[str, Any]) -> Steps[None]:
    """INSERT_CHILDREN; a ValidationError naming the parents that do not exist (nothing inserted)."""
    found = (yield sql.INSERT_CHILDREN, params)[0][0]
    wanted = params["parents"].strip("{}").split(",")
    if found != len(wanted):
        existing = {str(row[0]) for row in (yield sql.EXISTING_IDS, {"ids": params["parents"]})}
        missing = [i for i in wanted if i not in existing]
        problem = {"field": "depends_on", "message": f"no such task: {', '.join(missing)}"}
        raise ValidationError(f"depends_on names tasks that do not exist: {', '.join(missing)}", [problem])


def _key_unseen(key: str) -> str:
    return (
        f"unique_key {key!r} is held by a task this transaction cannot see (committed after its snapshot: "
        "is the transaction REPEATABLE READ or SERIALIZABLE?); submit it in a READ COMMITTED transaction"
    )


def _one(func: Callable[..., Any] | str, call: Mapping[str, Any]) -> dict[str, Any]:
    opts, kwargs = SubmitOptions.split(call)
    return _insert_params(func, opts, kwargs)


async def submit_task(func: Callable[..., Any] | str, /, **kwargs: Any) -> uuid.UUID:
    """Validate the arguments and enqueue a task; returns its id. Raises ValidationError on bad input.

    ``kwargs`` are the task's arguments plus any of :class:`SubmitOptions` (``delay_seconds``,
    ``max_retries``, ``timeout_seconds``, ``priority``, ``tags``, ``unique_key``). With a
    ``unique_key`` that a pending or running task holds, nothing is written and that task's id is returned.
    """
    return await _adrive(_submit_steps(_one(func, kwargs)), _async_run)


def submit_task_sync(func: Callable[..., Any] | str, /, **kwargs: Any) -> uuid.UUID:
    """``submit_task`` for sync code (Flask, Django, scripts): same validation, same result."""
    return _drive(_submit_steps(_one(func, kwargs)), _sync_run)


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
    With a ``unique_key``, a concurrent submit of the same key waits until this transaction ends.
    """
    params = _one(func, kwargs)
    cursor = _dbapi_cursor(tx)

    def run(statement: str, values: dict[str, Any]) -> list[Any]:
        cursor.execute(statement, values)
        return list(cursor.fetchall()) if cursor.description else []

    try:
        return _drive(_submit_steps(params), run)
    finally:
        cursor.close()


def _many_steps(
    func: Callable[..., Any] | str, kwargs_list: Iterable[Mapping[str, Any]], options: Mapping[str, Any]
) -> Steps[list[uuid.UUID]]:
    """Validate every call, then insert them all in one statement. Each item may carry its own
    ``unique_key``; an item whose key is held gets the holder's id (the first item of a repeated key wins)."""
    opts = SubmitOptions.of(options)
    if opts.unique_key is not None:
        raise ValidationError("submit_many takes unique_key per item (in each kwargs dict), not for the whole batch")
    items = [dict(kwargs) for kwargs in kwargs_list]
    keys = [_item_key(index, item.pop("unique_key", None)) for index, item in enumerate(items)]
    definition = definition_for(func)
    encoded = definition.validate_many(items)
    params = _insert_params(func, opts, {}, validate=False)
    del params["id"], params["unique_key"]
    made = new_ids(len(encoded))
    ids = [str(i) for i in made]
    if not ids:
        return []
    if params["parents"] is not None:
        if any(key is not None for key in keys):
            raise ValidationError("depends_on cannot be combined with unique_key")
        yield from _children_steps({**params, "ids": _array(ids), "kwargs": "[" + ",".join(encoded) + "]"})
        return made
    if all(key is None for key in keys):
        yield sql.INSERT_MANY, {**params, "ids": "{" + ",".join(ids) + "}", "kwargs": "[" + ",".join(encoded) + "]"}
        return made  # (the ids made, not parsed back from their text: a producer's time is the workers' too)
    result = list(ids)
    todo = list(range(len(ids)))
    for _ in range(_KEY_ATTEMPTS):
        batch = {
            **params,
            "ids": "{" + ",".join(ids[i] for i in todo) + "}",
            "kwargs": "[" + ",".join(encoded[i] for i in todo) + "]",
            "keys": [keys[i] for i in todo],
        }
        inserted = {str(row[0]) for row in (yield sql.INSERT_MANY_UNIQUE, batch)}
        refused = [i for i in todo if ids[i] not in inserted]
        if not refused:
            break
        wanted = sorted({keys[i] for i in refused if keys[i] is not None})
        holders = {key: str(held) for key, held in (yield sql.KEY_HOLDERS, {"keys": wanted})}
        for i in refused:
            if keys[i] in holders:
                result[i] = holders[keys[i]]  # type: ignore[index]
        todo = [i for i in refused if keys[i] not in holders]
        if not todo:
            break
    else:
        raise DatabaseError(_key_unseen(str(keys[todo[0]])))
    return [uuid.UUID(i) for i in result]


def _item_key(index: int, key: Any) -> str | None:
    if key is None:
        return None
    try:
        return check_unique_key(key)
    except ValueError as exc:
        problem = {"field": "unique_key", "message": str(exc), "item": index}
        raise ValidationError(f"item {index}: {exc}", [problem]) from None


async def submit_many(
    func: Callable[..., Any] | str, kwargs_list: Iterable[Mapping[str, Any]], /, **options: Unpack[SubmitArgs]
) -> list[uuid.UUID]:
    """Enqueue one task per kwargs dict in a single statement, all with the same ``options``. All are
    validated first; any error rejects the whole batch and nothing is written. A kwargs dict may hold
    a ``unique_key`` for its own task (see :func:`submit_task`)."""
    return await _adrive(_many_steps(func, kwargs_list, options), _async_run)


def submit_many_sync(
    func: Callable[..., Any] | str, kwargs_list: Iterable[Mapping[str, Any]], /, **options: Unpack[SubmitArgs]
) -> list[uuid.UUID]:
    """``submit_many`` for sync code."""
    return _drive(_many_steps(func, kwargs_list, options), _sync_run)
