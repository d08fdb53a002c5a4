"""The workflow page in Chromium: a diamond and a fan drawn live, a failed step retried from it."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

import tasklib
from e2e import tasks
from e2e.conftest import Stack

pytestmark = pytest.mark.e2e


def test_workflow_graph_resumes_after_retrying_its_failed_step(stack: Stack, page: Page) -> None:
    missing = stack.tmp / "report.csv"
    root = tasklib.submit_task_sync(tasks.echo, text="root")
    left = tasklib.submit_task_sync(tasks.echo, text="left", depends_on=[root])
    right = tasklib.submit_task_sync(tasks.echo, text="right", depends_on=[root])
    join = tasklib.submit_task_sync(tasks.echo, text="join", depends_on=[left, right])
    fan = [tasklib.submit_task_sync(tasks.echo, text=f"part {i}", depends_on=[join]) for i in range(4)]
    fan.append(tasklib.submit_task_sync(tasks.needs_file, path=str(missing), depends_on=[join]))
    final = tasklib.submit_task_sync(tasks.echo, text="final", depends_on=fan)

    page.goto(f"{stack.url}/workflows/{join}")
    expect(page.locator("svg rect.node")).to_have_count(10)
    expect(page.locator("svg path.edge")).to_have_count(4 + 5 + 5)
    # Live: the failing step fails and the final step is cancelled, without a reload.
    expect(page.locator("svg rect.node-failed")).to_have_count(1, timeout=20_000)
    expect(page.locator("svg rect.node-cancelled")).to_have_count(1, timeout=10_000)
    expect(page.locator("svg rect.node-completed")).to_have_count(8)
    stack.shot(page, "workflow-failed")

    missing.write_text("ready")
    page.get_by_role("button", name="Retry failed steps").click()
    expect(page.locator("svg rect.node-completed")).to_have_count(10, timeout=20_000)
    stack.shot(page, "workflow-completed")
    assert tasklib.get_task(final).state == "completed"  # type: ignore[union-attr]

    page.locator(f'svg a[href="/tasks/{final}"]').click()
    expect(page.locator(".relatives")).to_contain_text("Parents (5)")
    stack.shot(page, "workflow-task-relatives")


def test_waiting_task_says_what_it_waits_for_and_cancel_the_rest(stack: Stack, page: Page) -> None:
    slow = tasklib.submit_task_sync(tasks.echo, text="later", delay_seconds=3600)
    done = tasklib.submit_task_sync(tasks.echo, text="now")
    child = tasklib.submit_task_sync(tasks.echo, text="child", depends_on=[slow, done])
    page.goto(f"{stack.url}/tasks/{child}")
    expect(page.locator(".explain")).to_contain_text("waiting for 1 of 2 parent(s) to end", timeout=15_000)
    expect(page.locator(".explain")).to_contain_text("tasks.echo (pending)")
    stack.shot(page, "task-waiting-explain")
    page.goto(f"{stack.url}/tasks?state=waiting")
    expect(page.locator(f'a[href="/tasks/{child}"]')).to_be_visible()
    page.goto(f"{stack.url}/workflows/{child}")
    page.get_by_role("button", name="Cancel the rest").click()
    expect(page.locator("svg rect.node-cancelled")).to_have_count(2)
    assert tasklib.get_task(child).state == "cancelled"  # type: ignore[union-attr]
