"""Typed errors. Everything TaskLib raises on purpose derives from :class:`TaskLibError`."""

from __future__ import annotations

from typing import Any


def problems_of(exc: Any) -> list[dict[str, Any]]:
    """A pydantic ValidationError as one ``{"field", "message"}`` per problem (how TaskLib reports them)."""
    return [
        {
            "field": ".".join(str(part) for part in e["loc"]) or "(arguments)",
            "message": "unexpected argument" if e["type"] == "extra_forbidden" else e["msg"],
        }
        for e in exc.errors(include_url=False)
    ]


def summary_of(problems: list[dict[str, Any]]) -> str:
    return "; ".join(f"{p['field']}: {p['message']}" for p in problems)


class TaskLibError(Exception):
    """A TaskLib operation failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class ConfigError(TaskLibError, ValueError):
    """The configuration is invalid (a ValueError too, like the pydantic error it replaces)."""


class NotInitialized(TaskLibError):
    """tasklib.init(config) has not been called in this process."""


class ValidationError(TaskLibError):
    """Task arguments or options are invalid; nothing was written."""

    def __init__(self, message: str, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        #: One dict per problem: ``{"field": "body", "message": "Field required"}``.
        self.errors: list[dict[str, Any]] = errors or []


class TaskNotRegistered(TaskLibError):
    """No task function is registered under that name in this process."""


class TaskNotFound(TaskLibError):
    """No task has that id."""


class InvalidTransition(TaskLibError):
    """The task is not in a state that allows this change."""

    def __init__(self, message: str, current_state: str | None = None) -> None:
        super().__init__(message)
        self.current_state = current_state


class UniqueKeyTaken(InvalidTransition):
    """Another pending or running task holds this task's ``unique_key``."""


class DatabaseError(TaskLibError):
    """PostgreSQL could not be reached or refused a statement."""
