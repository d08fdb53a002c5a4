"""Example tasks used by `tasklib demo` and the examples: some succeed, some fail, some retry, some wait,
one runs on a schedule and one is ``async def``; emails have a queue of their own, one task may run
only once at a time and one at most twice a second."""

from __future__ import annotations

import asyncio
import random
import time

import tasklib


@tasklib.task(queue="emails")
def send_email(to: str, subject: str, body: str) -> bool:
    """Pretend to send an email."""
    time.sleep(random.uniform(0.01, 0.2))
    return True


@tasklib.task(max_retries=5, timeout_seconds=30)
def process_image(image_path: str) -> str:
    """Pretend to process an image."""
    time.sleep(random.uniform(0.05, 0.5))
    return f"processed_{image_path}"


@tasklib.task(max_retries=2)
def flaky_api_call(endpoint: str) -> dict:
    """Fails about half the time, so the dashboard shows retries and failures."""
    time.sleep(random.uniform(0.01, 0.1))
    if random.random() < 0.5:
        raise ConnectionError(f"upstream {endpoint} answered 503 Service Unavailable")
    return {"endpoint": endpoint, "status": 200}


@tasklib.task(timeout_seconds=2, max_retries=0)
def slow_report(pages: int) -> int:
    """Sometimes takes longer than its 2 s timeout and is stopped."""
    time.sleep(pages * 0.3)
    return pages


@tasklib.task
async def fetch_page(url: str) -> int:
    """An async task: many of these wait on I/O at once in one child's event loop."""
    await asyncio.sleep(random.uniform(0.05, 1.0))
    return random.randint(200, 50_000)


@tasklib.task(every=15, schedule_kwargs={"source": "demo"})
def refresh_rates(source: str) -> dict:
    """A recurring task: one run every 15 seconds, however many workers are running."""
    return {"source": source, "eur_usd": round(random.uniform(1.05, 1.12), 4)}


@tasklib.task
def resize(image: str, width: int) -> str:
    """A step of the demo's workflow: one of several run side by side."""
    time.sleep(random.uniform(0.1, 0.5))
    return f"{image}@{width}"


@tasklib.task(max_retries=0)
def publish(album: str) -> dict:
    """The workflow's last step: it waits for every resize and reads their results. Albums whose name
    ends in "-broken" fail, so the dashboard has a workflow to resume with one click."""
    sizes = sorted(tasklib.parent_results().values())
    if album.endswith("-broken") and random.random() < 0.8:
        raise RuntimeError(f"the CDN refused {album}")
    return {"album": album, "images": sizes}


@tasklib.task
def notify_owner(album: str) -> str:
    """Runs after publish whatever happened (on_parent_failure="run")."""
    return f"told the owner of {album}"


@tasklib.task(concurrency_limit=1)
def rebuild_search_index(reason: str) -> str:
    """Must never run twice at once (across every worker)."""
    time.sleep(random.uniform(0.5, 1.5))
    return f"rebuilt ({reason})"


@tasklib.task(rate_limit="2/s", queue="payments")
def charge_card(order: int, cents: int) -> bool:
    """The payment provider allows two calls a second (across every worker)."""
    time.sleep(0.05)
    return True
