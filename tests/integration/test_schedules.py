"""Recurring tasks with real worker processes: one row per slot, skewed clocks, catch-up, unscheduling."""

from __future__ import annotations

import glob
import itertools
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

import tasklib
from tasklib.schedules import slot_time
from tests.workers import read_log, start_worker, stop, wait_for

APP = "tests.integration.recurring_jobs"
TICK = f"{APP}.tick"
FAKETIME = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))


def slot_rows(url: str) -> list[tuple[str, str, float | None]]:
    """(unique_key, state, start delay in seconds) of every slot row, oldest slot first."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT unique_key, state, extract(epoch FROM started_at - scheduled_at) FROM tasks WHERE name = %s",
            [TICK],
        ).fetchall()
    return sorted(((k, s, None if d is None else float(d)) for k, s, d in rows), key=lambda r: slot_time(r[0]))  # type: ignore[arg-type, return-value]


def run_schedulers(
    url: str,
    log: Path,
    seconds: float,
    envs: list[dict[str, str]],
    from_first_slot: bool = False,
    until: Callable[[], bool] | None = None,
) -> None:
    """Run workers for ``seconds``; with ``from_first_slot``, counted from the first slot row they
    write (a worker takes 2 s or more to start on a loaded machine, and a window that began at the
    start would hold one slot fewer, depending on where in its second the scheduler began); then,
    with ``until``, until that holds too (its children may start later still)."""
    before = len(slot_rows(url))
    procs = [start_worker(url, log, app=APP, env=env) for env in envs]
    try:
        if from_first_slot:
            assert wait_for(lambda: len(slot_rows(url)) > before, timeout=30)
        time.sleep(seconds)
        if until is not None:
            assert wait_for(until, timeout=30)
    finally:
        for proc in procs:
            stop(proc)


def executions(log: Path) -> int:
    return sum(1 for line in read_log(log) if line[:1] == ["tick"])


def check_one_row_and_one_run_per_slot(url: str, log: Path, window: float) -> list[tuple[str, str, float | None]]:
    rows = slot_rows(url)
    keys = Counter(key for key, _, _ in rows)
    assert all(n == 1 for n in keys.values())
    slots = [slot_time(key) for key, _, _ in rows]
    assert all((b - a).total_seconds() == 1 for a, b in itertools.pairwise(slots)), "a slot was skipped"  # type: ignore[operator]
    done = [r for r in rows if r[1] == "completed"]
    runs = executions(log)
    print(f"{runs} runs in {window:.0f} s over {len(rows)} slot rows")
    assert runs == len(done), "a slot ran twice (or ran without its row completing)"
    assert window - 1 <= runs <= window + 1
    return rows


def test_three_workers_make_one_row_per_slot(tl: tasklib.Config, database_url: str, tmp_path: Path) -> None:
    log = tmp_path / "log"
    run_schedulers(database_url, log, 10.0, [{}, {}, {}], from_first_slot=True)  # 10 s of scheduling once up
    rows = check_one_row_and_one_run_per_slot(database_url, log, 10)
    delays = sorted(d for _, s, d in rows if d is not None)
    assert delays[len(delays) // 2] < 0.5, f"slots start late: {delays}"  # woken at the slot, not at the next poll


@pytest.mark.skipif(not FAKETIME, reason="needs Debian's libfaketime (make systools installs it) to skew worker clocks")
def test_worker_clocks_two_seconds_apart_change_nothing(tl: tasklib.Config, database_url: str, tmp_path: Path) -> None:
    log = tmp_path / "log"
    skews = [{"LD_PRELOAD": FAKETIME[0], "FAKETIME": offset} for offset in ("+2s", "-2s")]
    probe = tmp_path / "probe"
    run_schedulers(database_url, probe, 0.1, skews[:1])  # the injection works: that worker's clock is ahead
    run_schedulers(database_url, log, 10.0, [*skews, {}], from_first_slot=True)
    rows = check_one_row_and_one_run_per_slot(database_url, log, 10)
    delays = sorted(d for _, s, d in rows if d is not None)
    assert delays[len(delays) // 2] < 0.5 and min(delays) >= 0, f"skew moved the runs: {delays}"


def test_skewed_clock_is_really_skewed(tmp_path: Path) -> None:
    """Guard for the test above: libfaketime shifts a child Python's wall clock as configured."""
    if not FAKETIME:
        pytest.skip("needs Debian's libfaketime")
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", "import time; print(time.time())"],
        env={"LD_PRELOAD": FAKETIME[0], "FAKETIME": "+2s"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert 1.5 < float(out.stdout) - time.time() < 3


@pytest.mark.parametrize("catch_up", [False, True])
def test_slots_missed_while_no_worker_ran(tl: tasklib.Config, database_url: str, tmp_path: Path, catch_up: bool) -> None:
    """Period 2 s: schedule, stop every worker for 9 s, start again. The slot queued before the stop
    runs late either way (it is a row); of the slots that fell due with no worker, none gets a row
    (default) or only the most recent one (catch_up=True): the one row created after its own slot."""
    env = {"TASKLIB_TEST_EVERY": "2", "TASKLIB_TEST_CATCH_UP": "1" if catch_up else "0"}
    log = tmp_path / "log"
    run_schedulers(database_url, log, 3, [env], from_first_slot=True)
    queued = slot_rows(database_url)[-1]
    assert queued[1] == "pending"
    time.sleep(9)

    def due_slots_ran() -> bool:  # the queued one and, with catch_up, the missed one it queued
        due = datetime.now(UTC) - timedelta(seconds=1)
        return all(state == "completed" for key, state, _ in slot_rows(database_url) if slot_time(key) <= due)  # type: ignore[operator]

    run_schedulers(database_url, log, 3, [env], from_first_slot=True, until=due_slots_ran)
    with psycopg.connect(database_url) as conn:
        late_rows = conn.execute(
            """SELECT unique_key, state FROM tasks
               WHERE name = %s AND created_at > scheduled_at AND scheduled_at > (
                   SELECT scheduled_at FROM tasks WHERE unique_key = %s)""",
            [TICK, queued[0]],
        ).fetchall()
        queued_delay = conn.execute(
            "SELECT state, extract(epoch FROM started_at - scheduled_at) FROM tasks WHERE unique_key = %s", [queued[0]]
        ).fetchone()
    assert len(late_rows) == (1 if catch_up else 0), late_rows
    assert all(state == "completed" for _, state in late_rows)
    assert queued_delay is not None and queued_delay[0] == "completed" and queued_delay[1] > 5  # ran late, once


def test_without_the_decorator_nothing_new_is_scheduled(tl: tasklib.Config, database_url: str, tmp_path: Path) -> None:
    log = tmp_path / "log"
    run_schedulers(database_url, log, 2.5, [{}], from_first_slot=True)
    rows = slot_rows(database_url)
    pending = [key for key, state, _ in rows if state == "pending"]
    assert len(pending) == 1
    plain = start_worker(database_url, log)  # a worker whose app has no recurring task
    try:
        time.sleep(2.5)
        assert slot_rows(database_url) == rows  # nothing scheduled, the queued slot waits (nobody runs tick)
    finally:
        stop(plain)
    with psycopg.connect(database_url) as conn:
        task_id = conn.execute("SELECT id FROM tasks WHERE unique_key = %s", [pending[0]]).fetchone()[0]  # type: ignore[index]
    assert tasklib.cancel_task(task_id).state == "cancelled"
