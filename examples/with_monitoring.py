"""Monitoring and debugging: submit a mix of tasks, then inspect them the way the dashboard does.

    python examples/with_monitoring.py
Run ``tasklib dashboard`` beside it to watch the same tasks in a browser.
"""

from __future__ import annotations

import asyncio

import tasklib
from tasklib.demo.tasks import flaky_api_call, send_email


async def main() -> None:
    config = tasklib.Config(base_retry_delay_seconds=0.2)
    tasklib.init(config)
    await tasklib.submit_many(send_email, [{"to": f"user{i}@example.com", "subject": "Hi", "body": "."} for i in range(5)])
    flaky = [await tasklib.submit_task(flaky_api_call, endpoint=f"/v1/items/{i}", tags={"batch": "demo"}) for i in range(5)]
    later = await tasklib.submit_task(send_email, delay_seconds=3600, to="later@example.com", subject="Later", body=".")

    worker = tasklib.TaskWorker(config, concurrency=4, poll_interval_seconds=0.2)
    running = asyncio.create_task(worker.run())
    while tasklib.list_tasks(state="running") or any(
        tasklib.get_task(i).state == "pending"
        for i in flaky  # type: ignore[union-attr]
    ):
        await asyncio.sleep(0.2)
    await worker.shutdown()
    await running

    print("counts:", tasklib.count_by_state())
    for task in tasklib.list_tasks(state="failed", name="flaky_api_call"):
        print(f"failed {task.id} after {task.retry_count} retries: {task.error.strip().splitlines()[-1]}")  # type: ignore[union-attr]
    print("registered:", sorted(tasklib.get_registered_tasks()))
    tasklib.cancel_task(later)
    print("cancelled the delayed email:", tasklib.get_task(later).state)  # type: ignore[union-attr]


if __name__ == "__main__":
    asyncio.run(main())
