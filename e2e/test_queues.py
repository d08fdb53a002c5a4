"""The Queues page in Chromium: a backlog paused and resumed with its buttons, limits shown."""

from __future__ import annotations

import time

import pytest
from playwright.sync_api import Page, expect

import tasklib
from e2e import tasks
from e2e.conftest import Stack

pytestmark = pytest.mark.e2e


def _completed(name: str) -> int:
    return sum(1 for t in tasklib.iter_tasks(state="completed", name=name))


def test_pause_and_resume_a_queue_from_its_page(stack: Stack, page: Page) -> None:
    tasklib.submit_many_sync(tasks.send, [{"text": f"mail {i}"} for i in range(300)])
    tasklib.submit_many_sync(tasks.report, [{"text": f"report {i}"} for i in range(3)])
    page.goto(f"{stack.url}/queues")
    emails = page.locator("tr", has_text="emails")
    expect(emails).to_contain_text("active")
    expect(page.locator("tr", has_text="default")).to_contain_text("at most 1 running", timeout=15_000)
    expect(page.locator("tr", has_text="default")).to_contain_text("5/s")
    time.sleep(1.0)  # the worker is draining the backlog
    emails.get_by_role("button", name="Pause").click()
    expect(emails).to_contain_text("paused")
    time.sleep(1.0)  # the worker hears of it at once; one claim in flight may still start
    held = _completed("e2e.tasks.send")
    time.sleep(2.0)
    assert _completed("e2e.tasks.send") == held, "a paused queue's tasks were still claimed"
    assert 0 < held < 300
    stack.shot(page, "queues-paused")

    emails.get_by_role("button", name="Resume").click()
    expect(emails).to_contain_text("active")
    expect(emails.locator("td").nth(2)).to_have_text("0", timeout=30_000)  # pending drained, live
    stack.shot(page, "queues-resumed")
    assert _completed("e2e.tasks.send") == 300
