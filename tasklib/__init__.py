"""TaskLib: a durable task queue in one PostgreSQL table."""

from tasklib.api import (
    cancel_task,
    count_by_state,
    current_config,
    get_task,
    init,
    list_tasks,
    retry_task,
    submit_many,
    submit_many_sync,
    submit_task,
    submit_task_in,
    submit_task_sync,
)
from tasklib.config import Config
from tasklib.errors import (
    ConfigError,
    DatabaseError,
    InvalidTransition,
    NotInitialized,
    TaskLibError,
    TaskNotFound,
    TaskNotRegistered,
    ValidationError,
)
from tasklib.models import Task
from tasklib.registry import get_registered_tasks, task
from tasklib.states import TaskState
from tasklib.worker import TaskWorker

__version__ = "0.1.0"

__all__ = [
    "Config",
    "ConfigError",
    "DatabaseError",
    "InvalidTransition",
    "NotInitialized",
    "Task",
    "TaskLibError",
    "TaskNotFound",
    "TaskNotRegistered",
    "TaskState",
    "TaskWorker",
    "ValidationError",
    "cancel_task",
    "count_by_state",
    "current_config",
    "get_registered_tasks",
    "get_task",
    "init",
    "list_tasks",
    "retry_task",
    "submit_many",
    "submit_many_sync",
    "submit_task",
    "submit_task_in",
    "submit_task_sync",
    "task",
]
