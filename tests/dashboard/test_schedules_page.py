"""The Schedules page, Run now, schedule metrics and the retention line, through the test client."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta

import psycopg
from litestar.testing import TestClient

import tasklib
from tasklib.monitor import Monitor
from tests.dashboard.test_app import _settled, csrf
from tests.factory import make_task

OLD_FINISH = datetime(2026, 1, 1, tzinfo=UTC)


def _slot(url: str, name: str, at: datetime, state: str, written: str = "every 60s", **columns: object) -> uuid.UUID:
    from tasklib.schedules import slot_key

    return make_task(
        url, state, name=name, unique_key=slot_key(name, at), scheduled_at=at, tags={"schedule": written}, **columns
    )


def test_schedules_page_run_now_and_metrics(client: TestClient, tl) -> None:
    url = tl.database_url
    now = datetime.now(UTC).replace(microsecond=0)
    name = "tests.integration.jobs.mark"
    last = _slot(url, name, now - timedelta(seconds=60), "completed", started_at=now - timedelta(seconds=59.75))
    upcoming = _slot(url, name, now + timedelta(seconds=60), "pending", kwargs={"key": "from-schedule"})
    _slot(url, "app.<b>gone</b>", now - timedelta(days=1), "failed", written="*/5 * * * *<img src=x onerror=alert(1)>")

    page = client.get("/schedules")
    assert page.status_code == 200
    assert "Every minute" in page.text and f"/tasks/{upcoming}" in page.text and f"/tasks/{last}" in page.text
    assert "250 ms" in page.text  # the last run started 0.25 s after its slot
    assert "not scheduled" in page.text  # the task with no pending slot
    assert "<b>gone</b>" not in page.text and "&lt;b&gt;gone&lt;/b&gt;" in page.text
    assert "<img src=x" not in page.text
    assert "tag=schedule%3Devery%2060s" in page.text  # link to this schedule's runs

    metrics = client.get("/metrics").text
    assert f'tasklib_schedule_delay_seconds{{name="{name}"}} 0.250' in metrics
    assert (
        f'tasklib_schedule_next_run_timestamp_seconds{{name="{name}"}} {(now + timedelta(seconds=60)).timestamp():.0f}'
        in metrics
    )

    assert client.post("/schedules/run", data={"name": name}).status_code == 403  # no CSRF token
    token = csrf(client)
    response = client.post("/schedules/run", data={"name": name, "_csrf_token": token}, follow_redirects=False)
    assert response.status_code == 303
    manual = tasklib.get_task(response.headers["location"].rsplit("/", 1)[1])
    assert manual is not None and manual.state == "pending" and manual.unique_key is None
    assert manual.kwargs == {"key": "from-schedule"} and manual.tags == {"schedule": "every 60s", "run": "manual"}
    assert tasklib.get_task(upcoming).state == "pending"  # type: ignore[union-attr]  # the slot is untouched
    missing = client.post("/schedules/run", data={"name": "no.such.task", "_csrf_token": token})
    assert missing.status_code == 404 and "no recurring task" in missing.text
    assert client.post("/schedules/run", data={"name": "", "_csrf_token": token}).status_code == 400


def test_schedules_poll_changes_when_a_slot_arrives(client: TestClient, tl) -> None:
    version = _settled(client, "/partials/schedules")
    _slot(tl.database_url, "tests.integration.jobs.mark", datetime.now(UTC) + timedelta(minutes=1), "pending")
    assert client.get(f"/partials/schedules?v={version}").status_code == 200


def test_overview_shows_the_retention_policy_in_force(client: TestClient, tl) -> None:
    from tasklib.retention import automatic_round

    assert "Retention: off" in client.get("/").text
    make_task(tl.database_url, "completed", completed_at=OLD_FINISH)
    with psycopg.connect(tl.database_url, autocommit=True) as conn:
        assert automatic_round(conn, tasklib.Retention(completed="7d", failed="30d"), "worker-r") == {
            "completed": 1,
            "failed": 0,
        }
    time.sleep(Monitor.OVERVIEW_SHARE_SECONDS)
    text = client.get("/").text
    assert "completed kept 1 w, failed kept 30 d" in text and "worker-r" in text and "1 removed" in text
