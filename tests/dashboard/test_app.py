"""Every dashboard route against a real database through Litestar's test client."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from litestar.testing import TestClient

import tasklib
from dashboard.app import create_app
from tests.integration import jobs

XSS = '<script>alert("x")</script><img src=x onerror=alert(1)>'


@pytest.fixture
def client(tl) -> Iterator[TestClient]:
    with TestClient(create_app(tl)) as test_client:
        yield test_client


def csrf(client: TestClient) -> str:
    client.get("/tasks")
    return client.cookies["csrftoken"]


def set_state(url: str, task_id: uuid.UUID, state: str, **columns: object) -> None:
    sets = ", ".join(f"{k} = %({k})s" for k in columns)
    with psycopg.connect(url) as conn:
        conn.execute(
            f"UPDATE tasks SET state = %(state)s{', ' + sets if sets else ''} WHERE id = %(id)s",
            {"state": state, "id": task_id, **columns},
        )


def test_pages_render(client: TestClient, tl) -> None:
    task_id = tasklib.submit_task_sync(jobs.mark, key="k", tags={"batch": "b1"})
    for path in (
        "/",
        "/tasks",
        f"/tasks/{task_id}",
        "/workers",
        "/partials/overview",
        "/partials/tasks",
        f"/partials/tasks/{task_id}",
        "/partials/workers",
        "/bulk/retry",
        "/bulk/cancel",
    ):
        response = client.get(path)
        assert response.status_code == 200, (path, response.text[:500])
        assert "text/html" in response.headers["content-type"]
        assert "script-src 'self'" in response.headers["content-security-policy"]
    assert "tests.integration.jobs.mark" in client.get("/tasks").text


def test_static_htmx_is_served(client: TestClient) -> None:
    response = client.get("/static/htmx-2.0.11.min.js")
    assert response.status_code == 200 and "htmx" in response.text[:200]


@pytest.mark.parametrize(
    ("query", "expect_in", "expect_out"),
    [
        ("state=failed", ["failedone"], ["pendingone"]),
        ("name=tests.integration.jobs.send_email", ["mailone"], ["pendingone"]),
        ("tag=team%3Dblue", ["pendingone"], ["failedone", "mailone"]),
        ("q=kaboom", ["failedone"], ["pendingone"]),
        ("q=%27%3B+DROP+TABLE+tasks%3B--", [], ["pendingone", "failedone"]),
        ("created_from=2000-01-01T00%3A00&created_to=2999-01-01T00%3A00", ["pendingone", "failedone"], []),
        ("created_from=2999-01-01T00%3A00", [], ["pendingone"]),
        ("finished_from=2000-01-01T00%3A00", ["failedone"], ["pendingone"]),
    ],
)
def test_list_filters(client: TestClient, tl, query: str, expect_in: list[str], expect_out: list[str]) -> None:
    tasklib.submit_task_sync(jobs.mark, key="pendingone", tags={"team": "blue"})
    failed = tasklib.submit_task_sync(jobs.mark, key="failedone")
    set_state(tl.database_url, failed, "failed", error="RuntimeError: kaboom", completed_at="2026-01-01T00:00:00Z")
    mail = tasklib.submit_task_sync(jobs.send_email, to="mailone", subject="s", body="b")
    assert mail
    for path in (f"/tasks?{query}", f"/partials/tasks?{query}"):
        html = client.get(path).text
        rows = "".join(re.findall(r"<tbody>.*?</tbody>", html, re.S))
        for key in expect_in:
            task_ids = [str(t.id) for t in tasklib.list_tasks() if key in str(t.kwargs)]
            assert any(tid in rows for tid in task_ids), (query, key)
        for key in expect_out:
            task_ids = [str(t.id) for t in tasklib.list_tasks() if key in str(t.kwargs)]
            assert not any(tid in rows for tid in task_ids), (query, key)
    assert tasklib.count_by_state()["pending"] == 2  # the SQL-looking search was only text


def _link(html: str, rel: str, key: str) -> str:
    match = re.search(rf'rel="{rel}" href="/tasks\?[^"]*{key}=([^"&]+)', html)
    assert match, f"no {rel} link"
    return match.group(1)


def test_keyset_pagination(client: TestClient, tl) -> None:
    ids = tasklib.submit_many_sync(jobs.mark, [{"key": str(i)} for i in range(25)])

    def shown(html: str) -> set[str]:
        return {i for i in map(str, ids) if i in html}

    for sort in ("", "oldest"):
        first = client.get(f"/tasks?limit=10&sort={sort}").text
        second = client.get(f"/tasks?limit=10&sort={sort}&after={_link(first, 'next', 'after')}").text
        assert len(shown(first)) == 10 and len(shown(second)) == 10 and not shown(first) & shown(second)
        back = client.get(f"/tasks?limit=10&sort={sort}&before={_link(second, 'prev', 'before')}").text
        assert shown(back) == shown(first)
        third = client.get(f"/tasks?limit=10&sort={sort}&after={_link(second, 'next', 'after')}").text
        assert len(shown(third)) == 5 and 'rel="next"' not in third
        assert 'rel="prev"' not in first


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/tasks?state=bogus", 400),
        ("/tasks?limit=abc", 400),
        ("/tasks?limit=100000", 400),
        ("/tasks?created_from=yesterday", 400),
        ("/tasks?tag=novalue", 400),
        ("/tasks?after=garbage", 400),
        ("/tasks?sort=sideways", 400),
        ("/tasks/not-a-uuid", 400),
        (f"/tasks/{uuid.uuid4()}", 404),
        ("/bulk/explode", 404),
        ("/nowhere", 404),
    ],
)
def test_bad_input_gets_a_clear_error_page(client: TestClient, path: str, status: int) -> None:
    response = client.get(path)
    assert response.status_code == status, response.text[:300]
    assert "text/html" in response.headers["content-type"]
    assert f"{status} ·" in response.text


def test_retry_and_cancel_actions(client: TestClient, tl) -> None:
    token = csrf(client)
    task_id = tasklib.submit_task_sync(jobs.mark, key="x")
    response = client.post(f"/tasks/{task_id}/cancel", data={"_csrf_token": token}, follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == f"/tasks/{task_id}"
    assert tasklib.get_task(task_id).state == "cancelled"  # type: ignore[union-attr]
    conflict = client.post(f"/tasks/{task_id}/cancel", data={"_csrf_token": token})
    assert conflict.status_code == 409 and "only pending or running" in conflict.text
    response = client.post(f"/tasks/{task_id}/retry?next=/tasks", data={"_csrf_token": token}, follow_redirects=False)
    assert response.headers["location"] == "/tasks"
    assert tasklib.get_task(task_id).state == "pending"  # type: ignore[union-attr]
    assert client.post(f"/tasks/{task_id}/retry", data={"_csrf_token": token}).status_code == 409
    assert client.post(f"/tasks/{uuid.uuid4()}/retry", data={"_csrf_token": token}).status_code == 404
    evil = client.post(f"/tasks/{task_id}/cancel?next=//evil.example", data={"_csrf_token": token}, follow_redirects=False)
    assert evil.headers["location"] == f"/tasks/{task_id}"


def test_posts_without_csrf_token_are_refused(client: TestClient, tl) -> None:
    task_id = tasklib.submit_task_sync(jobs.mark, key="x")
    for path in (f"/tasks/{task_id}/cancel", f"/tasks/{task_id}/retry", "/bulk/cancel/apply"):
        response = client.post(path, data={})
        assert response.status_code == 403, path
    assert tasklib.get_task(task_id).state == "pending"  # type: ignore[union-attr]


def test_bulk_actions_confirm_then_apply(client: TestClient, tl) -> None:
    token = csrf(client)
    tasklib.submit_many_sync(jobs.mark, [{"key": str(i)} for i in range(7)], tags={"run": "a"})
    tasklib.submit_many_sync(jobs.mark, [{"key": str(i)} for i in range(3)], tags={"run": "b"})
    confirm = client.get("/bulk/cancel?tag=run%3Da")
    assert 'id="bulk-count">7<' in confirm.text
    response = client.post("/bulk/cancel/apply", data={"_csrf_token": token, "tag": "run=a"}, follow_redirects=False)
    assert response.status_code == 303 and "done=cancel%3A7" in response.headers["location"]
    assert tasklib.count_by_state()["cancelled"] == 7
    confirm = client.get("/bulk/retry")
    assert 'id="bulk-count">7<' in confirm.text
    client.post("/bulk/retry/apply", data={"_csrf_token": token})
    assert tasklib.count_by_state() == {"pending": 10, "running": 0, "completed": 0, "failed": 0, "cancelled": 0}


def test_task_data_is_escaped(client: TestClient, tl) -> None:
    task_id = tasklib.submit_task_sync(jobs.mark, key=XSS, tags={"x": XSS})
    set_state(tl.database_url, task_id, "failed", error=XSS)
    for path in (f"/tasks/{task_id}", "/tasks", "/"):
        html = client.get(path).text
        assert "<script>alert" not in html and "<img src=x" not in html
        assert "&lt;script&gt;" in html or "&#34;" in html or "&lt;img" in html


def test_detail_explains_why_pending(client: TestClient, tl) -> None:
    later = tasklib.submit_task_sync(jobs.mark, key="later", delay_seconds=3600)
    later_page = client.get(f"/tasks/{later}").text
    assert "due in" in later_page and "none has started" not in later_page  # its schedule explains it
    tasklib.submit_many_sync(jobs.mark, [{"key": "hi"}] * 3, priority=5)
    low = tasklib.submit_task_sync(jobs.mark, key="low")
    html = client.get(f"/tasks/{low}").text
    assert "waiting behind 3 due task(s)" in html
    assert "No worker is connected" in html


def test_unchanged_poll_gets_204(client: TestClient, tl) -> None:
    tasklib.submit_task_sync(jobs.mark, key="x")
    html = client.get("/partials/overview").text
    version = re.search(r'/partials/overview\?v=([^"]+)"', html)
    assert version
    assert client.get(f"/partials/overview?v={version.group(1)}").status_code == 204
    assert client.get("/partials/overview?v=stale").status_code == 200


def test_healthz_and_metrics(client: TestClient, tl) -> None:
    tasklib.submit_task_sync(jobs.mark, key="x")
    assert client.get("/healthz").json() == {"status": "ok"}
    metrics = client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    body = metrics.text
    assert 'tasklib_tasks{state="pending",name="tests.integration.jobs.mark"} 1' in body
    for name in ("tasklib_oldest_pending_age_seconds", "tasklib_running_tasks", "tasklib_workers_connected"):
        assert re.search(rf"^# TYPE {name} gauge$", body, re.M)
        assert re.search(rf"^{name} [0-9.]+$", body, re.M)
    assert tl.database_url not in body


def test_basic_auth(tl) -> None:
    with TestClient(create_app(tl, auth="admin:pw")) as client:
        assert client.get("/").status_code == 401
        assert client.get("/", auth=("admin", "wrong")).status_code == 401
        assert client.get("/", auth=("admin", "pw")).status_code == 200
        assert client.get("/healthz").status_code == 200


def test_password_never_shown(tl) -> None:
    from tasklib.config import Config

    config = Config(database_url=tl.database_url.replace("postgres@", "postgres:hunter2@"))
    with TestClient(create_app(config)) as client:
        for path in ("/", "/tasks", "/workers", "/metrics", "/tasks?state=bogus"):
            assert "hunter2" not in client.get(path).text


def test_loopback_dashboard_refuses_foreign_host_headers(tl) -> None:
    """DNS rebinding: a foreign page reaching 127.0.0.1 still sends its own name as Host."""
    from dashboard.serve import loopback_hosts

    with TestClient(create_app(tl, allowed_hosts=loopback_hosts(8080))) as client:
        assert client.get("/", headers={"Host": "127.0.0.1:8080"}).status_code == 200
        assert client.get("/", headers={"Host": "localhost:8080"}).status_code == 200
        assert client.get("/", headers={"Host": "evil.example:8080"}).status_code == 400
