"""--log-format json: every line the worker and the dashboard print is one JSON object."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import tasklib
from tests.integration import jobs
from tests.net import free_port, wait_healthy
from tests.workers import ROOT, start_worker, stop, wait_for


def _objects(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]  # fails on any non-JSON line


def test_worker_logs_one_json_object_per_line(tl: tasklib.Config, tmp_path: Path) -> None:
    ok = tasklib.submit_task_sync(jobs.mark, key="fine", queue="special")
    bad = tasklib.submit_task_sync(jobs.hard_exit, code=3, max_retries=0)
    log = tmp_path / "runs.log"
    proc = start_worker(
        tl.database_url,
        log,
        "--log-format",
        "json",
        "--worker-id",
        "json-worker",
        "--queue",
        "default",
        "--queue",
        "special",
    )
    try:
        assert wait_for(lambda: all(tasklib.get_task(t).state in ("completed", "failed") for t in (ok, bad)), 30)  # type: ignore[union-attr]
        time.sleep(0.3)
    finally:
        stop(proc)
    lines = _objects("".join(p.read_text() for p in tmp_path.glob("runs.*.out")))
    assert all({"time", "level", "logger", "event", "message"} <= set(line) for line in lines)
    done = next(line for line in lines if line["event"] == "task.completed")
    assert done["task_id"] == str(ok) and done["task_name"] == "tests.integration.jobs.mark"
    assert done["outcome"] == "completed" and done["duration_ms"] >= 0 and done["attempt"] == 1
    assert done["queue"] == "special"
    assert any(line["event"] == "task.started" and line.get("queue") == "special" for line in lines)
    assert any(line["event"] == "task.started" and line["task_id"] == str(bad) for line in lines)
    died = next(line for line in lines if line["event"] == "child.died")
    assert died["task_id"] == str(bad) and died["level"] == "error"
    assert any(line["event"] == "worker.started" and line["worker_id"] == "json-worker" for line in lines)
    assert lines[0]["time"].endswith("+00:00")


def test_dashboard_logs_json_too(tl: tasklib.Config, tmp_path: Path) -> None:
    port = free_port()
    out = tmp_path / "dash.out"
    argv = [sys.executable, "-m", "tasklib.cli", "dashboard", "--port", str(port), "--log-format", "json"]
    proc = subprocess.Popen(
        [*argv, "--database-url", tl.database_url or ""], cwd=ROOT, stdout=out.open("wb"), stderr=subprocess.STDOUT
    )
    try:
        wait_healthy(f"http://127.0.0.1:{port}")
    finally:
        proc.terminate()
        proc.wait(15)
    lines = _objects(out.read_text())
    assert any("dashboard on http://127.0.0.1" in line["message"] for line in lines), lines


def test_worker_warns_when_autovacuum_will_not_clean_the_table(tl: tasklib.Config, tmp_path: Path) -> None:
    """Every task leaves two dead row versions; a worker says so at start when nothing will remove them."""
    import psycopg

    with psycopg.connect(tl.database_url or "", autocommit=True) as conn:
        conn.execute("ALTER TABLE tasks SET (autovacuum_enabled = off)")
    done = tasklib.submit_task_sync(jobs.mark, key="after-warning")
    proc = start_worker(tl.database_url, tmp_path / "runs.log", "--log-format", "json")
    try:
        assert wait_for(lambda: tasklib.get_task(done).state == "completed", 30)  # type: ignore[union-attr]
    finally:
        stop(proc)
    lines = _objects("".join(p.read_text() for p in tmp_path.glob("runs.*.out")))
    warning = next(line for line in lines if line["event"] == "worker.autovacuum_off")
    assert warning["level"] == "warning" and "tasks table (autovacuum_enabled)" in warning["message"]

    with psycopg.connect(tl.database_url or "", autocommit=True) as conn:
        conn.execute("ALTER TABLE tasks RESET (autovacuum_enabled)")
        server_on = conn.execute("SELECT current_setting('autovacuum')::boolean").fetchone()[0]  # type: ignore[index]
    for old in tmp_path.glob("runs.*.out"):
        old.unlink()
    proc = start_worker(tl.database_url, tmp_path / "runs.log", "--log-format", "json")
    try:
        assert wait_for(lambda: any("worker.started" in p.read_text() for p in tmp_path.glob("runs.*.out")), 30)
    finally:
        stop(proc)
    lines = _objects("".join(p.read_text() for p in tmp_path.glob("runs.*.out")))
    said = [line["message"] for line in lines if line["event"] == "worker.autovacuum_off"]
    # With the table's option reset, only the server's switch can still be reported.
    assert all("tasks table" not in message for message in said)
    assert bool(said) == (not server_on)
