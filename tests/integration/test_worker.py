"""The worker as users run it: real ``tasklib worker`` processes against a real PostgreSQL."""

from __future__ import annotations

import collections
import itertools
import os
import signal
import time
from pathlib import Path

import psycopg
import pytest

import tasklib
from tests.integration import jobs
from tests.workers import (
    all_done,
    await_for,
    live_workers,
    read_log,
    start_worker,
    started,
    states,
    stop,
    task_row,
    wait_for,
    workers,
)


def test_three_workers_run_every_task_exactly_once(tl, tmp_path: Path) -> None:
    log = tmp_path / "runs.log"
    with workers(tl.database_url, log, 3, "--concurrency", "2"):
        assert wait_for(lambda: live_workers(tl.database_url) == 3, timeout=30)
        time.sleep(1)  # let every worker's children report ready, so all three compete from the start
        tasklib.submit_many_sync(jobs.mark, [{"key": f"k{i}", "sleep": 0.01} for i in range(600)])
        assert wait_for(lambda: all_done(tl.database_url, 600), timeout=90)
    done = [line[1] for line in read_log(log) if line[0] == "done"]
    assert len(done) == 600 and len(set(done)) == 600  # exactly once
    with psycopg.connect(tl.database_url) as conn:
        per_worker = conn.execute("SELECT worker_id, count(*) FROM tasks GROUP BY worker_id").fetchall()
    assert len(per_worker) == 3, per_worker  # work is spread over the workers
    assert min(n for _, n in per_worker) >= 60, per_worker  # each did at least a tenth


def test_timeout_kills_the_code_and_worker_goes_on(tl, tmp_path: Path) -> None:
    log = tmp_path / "runs.log"
    slow = tasklib.submit_task_sync(jobs.mark, key="slow", sleep=4, timeout_seconds=1, max_retries=0)
    with workers(tl.database_url, log, 1):
        assert wait_for(started(log, "slow"), timeout=20)
        began = time.monotonic()
        assert wait_for(lambda: task_row(tl.database_url, slow)["state"] == "failed", timeout=10)
        assert time.monotonic() - began < 2.5
        after = tasklib.submit_task_sync(jobs.mark, key="after")
        assert wait_for(lambda: task_row(tl.database_url, after)["state"] == "completed", timeout=10)
        time.sleep(3.5)  # past the moment the killed sleep would have ended
    row = task_row(tl.database_url, slow)
    assert "TimeoutError" in row["error"] and "1 s" in row["error"]
    assert ["done", "slow"] not in [line[:2] for line in read_log(log)]


def test_timeout_is_retried_per_policy(tl, tmp_path: Path) -> None:
    log = tmp_path / "runs.log"
    task_id = tasklib.submit_task_sync(jobs.mark, key="t", sleep=5, timeout_seconds=1, max_retries=1)
    with workers(tl.database_url, log, 1):
        assert wait_for(lambda: task_row(tl.database_url, task_id)["state"] == "failed", timeout=15)
    assert task_row(tl.database_url, task_id)["retry_count"] == 1
    assert [line[1] for line in read_log(log) if line[0] == "start"] == ["t", "t"]


def test_child_that_exits_fails_its_task_and_worker_survives(tl, tmp_path: Path) -> None:
    log = tmp_path / "runs.log"
    dead = tasklib.submit_task_sync(jobs.hard_exit, code=1, max_retries=0)
    with workers(tl.database_url, log, 1):
        assert wait_for(lambda: task_row(tl.database_url, dead)["state"] == "failed", timeout=20)
        ok = tasklib.submit_task_sync(jobs.mark, key="fine")
        assert wait_for(lambda: task_row(tl.database_url, ok)["state"] == "completed", timeout=10)
    assert "exited with code 1" in task_row(tl.database_url, dead)["error"]


def test_unstorable_result_fails_clearly(tl, tmp_path: Path) -> None:
    task_id = tasklib.submit_task_sync(jobs.unstorable, max_retries=0)
    with workers(tl.database_url, tmp_path / "runs.log", 1):
        assert wait_for(lambda: task_row(tl.database_url, task_id)["state"] == "failed", timeout=20)
    assert "cannot be stored as JSON" in task_row(tl.database_url, task_id)["error"]


def test_rich_arguments_round_trip_into_annotated_types(tl, tmp_path: Path) -> None:
    import datetime
    import decimal
    import uuid

    task_id = tasklib.submit_task_sync(
        jobs.rich,
        when=datetime.datetime(2026, 1, 2, tzinfo=datetime.UTC),
        ident=uuid.UUID(int=5),
        amount=decimal.Decimal("1.50"),
        color=jobs.Color.RED,
        point=jobs.Point(x=3, y=4),
    )
    with workers(tl.database_url, tmp_path / "runs.log", 1):
        assert wait_for(lambda: task_row(tl.database_url, task_id)["state"] in ("completed", "failed"), timeout=20)
    row = task_row(tl.database_url, task_id)
    assert row["state"] == "completed", row["error"]
    assert row["result"] == {
        "when": "2026-01-02T00:00:00Z",
        "ident": str(uuid.UUID(int=5)),
        "amount": "1.50",
        "color": "red",
        "point": {"x": 3, "y": 4},
    }


@pytest.mark.parametrize("whole_group", [False, True], ids=["worker", "process-group"])
def test_sigterm_lets_running_task_finish_and_claims_nothing_new(tl, tmp_path: Path, whole_group: bool) -> None:
    """SIGTERM to the worker, or to its whole process group as systemd and `kill -TERM -PGID` do."""
    log = tmp_path / "runs.log"
    running = tasklib.submit_task_sync(jobs.mark, key="running", sleep=2, priority=10)
    proc = start_worker(tl.database_url, log)
    try:
        assert wait_for(started(log, "running"), timeout=20)
        waiting = tasklib.submit_task_sync(jobs.mark, key="waiting")
        if whole_group:
            os.killpg(proc.pid, signal.SIGTERM)
        else:
            proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        stop(proc, signal.SIGKILL)
    assert task_row(tl.database_url, running)["state"] == "completed"
    row = task_row(tl.database_url, waiting)
    assert row["state"] == "pending" and row["retry_count"] == 0


def test_shutdown_past_grace_releases_without_burning_an_attempt(tl, tmp_path: Path) -> None:
    log = tmp_path / "runs.log"
    task_id = tasklib.submit_task_sync(jobs.mark, key="stubborn", sleep=30)
    proc = start_worker(tl.database_url, log, "--shutdown-grace", "0.5")
    try:
        assert wait_for(started(log, "stubborn"), timeout=20)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        stop(proc, signal.SIGKILL)
    row = task_row(tl.database_url, task_id)
    assert (row["state"], row["retry_count"], row["worker_id"] is not None) == ("pending", 0, True)


def test_retry_gaps_follow_backoff(tl, tmp_path: Path) -> None:
    """End to end with small delays (the arithmetic itself is the unit tier's): base 0.5 s,
    multiplier 2 -> the worker leaves gaps of 0.5, 1 and 2 s between the four attempts."""
    log = tmp_path / "runs.log"
    task_id = tasklib.submit_task_sync(jobs.flaky, key="f")
    with workers(tl.database_url, log, 1, "--poll-interval", "0.1", "--retry-delay", "0.5"):
        assert wait_for(lambda: task_row(tl.database_url, task_id)["state"] == "failed", timeout=30)
    times = [float(line[2]) for line in read_log(log) if line[0] == "attempt"]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(times) == 4  # first attempt + max_retries=3
    for gap, expected in zip(gaps, [0.5, 1.0, 2.0], strict=True):
        assert expected <= gap < expected + 0.8, gaps
    row = task_row(tl.database_url, task_id)
    assert row["retry_count"] == 3 and "RuntimeError: flaky f failed" in row["error"]


def test_priority_order_delays_and_unknown_names(tl, tmp_path: Path) -> None:
    log = tmp_path / "runs.log"
    for priority in (0, 5, -5, 10):
        tasklib.submit_task_sync(jobs.mark, key=f"p{priority}", priority=priority)
    delayed = tasklib.submit_task_sync(jobs.mark, key="delayed", delay_seconds=2)
    with psycopg.connect(tl.database_url) as conn:
        conn.execute("INSERT INTO tasks (id, name, kwargs) VALUES (gen_random_uuid(), 'nobody.runs_this', '{}')")
    with workers(tl.database_url, log, 1):
        assert wait_for(lambda: task_row(tl.database_url, delayed)["state"] == "completed", timeout=20)
    starts = [line[1] for line in read_log(log) if line[0] == "start"]
    # Due ones by priority; the delayed one not before it is due (last, unless the worker started
    # more than 2 s late, when it was due among them: its place then is its priority's, 0).
    assert [key for key in starts if key != "delayed"] == ["p10", "p5", "p0", "p-5"]
    row = task_row(tl.database_url, delayed)
    assert (row["started_at"] - row["created_at"]).total_seconds() >= 1.9
    assert states(tl.database_url)["pending"] == 1  # the unknown name is left alone


def test_fifo_within_a_priority(tl, tmp_path: Path) -> None:
    """Same priority: tasks start in scheduled_at, then id order, also when one claim takes hundreds
    of rows (which PostgreSQL returns in whatever order its plan met them). Ids are time-ordered, so
    the items of one submit_many (one scheduled_at) start in the order of its list."""
    log = tmp_path / "runs.log"
    for i in range(200):  # one by one, each due a little before the one submitted before it
        tasklib.submit_task_sync(jobs.mark, key=f"a{i}", delay_seconds=(200 - i) * 0.004)
    tasklib.submit_many_sync(jobs.mark, [{"key": f"b{i}"} for i in range(100)])  # one scheduled_at: id order
    with psycopg.connect(tl.database_url) as conn:
        expected = [r[0] for r in conn.execute("SELECT kwargs->>'key' FROM tasks ORDER BY scheduled_at, id")]
        by_id = [r[0] for r in conn.execute("SELECT kwargs->>'key' FROM tasks ORDER BY id")]
    assert expected != by_id  # otherwise the test could not tell a sort by id from FIFO
    assert [k for k in expected if k.startswith("b")] == [f"b{i}" for i in range(100)]
    time.sleep(1.0)  # every task due before the worker claims
    with workers(tl.database_url, log, 1, "--concurrency", "1"):
        assert wait_for(lambda: all_done(tl.database_url, 300), timeout=60), states(tl.database_url)
    assert [line[1] for line in read_log(log) if line[0] == "start"] == expected


def test_what_the_claim_floor_passes_over_is_still_claimed(tl, tmp_path: Path) -> None:
    """Under a steady stream of high-priority tasks the floor follows their head; an older backlog
    of lower priority and a task whose transaction committed long after it began (both below the
    floor) still run, soon after, and every task runs exactly once."""
    log = tmp_path / "runs.log"
    low = [{"key": f"low{i}"} for i in range(200)]
    tasklib.submit_many_sync(jobs.mark, low, priority=-5)
    late_tx = psycopg.connect(tl.database_url)
    with workers(tl.database_url, log, 1, "--concurrency", "2", "--poll-interval", "3.0"):
        tasklib.submit_task_in(late_tx, jobs.mark, key="late")  # scheduled_at = this transaction's start
        deadline = time.monotonic() + 3
        i = 0
        while time.monotonic() < deadline:  # a stream that keeps claims full
            tasklib.submit_many_sync(jobs.mark, [{"key": f"high{i}-{j}"} for j in range(100)], priority=5)
            i += 1
            time.sleep(0.02)
        late_tx.commit()  # 3 s after its scheduled_at: below any floor by now
        committed = time.time()
        late_tx.close()
        total = 200 + 1 + i * 100
        assert wait_for(lambda: all_done(tl.database_url, total), timeout=30), states(tl.database_url)
    starts = collections.Counter(line[1] for line in read_log(log) if line[0] == "start")
    assert len(starts) == total and set(starts.values()) == {1}
    # Its NOTIFY (at commit) carries its scheduled_at and lowers the floor: no waiting for a sweep.
    # It has a lower priority than the stream, so it runs once the stream's backlog is done: how long
    # that takes depends on the machine, so the bound counts from the last of those starts.
    late_start = next(float(line[3]) for line in read_log(log) if line[:2] == ["start", "late"])
    last_high = max(float(line[3]) for line in read_log(log) if line[0] == "start" and line[1].startswith("high"))
    assert late_start - max(committed, last_high) < 1.0, (late_start - committed, late_start - last_high)
    order = [line[1] for line in read_log(log) if line[0] == "start"]
    first_low = min(order.index(k["key"]) for k in low)
    assert first_low > order.index("high0-0")  # priority still decides the order


def test_a_free_slot_is_filled_at_once_not_at_the_next_poll(tl, tmp_path: Path) -> None:
    """One sync slot, a 5 s poll, and async tasks registered (so each claim round also awaits the
    async lane's claim): every time a task finishes, the next one starts within moments. A wake-up
    that arrived while the round awaited a statement used to be cleared after the round, and the
    worker slept a whole poll interval with its slot free."""
    log = tmp_path / "runs.log"
    tasklib.submit_many_sync(jobs.mark, [{"key": f"k{i}"} for i in range(8)])
    with workers(tl.database_url, log, 1, "--concurrency", "1", "--poll-interval", "5"):
        assert wait_for(lambda: all_done(tl.database_url, 8), timeout=60), states(tl.database_url)
    starts = sorted(float(line[3]) for line in read_log(log) if line[0] == "start")
    gaps = [round(b - a, 2) for a, b in itertools.pairwise(starts)]
    assert len(starts) == 8 and max(gaps) < 1.0, gaps


def test_notify_wakes_an_idle_worker_faster_than_polling(tl, tmp_path: Path) -> None:
    log = tmp_path / "runs.log"
    with workers(tl.database_url, log, 1, "--poll-interval", "10"):
        warm = tasklib.submit_task_sync(jobs.mark, key="warm")
        assert wait_for(lambda: task_row(tl.database_url, warm)["state"] == "completed", timeout=20)
        time.sleep(0.3)
        latencies = []
        for i in range(5):
            submitted = time.time()
            tasklib.submit_task_sync(jobs.mark, key=f"n{i}")
            assert wait_for(started(log, f"n{i}"), timeout=5)
            began = next(float(line[3]) for line in read_log(log) if line[:2] == ["start", f"n{i}"])
            latencies.append(began - submitted)
    assert max(latencies) < 1.0, latencies


def test_cancel_running_task_kills_it(tl, tmp_path: Path) -> None:
    log = tmp_path / "runs.log"
    task_id = tasklib.submit_task_sync(jobs.mark, key="doomed", sleep=5)
    with workers(tl.database_url, log, 1):
        assert wait_for(started(log, "doomed"), timeout=20)
        tasklib.cancel_task(task_id)
        after = tasklib.submit_task_sync(jobs.mark, key="next")
        assert wait_for(lambda: task_row(tl.database_url, after)["state"] == "completed", timeout=5)
        time.sleep(5)
    assert task_row(tl.database_url, task_id)["state"] == "cancelled"
    assert ["done", "doomed"] not in [line[:2] for line in read_log(log)]


def test_fast_tasks_are_prefetched_but_each_runs_once(tl, tmp_path: Path) -> None:
    log = tmp_path / "runs.log"
    tasklib.submit_many_sync(jobs.mark, [{"key": f"f{i}"} for i in range(3000)])
    with workers(tl.database_url, log, 1, "--concurrency", "4"):
        assert wait_for(lambda: all_done(tl.database_url, 3000), timeout=60)
    done = collections.Counter(line[1] for line in read_log(log) if line[0] == "done")
    assert len(done) == 3000 and set(done.values()) == {1}


def test_slow_task_among_fast_ones_does_not_hold_them_up(tl, tmp_path: Path) -> None:
    """Fast tasks are batched to children; a slow one in the batch gives the rest back to idle children."""
    log = tmp_path / "runs.log"
    with workers(tl.database_url, log, 1, "--concurrency", "2"):
        tasklib.submit_many_sync(jobs.mark, [{"key": f"warm{i}"} for i in range(400)])  # fast mode
        assert wait_for(lambda: all_done(tl.database_url, 400), timeout=30)
        batch = [{"key": f"fast{i}"} for i in range(60)]
        batch.insert(5, {"key": "slow", "sleep": 4.0})
        tasklib.submit_many_sync(jobs.mark, batch)
        began = time.monotonic()
        assert wait_for(
            lambda: sum(1 for line in read_log(log) if line[0] == "done" and line[1].startswith("fast")) == 60, timeout=10
        )
        assert time.monotonic() - began < 3.0  # well before the slow task ends
        assert ["done", "slow"] not in [line[:2] for line in read_log(log)]
        assert wait_for(lambda: all_done(tl.database_url, 461), timeout=15)
    starts = collections.Counter(line[1] for line in read_log(log) if line[0] == "start")
    assert set(starts.values()) == {1}  # nothing ran twice


def test_a_slow_writer_holds_back_claims_instead_of_piling_up_outcomes(tl, monkeypatch, tmp_path: Path) -> None:
    """Recording outcomes slower than tasks run (here every write is delayed 0.1 s; under a long
    snapshot elsewhere it happens by itself): the worker claims only as fast as it records, so the
    outcomes it holds unwritten stay bounded and every task still runs exactly once. Without the
    brake all 3,000 outcomes piled up behind the writer."""
    import asyncio

    from tasklib.worker import TaskWorker
    from tasklib.worker import writer as _writer
    from tasklib.worker.executors import FAST_PREFETCH

    original = _writer.OutcomeWriter._write

    async def slow_write(self: _writer.OutcomeWriter, batch: list, fallback: bool = False) -> None:
        await asyncio.sleep(0.1)
        await original(self, batch, fallback)

    monkeypatch.setattr(_writer.OutcomeWriter, "_write", slow_write)
    log = tmp_path / "runs.log"
    monkeypatch.setenv("TASKLIB_TEST_LOG", str(log))
    total = 3000
    tasklib.submit_many_sync(jobs.mark, [{"key": f"s{i}"} for i in range(total)])

    async def run() -> int:
        worker = TaskWorker(tl, concurrency=2, handle_signals=False)
        runner = asyncio.create_task(worker.run())
        most = 0
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not await asyncio.to_thread(all_done, tl.database_url, total):
            writer = worker._writer
            most = max(most, len(writer._finishes) + len(writer._writing))
            await asyncio.sleep(0.01)
        await worker.shutdown()
        await runner
        return most

    most = asyncio.run(run())
    assert all_done(tl.database_url, total), states(tl.database_url)
    starts = collections.Counter(line[1] for line in read_log(log) if line[0] == "start")
    assert len(starts) == total and set(starts.values()) == {1}
    # Bounded by what the writer may hold plus what the dispatcher holds when the brake engages.
    assert most <= _writer.MAX_UNWRITTEN + FAST_PREFETCH, most
    assert most >= _writer.MAX_UNWRITTEN // 2, most  # the writer really was the slow part


def test_worker_connections_carry_the_plan_settings(tl) -> None:
    """The worker's own claim and write connections use the settings the plan test relies on."""
    import asyncio

    async def settings() -> tuple[str, str]:
        from tasklib.worker.connections import WorkerConnections

        connections = WorkerConnections(tl.database_url, "tasklib-worker test")
        claim, write = await connections.connection("claim"), await connections.connection("write")
        try:
            sort = (await (await claim.execute("SHOW enable_sort")).fetchone())[0]  # type: ignore[index]
            hashjoin = (await (await write.execute("SHOW enable_hashjoin")).fetchone())[0]  # type: ignore[index]
            return sort, hashjoin
        finally:
            await claim.close()
            await write.close()

    assert asyncio.run(settings()) == ("off", "off")


def test_two_workers_in_one_process_see_the_environment_of_their_own_start(tl) -> None:
    """multiprocessing keeps one fork server per process: a second TaskWorker (a test suite's next
    test) must not get children frozen with the first one's environment."""
    import asyncio

    from tasklib.worker import TaskWorker

    async def run_once(value: str) -> object:
        os.environ["TASKLIB_TEST_MARKER"] = value
        task_id = tasklib.submit_task_sync(jobs.env_value, variable="TASKLIB_TEST_MARKER")
        worker = TaskWorker(tl, handle_signals=False)
        runner = asyncio.create_task(worker.run())
        await await_for(lambda: tasklib.get_task(task_id).state == "completed", timeout=20)  # type: ignore[union-attr]
        await worker.shutdown()
        await runner
        return (await asyncio.to_thread(tasklib.get_task, task_id)).result  # type: ignore[union-attr]

    try:
        assert asyncio.run(run_once("first")) == "first"
        assert asyncio.run(run_once("second")) == "second"
    finally:
        os.environ.pop("TASKLIB_TEST_MARKER", None)
