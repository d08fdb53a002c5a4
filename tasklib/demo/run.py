"""The demo program: the dashboard, a worker and a stream of example tasks.

Open the dashboard and watch tasks complete, fail, retry, time out and wait; async tasks run many
at once, a recurring one every 15 s (the Schedules page) and small workflows (resize, then publish,
then notify; one in four fails at publish and can be resumed from its workflow page). The Queues
page shows the emails and payments queues beside the default one, a task limited to one run at a
time and one limited to two starts a second; pause a queue there and watch it fill. Ctrl+C stops
the demo (the embedded database keeps running for the next start: `tasklib db stop` stops it).
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time

import tasklib
from tasklib.demo import tasks


def submit_forever(database_url: str | None) -> int:
    """``--submit-only``: only submit example tasks (compose runs the worker and dashboard as services)."""
    tasklib.init(tasklib.Config(database_url=database_url))
    while True:
        submit_some()
        time.sleep(1.0)


def run(database_url: str | None, *, port: int, seconds: float = 0) -> int:
    """A dashboard on ``port`` and a worker, fed example tasks until Ctrl+C or ``seconds`` (0: forever)."""
    url = tasklib.Config(database_url=database_url).resolved_database_url()  # starts the embedded server if none
    tasklib.init(tasklib.Config(database_url=url))
    cli = [sys.executable, "-m", "tasklib.cli"]
    procs = [
        subprocess.Popen([*cli, "dashboard", "--port", str(port), "--database-url", url]),
        subprocess.Popen(
            [
                *cli,
                "--log-level",
                "warning",
                "worker",
                "--app",
                "tasklib.demo.tasks",
                "--concurrency",
                "4",
                "--database-url",
                url,
            ]
        ),
    ]
    print(f"\n  TaskLib demo: open http://127.0.0.1:{port}/  (Ctrl+C to stop)\n", flush=True)
    stop_at = time.monotonic() + seconds if seconds else None
    try:
        while stop_at is None or time.monotonic() < stop_at:
            submit_some()
            time.sleep(1.0)
            if any(p.poll() is not None for p in procs):
                print("tasklib demo: a process exited; stopping", file=sys.stderr)
                return 1
    except KeyboardInterrupt:
        pass
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(40)
    return 0


def submit_some() -> None:
    n = random.randint(1, 4)
    tasklib.submit_many_sync(
        tasks.send_email,
        [{"to": f"user{random.randint(1, 999)}@example.com", "subject": "Welcome", "body": "Hello!"} for _ in range(n)],
    )
    tasklib.submit_task_sync(
        tasks.process_image,
        image_path=f"/photos/{random.randint(1, 9999)}.jpg",
        priority=random.choice([0, 0, 5]),
        tags={"batch": "daily-processing"},
    )
    tasklib.submit_many_sync(tasks.fetch_page, [{"url": f"https://example.com/{random.randint(1, 99)}"} for _ in range(3)])
    if random.random() < 0.6:
        tasklib.submit_task_sync(tasks.flaky_api_call, endpoint=f"/v1/orders/{random.randint(1, 500)}")
    if random.random() < 0.25:
        tasklib.submit_task_sync(tasks.slow_report, pages=random.randint(1, 10))
    if random.random() < 0.3:
        submit_album(random.randint(1, 9999))
    if random.random() < 0.5:
        tasklib.submit_task_sync(tasks.rebuild_search_index, reason=random.choice(["new product", "price change"]))
    for _ in range(random.choice([0, 1, 2, 3])):
        tasklib.submit_task_sync(tasks.charge_card, order=random.randint(1, 99_999), cents=random.randint(100, 9_999))
    if random.random() < 0.2:
        tasklib.submit_task_sync(
            tasks.send_email,
            delay_seconds=random.randint(30, 600),
            to="later@example.com",
            subject="Reminder",
            body="Scheduled",
        )


def submit_album(number: int) -> None:
    """A workflow: resize an image to four widths side by side, then publish (which waits for all
    four and reads their results), then tell the owner either way. One album in four is "broken":
    its publish fails and cancels nothing but what waits for it; retry it from the dashboard."""
    album = f"album-{number}" + ("-broken" if number % 4 == 0 else "")
    image = f"/photos/{number}.jpg"
    fan = tasklib.group(
        [tasklib.step(tasks.resize, image=image, width=w) for w in (320, 640, 1280, 2560)],
        then=tasklib.step(tasks.publish, album=album),
    )
    assert fan.then is not None
    tasklib.submit_task_sync(tasks.notify_owner, album=album, depends_on=[fan.then], on_parent_failure="run")
