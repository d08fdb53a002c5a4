"""A real dashboard process, a real worker process and a fresh database for each e2e test."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Page, sync_playwright

import tasklib
from tests.net import free_port, wait_healthy
from tests.pg import fresh_database

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOTS = ROOT / "e2e" / "screenshots"
CHROMIUM = os.environ.get("TASKLIB_CHROMIUM", "/usr/bin/chromium")


LAUNCH = {
    "executable_path": CHROMIUM,
    "args": [
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
    ],
}


@pytest.fixture
def page() -> Iterator[Page]:
    """A page in a Chromium of this test's own. Playwright starts and stops with the test, so its
    event loop never outlives it: the suite's parallel processes run other tests that call
    ``asyncio.run`` in the same process afterwards."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(**LAUNCH)
        try:
            yield browser.new_context().new_page()
        finally:
            browser.close()


@dataclass
class Stack:
    url: str
    database_url: str
    tmp: Path

    def shot(self, page, name: str) -> None:  # type: ignore[no-untyped-def]
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def _spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "tasklib.cli", *args],
        cwd=ROOT,
        env=env,
        stdout=open(log, "wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    with fresh_database("tasklib_e2e") as database_url:
        tasklib.init(tasklib.Config(database_url=database_url))
        port = free_port()
        dashboard = _spawn(["dashboard", "--port", str(port), "--database-url", database_url], tmp_path / "dash.log")
        worker = _spawn(
            ["worker", "--app", "e2e.tasks", "--poll-interval", "0.5", "--database-url", database_url],
            tmp_path / "worker.log",
        )
        url = f"http://127.0.0.1:{port}"
        try:
            try:
                wait_healthy(url)
            except RuntimeError:
                raise RuntimeError((tmp_path / "dash.log").read_text()) from None
            yield Stack(url, database_url, tmp_path)
        finally:
            for proc in (worker, dashboard):
                proc.send_signal(signal.SIGTERM)
            for proc in (worker, dashboard):
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
