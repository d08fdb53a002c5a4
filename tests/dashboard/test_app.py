"""Every dashboard route against a real database through Litestar's test client."""

from __future__ import annotations

import re
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from litestar.testing import TestClient

import dashboard.context
import tasklib
from dashboard.app import create_app
from tasklib.monitor import Monitor
from tests.factory import make_task
from tests.integration import jobs

OLD_FINISH = datetime(2026, 1, 1, tzinfo=UTC)
XSS = '<script>alert("x")</script><img src=x onerror=alert(1)>'


def csrf(client: TestClient) -> str:
    client.get("/tasks")
    return client.cookies["csrftoken"]


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
        "/schedules",
        "/partials/schedules",
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
    make_task(tl.database_url, "failed", kwargs={"key": "failedone"}, error="RuntimeError: kaboom", completed_at=OLD_FINISH)
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
        ("/tasks/2fdf4286-a837-4c87-942e-ca5545bf80a9", 404),
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
    assert conflict.status_code == 409 and "only pending, waiting or running" in conflict.text
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
    counts = tasklib.count_by_state()
    assert counts == {"pending": 10, "waiting": 0, "running": 0, "completed": 0, "failed": 0, "cancelled": 0}


def test_task_data_is_escaped(client: TestClient, tl) -> None:
    task_id = make_task(tl.database_url, "failed", kwargs={"key": XSS}, tags={"x": XSS}, error=XSS)
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


def _version(html: str) -> str:
    found = re.search(r'hx-get="[^"]*[?&](?:amp;)?v=([^"&]+)"', html)
    assert found, html[:500]
    return found.group(1)


def _settled(client: TestClient, partial: str) -> str:
    """The version once polls answer 204 (the overview changes while its 24 h figures load)."""
    version = _version(client.get(partial).text)
    for _ in range(10):
        response = client.get(f"{partial}?v={version}")
        if response.status_code == 204:
            return version
        version = _version(response.text)
    raise AssertionError(f"{partial} never settled")


@pytest.mark.parametrize("partial", ["/partials/overview", "/partials/tasks", "/partials/workers"])
def test_poll_is_204_until_any_connection_changes_something(
    client: TestClient, tl, partial: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Exact change detection: 204 while nothing changed, the new partial on the very next poll after
    a write from a connection that stays open (statistics counters would lag up to 10 s here)."""
    # A version also carries a 30 s clock bucket (relative times refresh): crossing a boundary
    # between two polls here would read as a change nobody made. One bucket for the whole test.
    monkeypatch.setattr(dashboard.context, "MAX_STALE_SECONDS", 10**9)
    tasklib.submit_task_sync(jobs.mark, key="first")
    version = _settled(client, partial)
    with psycopg.connect(tl.database_url, autocommit=True) as other:  # stays open and idle
        for change, shown_on_workers in (
            ("INSERT INTO tasks (id, name, kwargs) VALUES (gen_random_uuid(), 'tests.integration.jobs.mark', '{}')", False),
            (
                "UPDATE tasks SET state = 'running', worker_id = 'w', locked_until = now() + interval '1 min'"
                " WHERE id = (SELECT id FROM tasks WHERE state = 'pending' ORDER BY created_at LIMIT 1)",
                True,
            ),
        ):
            other.execute(change)
            time.sleep(Monitor.OVERVIEW_SHARE_SECONDS)  # tabs polling within this share one overview
            response = client.get(f"{partial}?v={version}")
            if partial.endswith("workers") and not shown_on_workers:  # not on this page: still 204
                assert response.status_code == 204, change
                continue
            assert response.status_code == 200, change
            version = _version(response.text)
            assert client.get(f"{partial}?v={version}").status_code == 204
    assert client.get(f"{partial}?v=stale").status_code == 200


def test_detail_poll_sees_a_state_change(client: TestClient, tl) -> None:
    task_id = tasklib.submit_task_sync(jobs.mark, key="d", delay_seconds=3600)
    path = f"/partials/tasks/{task_id}"
    version = _version(client.get(path).text)
    tasklib.cancel_task(task_id)
    changed = client.get(f"{path}?v={version}")
    assert changed.status_code == 200 and "cancelled" in changed.text


def _rows_in_order(html: str, ids: list[uuid.UUID]) -> list[uuid.UUID]:
    body = "".join(re.findall(r"<tbody>.*?</tbody>", html, re.S))
    return sorted((i for i in ids if str(i) in body), key=lambda i: body.index(str(i)))


def test_list_sorts_both_ways(client: TestClient, tl) -> None:
    start = datetime(2026, 3, 1, tzinfo=UTC)
    ids = [make_task(tl.database_url, created_at=start + timedelta(minutes=i)) for i in (2, 0, 3, 1)]
    by_age = [ids[1], ids[3], ids[0], ids[2]]
    for path in ("/tasks", "/partials/tasks"):
        assert _rows_in_order(client.get(f"{path}?sort=oldest").text, ids) == by_age
        assert _rows_in_order(client.get(path).text, ids) == by_age[::-1]
        assert _rows_in_order(client.get(f"{path}?sort=newest").text, ids) == by_age[::-1]
    first = client.get("/tasks?sort=oldest&limit=2").text
    assert _rows_in_order(first, ids) == by_age[:2]
    assert "sort=oldest" in re.search(r'<a[^>]*rel="next"[^>]*>', first).group(0)  # the order survives paging


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


def test_create_app_owns_its_pool_and_leaves_the_library_alone(tl, database_url: str) -> None:
    """Mounted in an app whose default database is another one, the dashboard shows its own database
    and the app's submits still go to the app's."""
    from tests.pg import fresh_database

    with fresh_database() as dashboard_url:
        dashboard_config = tasklib.Config(database_url=dashboard_url)
        with TestClient(create_app(dashboard_config)) as client:
            theirs = make_task(dashboard_url, kwargs={"key": "shown"})
            for _ in range(3):
                ours = tasklib.submit_task_sync(jobs.mark, key="app")
                assert tasklib.current_config() == tl
                assert tasklib.get_task(ours) is not None
            html = client.get("/tasks").text
            assert str(theirs) in html and str(ours) not in html
            assert "shown" in client.get(f"/tasks/{theirs}").text
            assert client.get(f"/tasks/{ours}").status_code == 404

            def hammer() -> None:
                for path in ("/", "/tasks", "/workers", "/metrics", f"/tasks/{theirs}"):
                    client.get(path)

            threads = [threading.Thread(target=hammer) for _ in range(8)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            with psycopg.connect(dashboard_url) as conn:
                opened = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND application_name = 'tasklib-dashboard'"
                ).fetchone()[0]
            from dashboard.app import POOL_SIZE

            assert 1 <= opened <= POOL_SIZE


def test_every_read_runs_under_the_statement_timeout(tl) -> None:
    """A table locked by someone else makes pages answer 503 after the timeout, never hang."""
    task_id = tasklib.submit_task_sync(jobs.mark, key="t")
    with TestClient(create_app(tl, statement_timeout_ms=300)) as client:
        with psycopg.connect(tl.database_url) as locker:
            locker.execute("LOCK TABLE tasks IN ACCESS EXCLUSIVE MODE")
            for path in ("/", "/tasks", f"/tasks/{task_id}", "/partials/overview", f"/partials/tasks/{task_id}", "/metrics"):
                started = time.monotonic()
                response = client.get(path)
                assert response.status_code == 503, (path, response.text[:300])
                assert "statement_timeout" in response.text
                assert time.monotonic() - started < 3, path
            locker.rollback()
        assert client.get(f"/tasks/{task_id}").status_code == 200


@pytest.mark.parametrize(("state", "label"), [("completed", "Completed"), ("failed", "Failed"), ("cancelled", "Cancelled")])
def test_the_timeline_names_how_a_task_ended(client: TestClient, tl, state: str, label: str) -> None:
    task_id = make_task(tl.database_url, state)
    timeline = client.get(f"/tasks/{task_id}").text.split("Timeline", 1)[1].split("</dl>", 1)[0]
    ended = re.findall(r"<dt>(Completed|Failed|Cancelled|Ended)</dt>", timeline)
    assert ended == [label]


def test_the_list_filters_by_the_arguments_tasks_contain(client: TestClient, tl) -> None:
    wanted = tasklib.submit_task_sync(jobs.mark, key="user-42")
    other = tasklib.submit_task_sync(jobs.mark, key="user-7")
    page = client.get("/tasks", params={"kwargs": '{"key": "user-42"}'}).text
    assert str(wanted) in page and str(other) not in page
    assert 'value="{&#34;key&#34;: &#34;user-42&#34;}"' in page or "user-42" in page.split("Arguments contain")[1][:200]
    both = client.get("/tasks", params={"kwargs": '{"key": "user-42"}', "state": "completed"}).text
    assert str(wanted) not in both  # combined with the state filter (it is pending)
    bad = client.get("/tasks", params={"kwargs": "{user: 42"})
    assert bad.status_code == 400 and "kwargs: not valid JSON" in bad.text
    assert client.get("/tasks", params={"kwargs": "[1, 2]"}).status_code == 400
    assert client.get("/partials/tasks", params={"kwargs": "nope"}).status_code == 400


def test_tasks_made_together_have_labels_that_tell_them_apart(client: TestClient, tl) -> None:
    """UUIDv7 ids start with their time: tasks submitted in one call share their first digits. Every
    list, the overview and the tab titles show one short form, the last 8 digits, all distinct."""
    ids = tasklib.submit_many_sync(jobs.mark, [{"key": f"k{i}"} for i in range(30)])
    assert len({str(i)[:8] for i in ids}) < 30  # (what the first digits would have shown)
    labels = re.findall(r'title="[0-9a-f-]{36}">(…[0-9a-f]{8})</a>', client.get("/tasks").text)
    assert len(labels) == 30 and len(set(labels)) == 30
    assert set(labels) == {"…" + str(i)[-8:] for i in ids}
    page = client.get(f"/tasks/{ids[0]}").text
    assert f"<title>Task …{str(ids[0])[-8:]} · TaskLib</title>" in page
    assert f'data-copy="{ids[0]}"' in page  # the full id, one click to copy
