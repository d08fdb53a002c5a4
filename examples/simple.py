"""Basic use: define tasks, submit them, run a worker in the same script until they are done.

python examples/simple.py                      # embedded PostgreSQL (started on first use)
TASKLIB_DATABASE_URL=postgresql://... python examples/simple.py
"""

from __future__ import annotations

import asyncio

import tasklib


@tasklib.task
def add(a: int, b: int) -> int:
    return a + b


@tasklib.task(max_retries=1)
def divide(a: float, b: float) -> float:
    return a / b


async def main() -> None:
    config = tasklib.Config(base_retry_delay_seconds=0.5)  # database: $TASKLIB_DATABASE_URL or embedded
    tasklib.init(config)
    ids = [await tasklib.submit_task(add, a=i, b=i) for i in range(5)]
    bad = await tasklib.submit_task(divide, a=1, b=0)

    worker = tasklib.TaskWorker(config, concurrency=2, poll_interval_seconds=0.2)
    running = asyncio.create_task(worker.run())
    while any(tasklib.get_task(i).state not in ("completed", "failed") for i in [*ids, bad]):  # type: ignore[union-attr]
        await asyncio.sleep(0.1)
    await worker.shutdown()
    await running

    for task_id in ids:
        task = tasklib.get_task(task_id)
        print(f"{task.name}({task.kwargs}) -> {task.state}: {task.result}")  # type: ignore[union-attr]
    failed = tasklib.get_task(bad)
    print(f"divide by zero -> {failed.state} after {failed.retry_count} retry: {failed.error.splitlines()[-1]}")  # type: ignore[union-attr]


if __name__ == "__main__":
    asyncio.run(main())
