"""The framework examples under examples/, each driven the way its users would."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import tasklib
from tests.workers import start_worker, stop, wait_for


def test_fastapi_submits_from_a_handler_and_mounts_the_dashboard_under_a_prefix(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastapi.testclient import TestClient

    monkeypatch.setenv("TASKLIB_DATABASE_URL", database_url)
    import importlib

    import examples.fastapi_app.main as main

    main = importlib.reload(main)  # its Config reads the environment at import
    worker = start_worker(database_url, tmp_path / "log", app="examples.fastapi_app.tasks")
    try:
        with TestClient(main.app) as client:
            created = client.post("/signup", params={"email": "a@example.com", "name": "Ada"})
            assert created.status_code == 200, created.text
            task_id = created.json()["task_id"]
            assert client.post("/signup", params={"name": "no email"}).status_code == 422
            assert wait_for(lambda: client.get(f"/signup/{task_id}").json()["state"] == "completed", timeout=20)
            assert client.get(f"/signup/{task_id}").json()["result"] == "Welcome, Ada! (sent to a@example.com)"

            page = client.get("/tasklib/tasks")
            assert page.status_code == 200 and task_id in page.text
            links = re.findall(r'(?:href|action|hx-get|src)="(/[^"]*)"', page.text)
            assert links and all(link.startswith("/tasklib/") for link in links), [
                x for x in links if not x.startswith("/tasklib/")
            ]
            for link in {link.split("?")[0] for link in links if "{" not in link}:
                if "/cancel" not in link and "/retry" not in link and "/bulk/" not in link:
                    assert client.get(link).status_code in (200, 204), link
            poll = re.search(r'hx-get="(/tasklib/partials/tasks[^"]*)"', page.text)
            assert poll and client.get(poll.group(1).replace("&amp;", "&")).status_code in (200, 204)

            later = tasklib.submit_task_sync(
                "examples.fastapi_app.tasks.send_welcome", email="b@example.com", delay_seconds=600
            )
            token = client.cookies.get("csrftoken")
            cancelled = client.post(f"/tasklib/tasks/{later}/cancel", data={"_csrf_token": token}, follow_redirects=False)
            assert cancelled.status_code == 303 and cancelled.headers["location"] == f"/tasklib/tasks/{later}"
            assert tasklib.get_task(later).state == "cancelled"  # type: ignore[union-attr]
    finally:
        stop(worker)


def test_flask_submits_in_the_sqlalchemy_session_transaction(database_url: str, tmp_path: Path) -> None:
    import psycopg

    from examples.flask_app.app import create

    client = create(database_url).test_client()
    worker = start_worker(database_url, tmp_path / "log", app="examples.flask_app.tasks")
    try:
        placed = client.post("/orders?item=book")
        assert placed.status_code == 200, placed.text
        task_id = placed.json["task_id"]  # type: ignore[index]
        declined = client.post("/orders?item=lamp&fail=1")
        assert declined.status_code == 402
        assert wait_for(lambda: tasklib.get_task(task_id).state == "completed", timeout=20)  # type: ignore[union-attr]
        assert tasklib.get_task(task_id).result == f"order {placed.json['order_id']} shipped"  # type: ignore[index, union-attr]
    finally:
        stop(worker)
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT item FROM orders").fetchall() == [("book",)]  # the declined order rolled back…
        assert conn.execute("SELECT count(*) FROM tasks").fetchone() == (1,)  # …and its task with it


DJANGO_CLIENT = """
import json, os, sys
sys.path.insert(0, os.getcwd())
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "examples.django_app.project.settings")
import django
django.setup()
from django.test import Client
client = Client()
ok = client.post("/orders?item=book")
declined = client.post("/orders?item=lamp&fail=1")
print(json.dumps({"ok": ok.status_code, "ok_body": ok.json(), "declined": declined.status_code}))
"""


def test_django_submits_inside_atomic_and_runs_its_worker_command(database_url: str, tmp_path: Path) -> None:
    import json
    import os
    import subprocess
    import sys

    import psycopg

    from tests.workers import ROOT

    env = {
        **os.environ,
        "TASKLIB_DATABASE_URL": database_url,
        "PYTHONPATH": str(ROOT),
        "TASKLIB_TEST_LOG": str(tmp_path / "log"),
    }
    manage = [sys.executable, "examples/django_app/manage.py"]
    migrated = subprocess.run(
        [*manage, "migrate", "--noinput"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert migrated.returncode == 0, migrated.stderr[-2000:]
    tasklib.init(tasklib.Config(database_url=database_url))
    worker = subprocess.Popen(
        [*manage, "tasklib_worker", "--concurrency", "1"],
        cwd=ROOT,
        env=env,
        start_new_session=True,
        stdout=open(tmp_path / "worker.out", "wb"),  # noqa: SIM115 (the worker process writes it until stopped)
        stderr=subprocess.STDOUT,
    )
    try:
        driven = subprocess.run(
            [sys.executable, "-c", DJANGO_CLIENT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
        )
        assert driven.returncode == 0, driven.stderr[-2000:]
        result = json.loads(driven.stdout.strip().splitlines()[-1])
        assert result["ok"] == 200 and result["declined"] == 402
        task_id = result["ok_body"]["task_id"]
        assert wait_for(lambda: tasklib.get_task(task_id).state == "completed", timeout=30), (
            tmp_path / "worker.out"
        ).read_text()  # type: ignore[union-attr]
        assert tasklib.get_task(task_id).result == f"order {result['ok_body']['order_id']} shipped"  # type: ignore[union-attr]
    finally:
        stop(worker)
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT item FROM shop_order").fetchall() == [("book",)]
        assert conn.execute("SELECT count(*) FROM tasks").fetchone() == (1,)
