"""The worker: claim → execute → outcome → write, in one asyncio loop; task code runs in children.

``TaskWorker`` is imported lazily: children import this package's ``child`` modules and should not
pay for the rest.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tasklib.worker.worker import TaskWorker, default_worker_id

__all__ = ["TaskWorker", "default_worker_id"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from tasklib.worker import worker

        return getattr(worker, name)
    raise AttributeError(f"module 'tasklib.worker' has no attribute {name!r}")
