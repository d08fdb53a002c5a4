"""TaskLib: a durable task queue in one PostgreSQL table.

Names are imported lazily: a worker's child processes import ``tasklib`` to register tasks and
should not pay for SQLAlchemy, psycopg pools or the worker (it keeps each child small).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from tasklib.config import Config, Retention
from tasklib.errors import (
    ConfigError,
    DatabaseError,
    InvalidTransition,
    NotInitialized,
    TaskLibError,
    TaskNotFound,
    TaskNotRegistered,
    UniqueKeyTaken,
    ValidationError,
)
from tasklib.registry import get_registered_tasks, task
from tasklib.states import TaskState

if TYPE_CHECKING:
    __version__: str
    from tasklib.api import (
        cancel_task,
        count_by_state,
        current_config,
        get_task,
        init,
        iter_tasks,
        list_tasks,
        prune,
        retry_task,
    )
    from tasklib.models import Task
    from tasklib.queues import QueueInfo, list_queues, pause_queue, resume_queue, set_queue_limit
    from tasklib.submit import submit_many, submit_many_sync, submit_task, submit_task_in, submit_task_sync
    from tasklib.worker import TaskWorker
    from tasklib.workflow import Group, Step, chain, group, parent_results, step

_LAZY = {
    **dict.fromkeys(
        [
            "cancel_task",
            "count_by_state",
            "current_config",
            "get_task",
            "init",
            "iter_tasks",
            "list_tasks",
            "prune",
            "retry_task",
        ],
        "tasklib.api",
    ),
    **dict.fromkeys(["QueueInfo", "list_queues", "pause_queue", "resume_queue", "set_queue_limit"], "tasklib.queues"),
    **dict.fromkeys(
        ["submit_many", "submit_many_sync", "submit_task", "submit_task_in", "submit_task_sync"], "tasklib.submit"
    ),
    **dict.fromkeys(["Group", "Step", "chain", "group", "parent_results", "step"], "tasklib.workflow"),
    "Task": "tasklib.models",
    "TaskWorker": "tasklib.worker",
}


def __getattr__(name: str) -> Any:
    if name == "__version__":  # from the installed package's metadata, read once when asked
        from importlib.metadata import version

        globals()[name] = version("tasklib")
        return globals()[name]
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tasklib' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "Config",
    "ConfigError",
    "DatabaseError",
    "Group",
    "InvalidTransition",
    "NotInitialized",
    "QueueInfo",
    "Retention",
    "Step",
    "Task",
    "TaskLibError",
    "TaskNotFound",
    "TaskNotRegistered",
    "TaskState",
    "TaskWorker",
    "UniqueKeyTaken",
    "ValidationError",
    "cancel_task",
    "chain",
    "count_by_state",
    "current_config",
    "get_registered_tasks",
    "get_task",
    "group",
    "init",
    "iter_tasks",
    "list_queues",
    "list_tasks",
    "parent_results",
    "pause_queue",
    "prune",
    "resume_queue",
    "retry_task",
    "set_queue_limit",
    "step",
    "submit_many",
    "submit_many_sync",
    "submit_task",
    "submit_task_in",
    "submit_task_sync",
    "task",
]
