"""A person's view: Chromium drives the dashboard beside a live worker."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

import tasklib
from e2e import tasks
from e2e.conftest import Stack

pytestmark = pytest.mark.e2e


@pytest.fixture(autouse=True)
def no_dialogs_or_errors(page: Page) -> None:
    def refuse(dialog):  # type: ignore[no-untyped-def]
        raise AssertionError(f"unexpected dialog: {dialog.message}")

    page.on("dialog", refuse)


def test_failed_task_retry_completes(stack: Stack, page: Page) -> None:
    missing = stack.tmp / "input.txt"
    task_id = tasklib.submit_task_sync(tasks.needs_file, path=str(missing))
    page.goto(f"{stack.url}/tasks?state=failed")
    row = page.locator(f'a[href="/tasks/{task_id}"]')
    expect(row).to_be_visible(timeout=15_000)  # the list refreshes itself once the worker fails it
    stack.shot(page, "tasks-failed-filter")
    row.click()
    expect(page.locator("pre.traceback")).to_contain_text("FileNotFoundError: expected input file")
    expect(page.locator(".detail-head .badge")).to_have_text("failed")
    stack.shot(page, "task-failed-detail")
    missing.write_text("here now")
    page.get_by_role("button", name="Retry").click()
    expect(page.locator(".detail-head .badge")).to_have_text("completed", timeout=15_000)
    expect(page.locator("pre.json").last).to_contain_text('"found it"')
    stack.shot(page, "task-retried-completed")


def test_cancel_a_delayed_task(stack: Stack, page: Page) -> None:
    task_id = tasklib.submit_task_sync(tasks.echo, text="later", delay_seconds=3600)
    page.goto(f"{stack.url}/tasks/{task_id}")
    expect(page.locator(".explain")).to_contain_text("scheduled in the future")
    stack.shot(page, "task-delayed-explain")
    page.get_by_role("button", name="Cancel").click()
    expect(page.locator(".detail-head .badge")).to_have_text("cancelled")
    assert tasklib.get_task(task_id).state == "cancelled"  # type: ignore[union-attr]


def test_new_task_appears_without_reload(stack: Stack, page: Page) -> None:
    """Within 3 s, five times in a row, submitted through the library's pool, whose connection stays
    open and idle (the case where statistics-based change detection lagged 6-10 s)."""
    page.goto(f"{stack.url}/tasks")
    page.fill('input[name="q"]', "typing in progress")
    for i in range(5):
        task_id = tasklib.submit_task_sync(tasks.echo, text=f"fresh {i}")
        expect(page.locator(f'a[href="/tasks/{task_id}"]')).to_be_visible(timeout=3_000)
    expect(page.locator('input[name="q"]')).to_have_value("typing in progress")  # polling kept the typed text
    stack.shot(page, "tasks-live")


def test_xss_payload_renders_as_text(stack: Stack, page: Page) -> None:
    """On every page that shows the payload (as arguments, tag, error): shown as text, never run."""
    payload = '<script>window.__xss = 1</script><img src=x onerror="window.__xss = 2">'
    task_id = tasklib.submit_task_sync(tasks.needs_file, path=payload, tags={"note": payload})
    page.goto(f"{stack.url}/tasks/{task_id}")
    expect(page.locator(".detail-head .badge")).to_have_text("failed", timeout=15_000)
    for path, where in (
        (f"/tasks/{task_id}", "pre.json"),
        (f"/tasks/{task_id}", "pre.traceback"),
        ("/tasks?state=failed", "tbody"),
        ("/", "#overview"),
    ):
        page.goto(f"{stack.url}{path}")
        expect(page.locator(where).first).to_contain_text("<script>window.__xss = 1</script>")
        page.wait_for_timeout(300)
        assert page.evaluate("window.__xss") is None, path
        assert page.locator("img[src=x]").count() == 0, path
    stack.shot(page, "xss-as-text")


def test_bulk_retry(stack: Stack, page: Page) -> None:
    missing = stack.tmp / "bulk.txt"
    ids = tasklib.submit_many_sync(tasks.needs_file, [{"path": str(missing)}] * 4, tags={"batch": "nightly"})
    page.goto(f"{stack.url}/tasks?state=failed&tag=batch%3Dnightly")
    expect(page.locator("tbody tr.row-failed")).to_have_count(4, timeout=15_000)
    missing.write_text("ok")
    page.get_by_role("link", name=re.compile("Retry all failed matching")).click()
    expect(page.locator("#bulk-count")).to_have_text("4")
    stack.shot(page, "bulk-retry-confirm")
    page.get_by_role("button", name=re.compile(r"Retry 4 task")).click()
    expect(page.locator(".flash")).to_contain_text("4 task(s) retried")
    page.goto(f"{stack.url}/tasks?tag=batch%3Dnightly")
    expect(page.locator("tbody tr.row-completed")).to_have_count(4, timeout=15_000)
    assert {tasklib.get_task(i).state for i in ids} == {"completed"}  # type: ignore[union-attr]


def test_overview_and_workers_pages(stack: Stack, page: Page) -> None:
    tasklib.submit_many_sync(tasks.echo, [{"text": str(i)} for i in range(20)])
    tasklib.submit_task_sync(tasks.needs_file, path="/nonexistent/file")
    page.goto(f"{stack.url}/")
    expect(page.locator(".card").filter(has_text="completed")).to_contain_text("20", timeout=15_000)
    stack.shot(page, "overview")
    page.goto(f"{stack.url}/workers")
    expect(page.locator("#workers")).to_contain_text("live")
    stack.shot(page, "workers")
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(f"{stack.url}/tasks")
    stack.shot(page, "tasks-phone")


def test_the_full_id_is_one_click_to_copy(stack: Stack, page: Page) -> None:
    task_id = tasklib.submit_task_sync(tasks.echo, text="copy me")
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=stack.url)
    page.goto(f"{stack.url}/tasks")
    expect(page.locator("#task-list")).to_contain_text("…" + str(task_id)[-8:])
    page.goto(f"{stack.url}/tasks/{task_id}")
    button = page.get_by_role("button", name="Copy the task id")
    button.focus()
    page.keyboard.press("Enter")  # from the keyboard, as from the mouse
    expect(button).to_have_text("copied")
    assert page.evaluate("navigator.clipboard.readText()") == str(task_id)
    stack.shot(page, "task-copy-id")


def test_schedules_page_and_run_now(stack: Stack, page: Page) -> None:
    """A worker that imports a recurring task schedules it; the page shows the next run and the last
    one live; Run now submits one extra run that the worker completes."""
    from e2e.conftest import _spawn

    worker = _spawn(["worker", "--app", "e2e.recurring", "--database-url", stack.database_url], stack.tmp / "recurring.log")
    try:
        page.goto(f"{stack.url}/schedules")
        row = page.locator("#schedules tbody tr").filter(has_text="e2e.recurring.heartbeat")
        expect(row).to_contain_text("Every 2 seconds", timeout=15_000)
        expect(row).to_contain_text("completed", timeout=15_000)  # a slot ran, shown without a reload
        expect(row).to_contain_text("in ")  # next run, in the future
        stack.shot(page, "schedules")
        row.get_by_role("button", name="Run now").click()
        expect(page).to_have_url(re.compile(r"/tasks/[0-9a-f-]{36}$"))
        expect(page.locator(".detail-head .badge")).to_have_text("completed", timeout=15_000)
        expect(page.locator("main")).to_contain_text("manual")  # its tags say how it was started
        stack.shot(page, "schedule-run-now")
    finally:
        worker.terminate()
        worker.wait(15)


def test_dashboard_mounted_under_a_prefix_in_fastapi(stack: Stack, page: Page) -> None:
    """The FastAPI example serves the dashboard at /tasklib: pages, htmx polls and buttons all stay
    under the prefix in a real browser."""
    import os
    import subprocess
    import sys

    from e2e.conftest import ROOT
    from tests.net import free_port, wait_healthy

    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TASKLIB_DATABASE_URL": stack.database_url}
    app = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "examples.fastapi_app.main:app", "--port", str(port), "--log-level", "warning"],
        cwd=ROOT,
        env=env,
    )
    try:
        wait_healthy(f"http://127.0.0.1:{port}/tasklib")
        page.goto(f"http://127.0.0.1:{port}/tasklib/tasks")
        fresh = tasklib.submit_task_sync(tasks.echo, text="under a prefix")
        expect(page.locator(f'a[href="/tasklib/tasks/{fresh}"]')).to_be_visible(timeout=5_000)  # the htmx poll
        later = tasklib.submit_task_sync(tasks.echo, text="later", delay_seconds=3600)
        page.goto(f"http://127.0.0.1:{port}/tasklib/tasks/{later}")
        page.get_by_role("button", name="Cancel").click()
        expect(page).to_have_url(f"http://127.0.0.1:{port}/tasklib/tasks/{later}")
        expect(page.locator(".detail-head .badge")).to_have_text("cancelled")
        page.get_by_role("link", name="Schedules").click()
        expect(page).to_have_url(f"http://127.0.0.1:{port}/tasklib/schedules")
        stack.shot(page, "mounted-under-prefix")
    finally:
        app.terminate()
        app.wait(15)
