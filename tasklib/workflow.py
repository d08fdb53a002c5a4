"""Workflows: tasks that wait for other tasks, in the one table.

A task submitted with ``depends_on=[ids]`` is ``waiting`` until every parent has ended; it becomes
pending in the transaction that records its last parent's end (``sql.SETTLE_CHILDREN``), so there is
no resolver to lag or die. Inside it, ``parent_results()`` gives the parents' return values, read
once when it was claimed. ``chain`` and ``group`` build the common shapes on top of ``depends_on``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

#: The running task's parents' results as JSON text (set by the child around each task).
_PARENT_RESULTS: ContextVar[str | None] = ContextVar("tasklib_parent_results", default=None)


def parent_results() -> dict[uuid.UUID, Any]:
    """``{parent id: its result}`` for the task running now (empty for a task without parents).
    Read when the task was claimed, so it costs no query of its own."""
    text = _PARENT_RESULTS.get()
    if not text:
        return {}
    return {uuid.UUID(key): value for key, value in json.loads(text).items()}


@contextmanager
def running_with(parent_results_json: str | None) -> Iterator[None]:
    """Around one task in a child: what ``parent_results()`` returns inside it."""
    token = _PARENT_RESULTS.set(parent_results_json)
    try:
        yield
    finally:
        _PARENT_RESULTS.reset(token)


@dataclass(frozen=True)
class Step:
    """One task of a workflow: the function (or its registered name) and its keyword arguments."""

    func: Callable[..., Any] | str
    kwargs: Mapping[str, Any] = field(default_factory=dict)


def step(func: Callable[..., Any] | str, /, **kwargs: Any) -> Step:
    return Step(func, kwargs)


def chain(steps: Sequence[Step], *, depends_on: Sequence[uuid.UUID] = (), in_tx: Any = None) -> list[uuid.UUID]:
    """Submit ``steps`` so that each waits for the one before it; returns their ids in order. The
    first waits for ``depends_on`` (none: it is due at once). With ``in_tx`` (a connection or session,
    as ``submit_task_in`` takes) every step is inserted in that transaction: all or none."""
    ids: list[uuid.UUID] = []
    parents = list(depends_on)
    for item in steps:
        ids.append(_submit(item, parents, in_tx))
        parents = [ids[-1]]
    return ids


@dataclass(frozen=True)
class Group:
    """The ids of a group's members and of its ``then`` step (None without one)."""

    members: list[uuid.UUID]
    then: uuid.UUID | None


def group(
    members: Sequence[Step], then: Step | None = None, *, depends_on: Sequence[uuid.UUID] = (), in_tx: Any = None
) -> Group:
    """Submit ``members`` to run side by side and, if given, ``then`` to run once every one of them
    has ended (a fan-out and its fan-in; Celery's chord). ``then`` finds each member's result in
    ``parent_results()``."""
    ids = [_submit(item, list(depends_on), in_tx) for item in members]
    last = _submit(then, ids, in_tx) if then is not None else None
    return Group(ids, last)


def _submit(item: Step, parents: list[uuid.UUID], in_tx: Any) -> uuid.UUID:
    from tasklib.submit import submit_task_in, submit_task_sync

    kwargs = dict(item.kwargs)
    if parents:
        kwargs["depends_on"] = parents
    if in_tx is not None:
        return submit_task_in(in_tx, item.func, **kwargs)
    return submit_task_sync(item.func, **kwargs)
