"""Workflows (``depends_on``): waiting children released in their last parent's transaction, results
passed on, the failure rule and its undo, and the races that break a resolver-based design."""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from pathlib import Path

import psycopg
import pytest

import tasklib
from tasklib import sql
from tasklib.db import WRITE_PLANNER_SETTINGS, set_statement
from tasklib.outcome import Action
from tasklib.states import TaskState
from tests.integration import workflow_jobs as wf
from tests.workers import start_worker, stop, task_row, wait_for, workers

APP = "tests.integration.workflow_jobs"
WRITE_SETTINGS = set_statement(WRITE_PLANNER_SETTINGS)


def _state(task_id: uuid.UUID) -> str:
    task = tasklib.get_task(task_id)
    assert task is not None
    return str(task.state)


def _run(url: str, log: Path, count: int = 1):  # type: ignore[no-untyped-def]
    """``count`` workers (concurrency 4) that run the workflow tasks."""
    return workers(url, log, count, "--concurrency", "4", app=APP)


# -- submit ----------------------------------------------------------------------------------------


def test_children_wait_and_unknown_parents_are_refused(tl: tasklib.Config) -> None:
    parent = tasklib.submit_task_sync(wf.value, x=1)
    child = tasklib.submit_task_sync(wf.total, depends_on=[parent, parent])  # a repeated parent counts once
    row = task_row(tl.database_url, child)  # type: ignore[arg-type]
    assert (row["state"], row["waiting_for"], row["parent_ids"]) == ("waiting", 1, [parent])
    assert tasklib.count_by_state()["waiting"] == 1
    assert [t.id for t in tasklib.list_tasks(state="waiting")] == [child]

    missing = uuid.uuid4()
    before = sum(tasklib.count_by_state().values())
    with pytest.raises(tasklib.ValidationError, match=str(missing)):
        tasklib.submit_task_sync(wf.total, depends_on=[parent, missing])
    with pytest.raises(tasklib.ValidationError, match=str(missing)):
        tasklib.submit_many_sync(wf.value, [{"x": 1}, {"x": 2}], depends_on=[missing])
    with pytest.raises(tasklib.ValidationError, match="unique_key"):
        tasklib.submit_task_sync(wf.total, depends_on=[parent], unique_key="k")
    with pytest.raises(tasklib.ValidationError):
        tasklib.submit_task_sync(wf.total, depends_on=["not-a-uuid"])
    assert sum(tasklib.count_by_state().values()) == before  # nothing written


def test_a_parent_that_already_completed_counts_at_once(tl: tasklib.Config, tmp_path: Path) -> None:
    parent = tasklib.submit_task_sync(wf.value, x=7)
    with _run(tl.database_url, tmp_path / "runs.log"):  # type: ignore[arg-type]
        assert wait_for(lambda: _state(parent) == "completed", 30)
        child = tasklib.submit_task_sync(wf.collect, depends_on=[parent])
        assert task_row(tl.database_url, child)["waiting_for"] == 0  # type: ignore[arg-type]
        assert wait_for(lambda: _state(child) == "completed", 30)
    assert tasklib.get_task(child).result == {str(parent): 7}  # type: ignore[union-attr]


# -- running ---------------------------------------------------------------------------------------


def test_chain_and_group_pass_results_on(tl: tasklib.Config, tmp_path: Path) -> None:
    fan = tasklib.group([tasklib.step(wf.value, x=i) for i in range(1, 6)], then=tasklib.step(wf.total))
    steps = tasklib.chain([tasklib.step(wf.value, x=10), tasklib.step(wf.collect), tasklib.step(wf.collect_async)])
    assert fan.then is not None and _state(fan.then) == "waiting" and _state(steps[2]) == "waiting"
    with _run(tl.database_url, tmp_path / "runs.log"):  # type: ignore[arg-type]
        assert wait_for(lambda: _state(fan.then) == "completed" and _state(steps[2]) == "completed", 60)  # type: ignore[arg-type]
    assert tasklib.get_task(fan.then).result == 15  # type: ignore[arg-type,union-attr]
    assert tasklib.get_task(steps[1]).result == {str(steps[0]): 10}  # type: ignore[union-attr]
    assert tasklib.get_task(steps[2]).result == {str(steps[1]): {str(steps[0]): 10}}  # type: ignore[union-attr]
    # No step started before its parent had completed.
    for parent, child in itertools.pairwise(steps):
        assert tasklib.get_task(child).started_at >= tasklib.get_task(parent).completed_at  # type: ignore[union-attr,operator]


def test_a_released_child_keeps_its_own_delay(tl: tasklib.Config, tmp_path: Path) -> None:
    parent = tasklib.submit_task_sync(wf.value, x=1)
    child = tasklib.submit_task_sync(wf.value, x=2, depends_on=[parent], delay_seconds=3)
    with _run(tl.database_url, tmp_path / "runs.log"):  # type: ignore[arg-type]
        assert wait_for(lambda: _state(parent) == "completed", 30)
        assert wait_for(lambda: _state(child) == "pending", 5)
        time.sleep(1)
        assert _state(child) == "pending"  # due at its own time, not at once
        assert wait_for(lambda: _state(child) == "completed", 30)
    row = task_row(tl.database_url, child)  # type: ignore[arg-type]
    assert row["started_at"] >= row["created_at"] + __import__("datetime").timedelta(seconds=3)


# -- failure, cancel, retry ------------------------------------------------------------------------


def test_a_failed_parent_cancels_its_descendants_and_a_retry_resumes_them(tl: tasklib.Config, tmp_path: Path) -> None:
    marker = tmp_path / "fixed"
    parent = tasklib.submit_task_sync(wf.fail_until, marker=str(marker))
    child = tasklib.submit_task_sync(wf.collect, depends_on=[parent])
    grandchild = tasklib.submit_task_sync(wf.collect, depends_on=[child])
    cleanup = tasklib.submit_task_sync(wf.collect, depends_on=[parent], on_parent_failure="run")
    with _run(tl.database_url, tmp_path / "runs.log"):  # type: ignore[arg-type]
        assert wait_for(lambda: _state(parent) == "failed" and _state(cleanup) == "completed", 30)
        assert wait_for(lambda: _state(grandchild) == "cancelled", 10)
        for task_id in (child, grandchild):
            task = tasklib.get_task(task_id)
            assert task is not None and task.state == "cancelled"
            assert task.error == f"ParentFailed: task {parent} failed"  # names the parent and why
        assert tasklib.get_task(cleanup).result == {str(parent): None}  # type: ignore[union-attr]

        marker.touch()  # the fix is deployed: one retry resumes the whole workflow
        tasklib.retry_task(parent)
        assert _state(child) == "waiting" and _state(grandchild) == "waiting"
        assert wait_for(lambda: _state(grandchild) == "completed", 30)
    assert tasklib.get_task(child).result == {str(parent): "fixed"}  # type: ignore[union-attr]
    assert _state(cleanup) == "completed"  # it ran once, and is not run again


def test_cancelling_a_parent_cancels_what_waits_for_it(tl: tasklib.Config) -> None:
    parent = tasklib.submit_task_sync(wf.value, x=1, delay_seconds=3600)
    child = tasklib.submit_task_sync(wf.value, x=2, depends_on=[parent])
    grandchild = tasklib.submit_task_sync(wf.value, x=3, depends_on=[child])
    runs_anyway = tasklib.submit_task_sync(wf.collect, depends_on=[child], on_parent_failure="run")
    tasklib.cancel_task(parent)
    assert [_state(t) for t in (child, grandchild)] == ["cancelled", "cancelled"]
    assert tasklib.get_task(grandchild).error == f"ParentFailed: task {parent} cancelled"  # type: ignore[union-attr]
    assert _state(runs_anyway) == "pending"  # its one parent ended (cancelled), and it runs anyway
    tasklib.cancel_task(runs_anyway)
    late = tasklib.submit_task_sync(wf.value, x=4, depends_on=[parent])  # a parent already cancelled
    assert _state(late) == "cancelled"


def test_prune_keeps_a_parent_while_a_child_waits_for_it(tl: tasklib.Config) -> None:
    with psycopg.connect(tl.database_url, autocommit=True) as conn:  # type: ignore[arg-type]
        old = tasklib.submit_task_sync(wf.value, x=1)
        other = tasklib.submit_task_sync(wf.value, x=2, delay_seconds=3600)
        child = tasklib.submit_task_sync(wf.collect, depends_on=[old, other])
        alone = tasklib.submit_task_sync(wf.value, x=3)
        conn.execute(
            "UPDATE tasks SET state = 'completed', completed_at = now() - interval '30 days' WHERE id = ANY(%s)",
            [[old, alone]],
        )
    assert tasklib.prune(completed_older_than="7d") == 1
    assert tasklib.get_task(old) is not None and tasklib.get_task(alone) is None
    assert _state(child) == "waiting"


# -- the races -------------------------------------------------------------------------------------


def _finish(  # type: ignore[no-untyped-def]
    url: str,
    task_id: uuid.UUID,
    started_at,
    worker_id: str,
    hold: threading.Event | None = None,
    ran: threading.Event | None = None,
) -> None:
    """Record ``task_id`` completed as a worker does (FINISH_MANY; its children settle in the same
    transaction through the table's trigger); with ``hold``, keep the transaction open until it is set,
    and set ``ran`` once its statement ran (its locks are held from then on)."""
    done = Action(TaskState.COMPLETED, 0, result_json="1")
    params = sql.outcome_params([(task_id, started_at, done)], worker_id)
    with psycopg.connect(url) as conn:
        conn.execute(WRITE_SETTINGS)  # as the worker's write connection (bitmap scans off)
        assert conn.execute(sql.FINISH_MANY, params).fetchall()
        if ran is not None:
            ran.set()
        if hold is not None:
            hold.wait(10)
        conn.commit()


def _claim_all(url: str, worker_id: str) -> dict[uuid.UUID, object]:
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "UPDATE tasks SET state = 'running', worker_id = %s, started_at = now(),"
            " locked_until = now() + interval '1 hour' WHERE state = 'pending' RETURNING id, started_at",
            [worker_id],
        ).fetchall()
    return dict(rows)


def test_two_parents_ending_at_once_release_their_child_exactly_once(tl: tasklib.Config) -> None:
    """The second parent's end waits on the child's row, then counts from the first one's result."""
    url = tl.database_url
    assert url is not None
    first, second = tasklib.submit_task_sync(wf.value, x=1), tasklib.submit_task_sync(wf.value, x=2)
    child = tasklib.submit_task_sync(wf.collect, depends_on=[first, second])
    claims = _claim_all(url, "w")
    hold, ran = threading.Event(), threading.Event()
    one = threading.Thread(target=_finish, args=(url, first, claims[first], "w", hold, ran))
    one.start()
    assert ran.wait(10)  # the first end has updated the child and holds its row
    assert wait_for(lambda: task_row(url, child)["waiting_for"] == 2, 5)  # first's end is not committed
    two = threading.Thread(target=_finish, args=(url, second, claims[second], "w"))
    two.start()
    time.sleep(0.3)  # the second end now waits on the child's row
    assert two.is_alive()
    hold.set()
    one.join(10)
    two.join(10)
    row = task_row(url, child)
    assert (row["state"], row["waiting_for"]) == ("pending", 0)


def test_a_child_counts_down_one_parent_at_a_time(tl: tasklib.Config) -> None:
    url = tl.database_url
    assert url is not None
    first, second = tasklib.submit_task_sync(wf.value, x=1), tasklib.submit_task_sync(wf.value, x=2)
    child = tasklib.submit_task_sync(wf.collect, depends_on=[first, second])
    claims = _claim_all(url, "w")
    _finish(url, first, claims[first], "w")
    row = task_row(url, child)
    assert (row["state"], row["waiting_for"]) == ("waiting", 1)
    _finish(url, second, claims[second], "w")
    row = task_row(url, child)
    assert (row["state"], row["waiting_for"]) == ("pending", 0)


def test_a_child_submitted_while_its_parent_ends_never_waits_forever(tl: tasklib.Config) -> None:
    """Both orders: the end commits first (the submit waits on its FOR SHARE lock, then reads the
    parent as ended), or the submit commits first (the end waits, and its SETTLE then sees it)."""
    url = tl.database_url
    assert url is not None
    # 1. The parent's end is open when the child is submitted.
    parent = tasklib.submit_task_sync(wf.value, x=1)
    claims = _claim_all(url, "w")
    hold, ran = threading.Event(), threading.Event()
    ending = threading.Thread(target=_finish, args=(url, parent, claims[parent], "w", hold, ran))
    ending.start()
    assert ran.wait(10)  # the end holds the parent's row
    submitted: list[uuid.UUID] = []
    submit = threading.Thread(target=lambda: submitted.append(tasklib.submit_task_sync(wf.collect, depends_on=[parent])))
    submit.start()
    time.sleep(0.3)
    assert submit.is_alive()  # waiting for the parent's row
    hold.set()
    ending.join(10)
    submit.join(10)
    assert _state(submitted[0]) == "pending"

    # 2. The child's submit is open (the application's own transaction) when the parent ends.
    parent = tasklib.submit_task_sync(wf.value, x=2)
    claims = _claim_all(url, "w")
    with psycopg.connect(url) as app:
        child = tasklib.submit_task_in(app, wf.collect, depends_on=[parent])
        ending = threading.Thread(target=_finish, args=(url, parent, claims[parent], "w"))
        ending.start()
        time.sleep(0.3)
        assert ending.is_alive()  # the end waits for the submit's lock on the parent
        app.commit()
    ending.join(10)
    assert _state(child) == "pending"


def test_parent_and_child_in_one_transaction_are_both_or_neither(tl: tasklib.Config, tmp_path: Path) -> None:
    url = tl.database_url
    assert url is not None
    with psycopg.connect(url) as app:
        parent = tasklib.submit_task_in(app, wf.value, x=5)
        child = tasklib.submit_task_in(app, wf.collect, depends_on=[parent])
        app.rollback()
    assert tasklib.get_task(parent) is None and tasklib.get_task(child) is None
    with psycopg.connect(url) as app:
        ids = tasklib.chain([tasklib.step(wf.value, x=5), tasklib.step(wf.collect)], in_tx=app)
        app.commit()
    with _run(url, tmp_path / "runs.log"):
        assert wait_for(lambda: _state(ids[1]) == "completed", 30)
    assert tasklib.get_task(ids[1]).result == {str(ids[0]): 5}  # type: ignore[union-attr]


def test_a_killed_worker_s_parent_releases_its_child_through_the_rescue(tl: tasklib.Config, tmp_path: Path) -> None:
    """The parent's worker dies mid-run: the rescue retries it and its end releases the child, as a
    normal end would; a parent with no retry left fails through the rescue and cancels its child."""
    url = tl.database_url
    assert url is not None
    log = tmp_path / "runs.log"
    parent = tasklib.submit_task_sync(wf.mark, key="slow", sleep=3)
    child = tasklib.submit_task_sync(wf.collect, depends_on=[parent])
    last_try = tasklib.submit_task_sync(wf.mark, key="doomed", sleep=3, max_retries=0)
    doomed_child = tasklib.submit_task_sync(wf.collect, depends_on=[last_try])
    victim = start_worker(url, log, "--concurrency", "4", app=APP)
    try:
        assert wait_for(lambda: _state(parent) == "running" and _state(last_try) == "running", 30)
    finally:
        stop(victim, sig=9)
    with _run(url, log):
        assert wait_for(lambda: _state(child) == "completed", 60)
        assert wait_for(lambda: _state(doomed_child) == "cancelled", 30)
    assert tasklib.get_task(child).result == {str(parent): "slow"}  # type: ignore[union-attr]
    assert _state(last_try) == "failed"


@pytest.mark.parametrize("pairs", [300])
def test_many_two_parent_joins_across_three_workers(tl: tasklib.Config, tmp_path: Path, pairs: int) -> None:
    """Real workers: 300 children of two parents each, the parents claimed side by side by three
    workers; every child runs once, none is left waiting."""
    url = tl.database_url
    assert url is not None
    parents = tasklib.submit_many_sync(wf.value, [{"x": i} for i in range(2 * pairs)], delay_seconds=2)
    children = [tasklib.submit_task_sync(wf.total, depends_on=[parents[2 * i], parents[2 * i + 1]]) for i in range(pairs)]
    with _run(url, tmp_path / "runs.log", 3):
        assert wait_for(lambda: tasklib.count_by_state()["completed"] == 3 * pairs, 90)
    assert tasklib.count_by_state()["waiting"] == 0
    with psycopg.connect(url) as conn:
        totals = conn.execute("SELECT result FROM tasks WHERE id = ANY(%s) ORDER BY created_at", [children]).fetchall()
        early = conn.execute(
            "SELECT count(*) FROM tasks AS c JOIN tasks AS p ON p.id = ANY(c.parent_ids)"
            " WHERE c.id = ANY(%s) AND c.started_at < p.completed_at",
            [children],
        ).fetchone()
    assert [r[0] for r in totals] == [4 * i + 1 for i in range(pairs)]
    assert early == (0,)  # no child started before both its parents had ended
    runs = [line for line in (tmp_path / "runs.log").read_text().splitlines() if line.startswith("total ")]
    assert len(runs) == pairs  # each child ran once


def test_children_submitted_while_their_parents_run_and_end_all_run(tl: tasklib.Config, tmp_path: Path) -> None:
    """The submit race with real workers, 200 times: each child is submitted right after its parent,
    while a worker claims, runs and records the parent."""
    url = tl.database_url
    assert url is not None
    children = []
    with _run(url, tmp_path / "runs.log", 3):
        for i in range(200):
            parent = tasklib.submit_task_sync(wf.value, x=i)
            children.append(tasklib.submit_task_sync(wf.collect, depends_on=[parent]))
        assert wait_for(lambda: tasklib.count_by_state()["completed"] == 400, 60), tasklib.count_by_state()
    assert tasklib.count_by_state()["waiting"] == 0
