"""Configuration: one validated Pydantic model shared by the library, the worker and the dashboard."""

from __future__ import annotations

import os
import re
from datetime import timedelta
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

import pydantic
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from tasklib.errors import ConfigError, problems_of, summary_of

ENV_DATABASE_URL = "TASKLIB_DATABASE_URL"
ENV_POOL_MODE = "TASKLIB_POOL_MODE"
ENV_LISTEN_URL = "TASKLIB_LISTEN_URL"
ENV_REPLICA_URL = "TASKLIB_REPLICA_URL"
POOL_MODES = ("session", "transaction")

# SQLAlchemy-style driver suffixes people paste from their app settings; libpq wants them gone.
_ACCEPTED_SCHEMES = ("postgresql", "postgres")


def normalize_database_url(url: str, what: str = "database_url") -> str:
    """Turn ``postgres://``, ``postgresql+psycopg://`` … into a libpq URL, or raise ValueError."""
    url = url.strip()
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(f"{what} must be a PostgreSQL URL such as postgresql://user:password@host:5432/dbname")
    base = scheme.split("+", 1)[0].lower()
    if base not in _ACCEPTED_SCHEMES:
        raise ValueError(f"{what} must use postgresql:// (got {scheme}://); TaskLib only supports PostgreSQL")
    return f"postgresql://{rest}"


def redact_url(url: str) -> str:
    """The URL with any password replaced by ``***`` (safe for logs and pages)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "postgresql://***"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    userinfo = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{userinfo}:***@{netloc[-1]}"))


#: The finished states, in the order retention prunes them.
FINISHED = ("completed", "failed", "cancelled")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")


def parse_duration(value: Any) -> timedelta:
    """``timedelta``, seconds (int/float) or text like ``90s``, ``30m``, ``12h``, ``7d``, ``2w``."""
    if isinstance(value, timedelta):
        result = value
    elif isinstance(value, int | float) and not isinstance(value, bool):
        result = timedelta(seconds=value)
    elif isinstance(value, str) and (match := _DURATION.match(value.lower())):
        result = timedelta(seconds=float(match[1]) * _UNITS[match[2]])
    else:
        raise ValueError(f"expected a duration such as 7d, 12h, 30m or 90s, or a number of seconds; got {value!r}")
    if result <= timedelta(0):
        raise ValueError("a retention period must be positive")
    return result


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]


class Retention(BaseModel):
    """How long finished tasks are kept, per state; a state left as ``None`` is kept forever.

    ``Config(retention=Retention(completed="7d", failed="30d"))``: each worker tries to prune every
    ``every_seconds``; an advisory lock lets one of them at a time do it.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    completed: Duration | None = None
    failed: Duration | None = None
    cancelled: Duration | None = None
    every_seconds: float = Field(3600.0, ge=1)

    @model_validator(mode="after")
    def _something_to_prune(self) -> Retention:
        if not self.periods():
            raise ValueError("retention names no state: give completed, failed and/or cancelled a period")
        return self

    def periods(self) -> dict[str, timedelta]:
        """``{state: keep-for}`` for the states this policy prunes."""
        return {state: period for state in FINISHED if (period := getattr(self, state)) is not None}

    def describe(self) -> dict[str, float]:
        """The policy as JSON (seconds per state), as automatic rounds record it."""
        return {state: period.total_seconds() for state, period in self.periods().items()}


class Config(BaseModel):
    """TaskLib settings. Only ``database_url`` matters to most users; the rest have seed defaults."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: PostgreSQL URL. ``None`` means: ``$TASKLIB_DATABASE_URL``, else the embedded local server.
    database_url: str | None = None
    max_retries: int = Field(3, ge=0, le=1000)
    base_retry_delay_seconds: float = Field(5.0, ge=0)
    retry_backoff_multiplier: float = Field(2.0, ge=1.0)
    lock_timeout_seconds: int = Field(600, ge=1)
    default_task_timeout_seconds: int | None = Field(None, ge=1)
    #: Memory an attempt may allocate in its child, in MB, for tasks without ``memory_limit_mb``
    #: (``None``: unlimited). Past it, allocations fail and the task fails with a MemoryError.
    default_memory_limit_mb: int | None = Field(None, ge=16)
    worker_id: str | None = Field(None, min_length=1, max_length=200)
    #: Spread retries by up to ±25 % so a burst of failures does not retry in lockstep. Off by
    #: default so the documented 5 s / 10 s / 20 s schedule holds exactly.
    retry_jitter: bool = False
    #: On shutdown, how long running tasks may finish before they are stopped and released.
    shutdown_grace_seconds: float = Field(30.0, ge=0)
    #: Opt-in automatic deletion of old finished tasks by the workers (off: kept indefinitely).
    retention: Retention | None = None
    #: Prepare the few statements whose plan cannot depend on the data (submits). ``None``: yes in
    #: session mode, no in transaction mode (PgBouncer before 1.21, or without
    #: ``max_prepared_statements``, cannot carry a prepared statement from one transaction to the
    #: next); set True behind PgBouncer >= 1.21 with prepared statements on.
    prepared_statements: bool | None = None
    #: How ``database_url`` reaches PostgreSQL. ``session``: each connection is a server session of
    #: its own (direct, or PgBouncer in session pooling). ``transaction``: a transaction-mode pooler;
    #: workers then keep no session state (settings per transaction, no session locks) and LISTEN
    #: only on ``listen_url``. Default: ``$TASKLIB_POOL_MODE``, else session. docs/fleet.md.
    pool_mode: Literal["session", "transaction"] = Field(
        default_factory=lambda: os.environ.get(ENV_POOL_MODE) or "session",  # type: ignore[arg-type,return-value]
        validate_default=True,
    )
    #: Where workers LISTEN for submits, cancels and queue changes when ``database_url`` is a
    #: transaction-mode pooler (which cannot hold a LISTEN): a URL of the server itself. Without
    #: it a pooled worker polls every poll interval. Default: ``$TASKLIB_LISTEN_URL``.
    listen_url: str | None = Field(default_factory=lambda: os.environ.get(ENV_LISTEN_URL) or None, validate_default=True)
    #: A streaming replica of the database for the dashboard's reads (pages, partials, /metrics);
    #: its actions still go to ``database_url``. Default: ``$TASKLIB_REPLICA_URL``.
    replica_url: str | None = Field(default_factory=lambda: os.environ.get(ENV_REPLICA_URL) or None, validate_default=True)

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except pydantic.ValidationError as exc:
            raise ConfigError(f"invalid TaskLib config: {summary_of(problems_of(exc))}") from None

    @field_validator("database_url", "listen_url", "replica_url")
    @classmethod
    def _check_url(cls, value: str | None, info: pydantic.ValidationInfo) -> str | None:
        return None if value is None else normalize_database_url(value, info.field_name or "database_url")

    def prepares(self) -> bool:
        """Whether TaskLib's connections prepare the statements marked ``Prepared``."""
        return self.prepared_statements if self.prepared_statements is not None else self.pool_mode == "session"

    def resolved_listen_url(self) -> str | None:
        """Where a worker LISTENs: ``listen_url``; else, in session mode, the database URL; else
        nowhere (a pooled worker without ``listen_url`` polls)."""
        if self.listen_url:
            return self.listen_url
        return self.resolved_database_url() if self.pool_mode == "session" else None

    def resolved_database_url(self) -> str:
        """The URL to connect to: explicit, then ``$TASKLIB_DATABASE_URL``, then the embedded server."""
        if self.database_url:
            return self.database_url
        env = os.environ.get(ENV_DATABASE_URL)
        if env:
            try:
                return normalize_database_url(env)
            except ValueError as exc:
                raise ConfigError(f"${ENV_DATABASE_URL}: {exc}") from None
        from tasklib.embedded import ensure_embedded_url

        return ensure_embedded_url()

    def __repr_args__(self):  # type: ignore[no-untyped-def]
        for key, value in super().__repr_args__():
            yield key, (redact_url(value) if key in ("database_url", "listen_url", "replica_url") and value else value)
