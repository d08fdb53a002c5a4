"""The task state machine: every state, and every transition the code may make."""

from __future__ import annotations

from enum import StrEnum


class TaskState(StrEnum):
    """Where a task is in its life. Stored as text in ``tasks.state``."""

    #: Waiting to run: due when ``scheduled_at <= now()`` (new, retrying, released or rescued).
    PENDING = "pending"
    #: Waiting for parents (``depends_on``): never claimed; pending in the transaction that records
    #: its last parent's end (``waiting_for`` counts the parents still to end).
    WAITING = "waiting"
    #: Claimed by ``worker_id``; the claim is valid until ``locked_until`` (renewed by heartbeats).
    RUNNING = "running"
    #: Finished without raising; ``result`` holds the JSON return value. Final.
    COMPLETED = "completed"
    #: Raised, timed out or lost its worker on the last allowed attempt; ``error`` holds why.
    FAILED = "failed"
    #: Stopped by a person or by code before it completed; a running task's child is killed.
    CANCELLED = "cancelled"


#: Allowed transitions, and which operation makes each one. Statements in ``tasklib.sql`` check the
#: expected source state in their WHERE clause; ``tests/integration/test_transitions.py`` runs each
#: of them on a row in every state and requires the changes it sees to be exactly these.
TRANSITIONS: dict[tuple[TaskState, TaskState], str] = {
    (TaskState.PENDING, TaskState.RUNNING): "claim by a worker",
    (TaskState.PENDING, TaskState.CANCELLED): "cancel_task",
    (TaskState.RUNNING, TaskState.COMPLETED): "task returned",
    (TaskState.RUNNING, TaskState.PENDING): "retry after failure, rescue of an expired lock, or release at shutdown",
    (TaskState.RUNNING, TaskState.FAILED): "last attempt failed, timed out or lost its worker",
    (TaskState.RUNNING, TaskState.CANCELLED): "cancel_task (the worker kills the running code)",
    (TaskState.FAILED, TaskState.PENDING): "retry_task",
    (TaskState.CANCELLED, TaskState.PENDING): "retry_task",
    (TaskState.WAITING, TaskState.PENDING): "its last parent ended (completed; or failed, for on_parent_failure='run')",
    (TaskState.WAITING, TaskState.CANCELLED): "a parent failed or was cancelled, or cancel_task",
    (TaskState.CANCELLED, TaskState.WAITING): "retry_task of the failed parent whose end cancelled it",
}


#: Every value ``tasks.state`` may hold (its check constraint). The fleet's own state (queue
#: settings, limits' clocks, worker presence) lives in side tables (``tasklib.sql.fleet``).
STORED_STATES = tuple(s.value for s in TaskState)

#: Unique keys that start with this belong to recurring-task slots (``tasklib.schedules``). A slot's
#: key stays taken after its run finishes, so a slot can never run twice; a user's key is free again
#: as soon as its task has finished.
SLOT_KEY_PREFIX = "tasklib.slot:"

#: The range of ``tasks.priority`` (a check constraint; higher runs first).
PRIORITY_MIN = -32768
PRIORITY_MAX = 32767


def can_transition(source: TaskState | str, target: TaskState | str) -> bool:
    """Whether the state machine allows ``source -> target``."""
    return (TaskState(source), TaskState(target)) in TRANSITIONS
