"""Unique tasks: one pending or running task per key, decided by the database under concurrency."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import psycopg
import pytest

import tasklib
from tests.factory import make_task
from tests.integration import jobs
from tests.workers import ROOT


def rows_with_key(url: str, key: str) -> list[tuple[str, str]]:
    with psycopg.connect(url) as conn:
        return [
            (str(r[0]), r[1])
            for r in conn.execute("SELECT id, state FROM tasks WHERE unique_key = %s ORDER BY created_at", [key])
        ]


def test_a_held_key_returns_the_holder_and_a_finished_one_is_free_again(tl: tasklib.Config, database_url: str) -> None:
    first = tasklib.submit_task_sync(jobs.mark, key="a", unique_key="invoice:42")
    again = asyncio.run(tasklib.submit_task(jobs.mark, key="b", unique_key="invoice:42"))
    assert again == first and len(rows_with_key(database_url, "invoice:42")) == 1
    assert tasklib.get_task(first).kwargs == {"key": "a"}  # type: ignore[union-attr]
    other = tasklib.submit_task_sync(jobs.mark, key="c", unique_key="invoice:43")
    assert other != first

    with psycopg.connect(database_url) as conn:  # the holder runs: still held
        conn.execute("UPDATE tasks SET state = 'running', worker_id = 'w', locked_until = now() WHERE id = %s", [first])
    assert tasklib.submit_task_sync(jobs.mark, key="d", unique_key="invoice:42") == first
    with psycopg.connect(database_url) as conn:  # ... and finishes: the key is free
        finish = "UPDATE tasks SET state = 'completed', locked_until = NULL, completed_at = now() WHERE id = %s"
        conn.execute(finish, [first])
    fresh = tasklib.submit_task_sync(jobs.mark, key="e", unique_key="invoice:42")
    assert fresh != first
    assert rows_with_key(database_url, "invoice:42") == [(str(first), "completed"), (str(fresh), "pending")]


def test_retry_is_refused_while_another_task_holds_the_key(tl: tasklib.Config, database_url: str) -> None:
    failed = make_task(database_url, "failed", name=jobs.mark.__tasklib_name__, unique_key="k")  # type: ignore[attr-defined]
    holder = tasklib.submit_task_sync(jobs.mark, key="x", unique_key="k")
    assert holder != failed
    with pytest.raises(tasklib.InvalidTransition, match="holds its unique_key 'k'"):
        tasklib.retry_task(failed)
    tasklib.cancel_task(holder)
    assert tasklib.retry_task(failed).state == "pending"


def test_submit_many_takes_a_key_per_item(tl: tasklib.Config, database_url: str) -> None:
    held = tasklib.submit_task_sync(jobs.mark, key="held", unique_key="k1")
    ids = tasklib.submit_many_sync(
        jobs.mark,
        [
            {"key": "one", "unique_key": "k1"},  # held before: the holder's id
            {"key": "two", "unique_key": "k2"},  # new
            {"key": "three", "unique_key": "k2"},  # repeated in the batch: the first item wins
            {"key": "four"},  # no key
        ],
    )
    assert ids[0] == held and ids[1] == ids[2] and len(set(ids)) == 3
    assert tasklib.get_task(ids[1]).kwargs == {"key": "two"}  # type: ignore[union-attr]
    assert tasklib.count_by_state()["pending"] == 3
    with pytest.raises(tasklib.ValidationError, match="per item"):
        tasklib.submit_many_sync(jobs.mark, [{"key": "x"}], unique_key="k3")


@pytest.mark.parametrize("key", ["", "tasklib.slot:x:1", "a" * 501, 42])
def test_bad_keys_are_refused_before_anything_is_written(tl: tasklib.Config, key: object) -> None:
    with pytest.raises(tasklib.ValidationError, match="unique_key"):
        tasklib.submit_task_sync(jobs.mark, key="x", unique_key=key)
    with pytest.raises(tasklib.ValidationError, match="unique_key"):
        tasklib.submit_many_sync(jobs.mark, [{"key": "x", "unique_key": key}])
    assert sum(tasklib.count_by_state().values()) == 0


def _submit_in_thread(key: str, result: list[uuid.UUID]) -> threading.Thread:
    async def submit() -> None:
        result.append(await tasklib.submit_task(jobs.mark, key="outside", unique_key=key))

    thread = threading.Thread(target=lambda: asyncio.run(submit()))
    thread.start()
    return thread


def test_a_transactional_holder_makes_others_wait_then_answers_with_its_id(tl: tasklib.Config, database_url: str) -> None:
    """An uncommitted holder: a second submit waits for it, then returns its id (commit) or inserts (rollback)."""
    for outcome in ("commit", "rollback"):
        key = f"tx-{outcome}"
        result: list[uuid.UUID] = []
        with psycopg.connect(database_url) as tx:
            held = tasklib.submit_task_in(tx, jobs.mark, key="in-tx", unique_key=key)
            thread = _submit_in_thread(key, result)
            thread.join(0.5)
            assert thread.is_alive(), "the second submit must wait for the open transaction"
            tx.commit() if outcome == "commit" else tx.rollback()
            thread.join(10)
        rows = rows_with_key(database_url, key)
        assert len(rows) == 1
        if outcome == "commit":
            assert result == [held] and rows[0][0] == str(held)
        else:
            assert result[0] != held and rows[0][0] == str(result[0])


SUBMITTER = textwrap.dedent(
    """
    import sys, psycopg, tasklib
    from tests.integration import jobs

    url, form, barrier_path = sys.argv[1], sys.argv[2], sys.argv[3]
    tasklib.init(tasklib.Config(database_url=url))
    import os, time
    while not os.path.exists(barrier_path):  # start together
        time.sleep(0.001)
    if form == "tx":
        with psycopg.connect(url) as tx:
            print(tasklib.submit_task_in(tx, jobs.mark, key=form, unique_key="race"))
    elif form == "many":
        print(tasklib.submit_many_sync(jobs.mark, [{"key": form, "unique_key": "race"}])[0])
    else:
        print(tasklib.submit_task_sync(jobs.mark, key=form, unique_key="race"))
    """
)


def test_twenty_concurrent_submitters_make_one_row(tl: tasklib.Config, database_url: str, tmp_path: Path) -> None:
    """20 processes (plain, transactional and bulk submits) race for one key: one row, one id for all."""
    script = tmp_path / "submitter.py"
    script.write_text(SUBMITTER)
    barrier = tmp_path / "go"
    forms = ["sync", "tx", "many", "tx"] * 5
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), database_url, form, str(barrier)],
            cwd=ROOT,
            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for form in forms
    ]
    time.sleep(3)  # every process imported and connected
    barrier.touch()
    outputs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outputs if err][:2]
    ids = {out.strip() for out, _ in outputs}
    rows = rows_with_key(database_url, "race")
    assert len(rows) == 1 and ids == {rows[0][0]}
