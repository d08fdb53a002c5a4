"""The Queues page, its Pause/Resume buttons, the explainer's queue reasons and /metrics per queue."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
from litestar.testing import TestClient

import tasklib
from tasklib import sql
from tasklib.registry import definition_for
from tasklib.worker.sources import limits_params
from tests.dashboard.test_app import csrf
from tests.factory import make_task
from tests.integration import jobs, queue_jobs


def test_the_queues_page_lists_queues_and_their_limits(client: TestClient, tl) -> None:
    tasklib.submit_many_sync(queue_jobs.mail, [{"i": i} for i in range(3)])
    tasklib.submit_task_sync(jobs.mark, key="x")
    tasklib.set_queue_limit("emails", 5)
    with psycopg.connect(tl.database_url, autocommit=True) as conn:  # what a worker running it saves
        conn.execute(sql.SAVE_LIMITS, limits_params(definition_for(queue_jobs.limited)))
    for path in ("/queues", "/partials/queues"):
        response = client.get(path)
        assert response.status_code == 200, response.text[:300]
    html = client.get("/queues").text
    assert ">emails<" in html and ">default<" in html and "at most <strong>5</strong> running" in html
    assert "tests.integration.queue_jobs.limited" in html and "at most <strong>2</strong> running (0 now)" in html
    assert 'aria-current="page">Queues<' in html
    listed = client.get("/tasks?queue=emails&state=pending").text  # the page's counts link here
    assert listed.count("tests.integration.queue_jobs.mail") >= 3 and "tests.integration.jobs.mark" not in listed
    assert client.get("/tasks?queue=no%20spaces").status_code == 400


def test_pause_and_resume_from_the_page_need_a_csrf_token(client: TestClient, tl) -> None:
    tasklib.submit_task_sync(jobs.mark, key="x")
    assert client.post("/queues/default/pause", data={}).status_code == 403
    assert not {q.name: q.paused for q in tasklib.list_queues()}["default"]
    token = csrf(client)
    response = client.post("/queues/default/pause", data={"_csrf_token": token}, follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"].endswith("/queues")
    assert {q.name: q.paused for q in tasklib.list_queues()}["default"]
    assert ">paused<" in client.get("/queues").text and ">Resume<" in client.get("/queues").text
    client.post("/queues/default/resume", data={"_csrf_token": token})
    assert not {q.name: q.paused for q in tasklib.list_queues()}["default"]
    assert client.post("/queues/default/explode", data={"_csrf_token": token}).status_code == 404
    assert client.post("/queues/no%20spaces/pause", data={"_csrf_token": token}).status_code == 400


def test_the_explainer_names_what_holds_a_task_back(client: TestClient, tl) -> None:
    url = tl.database_url
    mail = tasklib.submit_task_sync(queue_jobs.mail, i=1)
    tasklib.pause_queue("emails")
    assert "Its queue `emails` is paused" in client.get(f"/tasks/{mail}").text
    assert '/queues">emails</a>' in client.get(f"/tasks/{mail}").text  # the detail names its queue
    tasklib.resume_queue("emails")
    assert "is paused" not in client.get(f"/tasks/{mail}").text

    limited = definition_for(queue_jobs.limited)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SAVE_LIMITS, limits_params(limited))
    for _ in range(2):
        make_task(url, "running", name=limited.name)
    waiting = tasklib.submit_task_sync(queue_jobs.limited, i=1)
    assert f"{limited.name} is at its concurrency limit (2 running, at most 2)" in client.get(f"/tasks/{waiting}").text

    paced = definition_for(queue_jobs.paced)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SAVE_LIMITS, limits_params(paced))
        later = datetime.now(UTC) + timedelta(seconds=30)
        conn.execute(sql.SET_CLOCK, {"clock": paced.name, "at": later})
    slow = tasklib.submit_task_sync(queue_jobs.paced, i=1)
    assert f"{paced.name} is rate-limited (20/s): next start in" in client.get(f"/tasks/{slow}").text

    tasklib.set_queue_limit("default", 1)
    make_task(url, "running", name=jobs.mark.__tasklib_name__)
    plain = tasklib.submit_task_sync(jobs.mark, key="p")
    held = client.get(f"/tasks/{plain}").text  # (the two limited ones run in this queue too)
    assert "Its queue `default` is at its concurrency limit (3 running, at most 1)" in held


def test_metrics_per_queue(client: TestClient, tl) -> None:
    tasklib.submit_many_sync(queue_jobs.mail, [{"i": i} for i in range(2)])
    tasklib.pause_queue("emails")
    tasklib.set_queue_limit("emails", 4)
    body = client.get("/metrics").text
    assert 'tasklib_queue_tasks{queue="emails",state="pending"} 2' in body
    assert 'tasklib_queue_paused{queue="emails"} 1' in body
    assert 'tasklib_queue_concurrency_limit{queue="emails"} 4' in body
    assert 'tasklib_tasks{state="pending",name="tests.integration.queue_jobs.mail"} 2' in body
