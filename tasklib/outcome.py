"""What an attempt's outcome means for its task: a pure function, tested without a database."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from tasklib.config import Config
from tasklib.states import TaskState


class OutcomeKind(StrEnum):
    OK = "ok"  # returned; result is JSON text
    ERROR = "error"  # raised (or its arguments/result could not be loaded/stored)
    TIMEOUT = "timeout"  # ran past timeout_seconds and was killed
    CRASHED = "crashed"  # its process died (os._exit, signal, out-of-memory kill)
    LOST = "lost"  # its worker stopped renewing the lock (killed, partitioned): found by a rescue


@dataclass(frozen=True, slots=True)
class Outcome:
    kind: OutcomeKind
    result_json: str | None = None
    error: str | None = None

    @classmethod
    def from_child(cls, status: str, payload: str) -> Outcome:
        """What a child reported for one task: ``("ok", result JSON)``, ``("error", traceback)``, or
        ``("timeout", traceback)`` from an async child that cancelled the task at its timeout."""
        if status == "ok":
            return cls(OutcomeKind.OK, result_json=payload)
        if status == "timeout":
            return cls(OutcomeKind.TIMEOUT, error=payload)
        return cls(OutcomeKind.ERROR, error=payload)


def timeout_error(seconds: int | None, how: str) -> str:
    """The error line of an attempt that ran past its timeout, sync or async: ``how`` says what was
    done about it ("its process was killed", "was cancelled")."""
    return f"TimeoutError: task exceeded its timeout of {seconds} s and {how}"


@dataclass(frozen=True, slots=True)
class Action:
    """The row change to record: new state, and for a retry the delay before the next attempt."""

    state: TaskState
    retry_count: int
    result_json: str | None = None
    error: str | None = None
    delay_seconds: float = 0.0


def backoff_delay(retry_count: int, config: Config, rand: Callable[[], float] = random.random) -> float:
    """Seconds before retry number ``retry_count + 1``: base * multiplier ** retry_count (5, 10, 20 s…)."""
    delay = config.base_retry_delay_seconds * config.retry_backoff_multiplier**retry_count
    delay = min(delay, 7 * 24 * 3600.0)  # a week at most: beyond that the arithmetic is a bug, not a plan
    if config.retry_jitter:
        delay *= 0.75 + 0.5 * rand()
    return delay


def decide(
    outcome: Outcome,
    retry_count: int,
    max_retries: int,
    config: Config,
    rand: Callable[[], float] = random.random,
) -> Action:
    """Map an attempt's outcome to the task's next state.

    ``max_retries`` counts retries after the first attempt: with 3, a task runs at most 4 times.
    """
    if outcome.kind is OutcomeKind.OK:
        return Action(TaskState.COMPLETED, retry_count, result_json=outcome.result_json)
    error = outcome.error or f"{outcome.kind} without details"
    if retry_count < max_retries:
        return Action(
            TaskState.PENDING,
            retry_count + 1,
            error=error,
            delay_seconds=backoff_delay(retry_count, config, rand),
        )
    return Action(TaskState.FAILED, retry_count, error=error)


def decide_unstorable(action: Action, reason: str) -> Action:
    """The task ran but PostgreSQL refused its outcome (a result or error it cannot store).

    It fails without a retry: another attempt would produce an outcome that cannot be stored either,
    and running the code again is worse than recording why its outcome was lost.
    """
    return Action(TaskState.FAILED, action.retry_count, error=f"TaskLib could not store this task's outcome: {reason}")
