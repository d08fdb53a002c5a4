"""The worker's decisions without processes or a database: claim floor, rescue policy, dispatcher."""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import tasklib
from tasklib._async_dispatcher import AsyncDispatcher, async_children
from tasklib._claim import EARLIEST, SWEEP_STEP_SECONDS, ClaimFloor, Step, other_priorities
from tasklib._connections import submit_note
from tasklib._dispatcher import FAST_WINDOW, Dispatcher
from tasklib._lockkeeper import Pacing, SessionWatch, foreign_claims, rescue_decisions, session_name
from tasklib._pool import Child, Job, KillReason
from tasklib.states import PRIORITY_MAX, PRIORITY_MIN, TaskState

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
CONFIG = tasklib.Config(database_url="postgresql://u@h/db")


# -- claim floor ---------------------------------------------------------------------------------


def rows(*scheduled: datetime, priority: int = 0) -> list[tuple[int, datetime]]:
    return [(priority, at) for at in scheduled]


def across(limit: int, claimed: list[tuple[int, datetime]] | None = None) -> list[Step]:
    """One claim that was a single step across all priorities (a sweep, or nothing known yet)."""
    return [Step(None, limit, claimed or [])]


class Queue:
    """Pending rows claimed the way CLAIM_AT_PRIORITY / CLAIM_OTHER_PRIORITIES / CLAIM_NEXT do, in
    the worker's order of steps."""

    def __init__(self) -> None:
        self.pending: list[tuple[int, datetime, str]] = []

    def add(self, key: str, at: datetime, priority: int = 0) -> None:
        self.pending.append((priority, at, key))

    def claim(self, floor: ClaimFloor, now: datetime, clock: float, limit: int) -> list[str]:
        common = floor.floor_for_next(clock)
        steps: list[Step] = []
        taken: list[str] = []
        swept = 0.0
        while swept < SWEEP_STEP_SECONDS and (window := floor.sweep_window()) is not None:
            taken += self._take(floor, now, None, window[0], limit - len(taken), window, steps)
            swept += 0.001
        known = floor.priorities_for(common)
        for priority, at in [*known, (None, common)]:
            if len(taken) >= limit:
                break
            others = other_priorities(p for p, _ in known) if priority is None else None
            taken += self._take(floor, now, priority, at, limit - len(taken), None, steps, others)
        floor.observe(now, steps)
        return taken

    def _take(
        self,
        floor: ClaimFloor,
        now: datetime,
        priority: int | None,
        at: datetime,
        asked: int,
        window: tuple[datetime, datetime] | None,
        steps: list[Step],
        others: tuple[list[int], list[int]] | None = None,
    ) -> list[str]:
        below = window[1] if window else now + timedelta(microseconds=1)
        ranges = list(zip(*others, strict=True)) if others else [(PRIORITY_MIN - 1, PRIORITY_MAX + 1)]
        due = sorted(
            (
                r
                for r in self.pending
                if at <= r[1] < below
                and r[1] <= now
                and priority in (None, r[0])
                and any(low < r[0] < high for low, high in ranges)
            ),
            key=lambda r: (-r[0], r[1], r[2]),
        )[:asked]
        for row in due:
            self.pending.remove(row)
        step = Step(priority, asked, [(p, a) for p, a, _ in due], window, 0.001)
        if window:
            floor.swept(step)
        else:
            steps.append(step)
        return [key for _, _, key in due]


def sweep_due(floor: ClaimFloor, clock: float) -> bool:
    """Whether the claim at ``clock`` starts (or goes on with) a sweep."""
    floor.floor_for_next(clock)
    return floor.sweep_window() is not None


def finish_sweep(
    floor: ClaimFloor, claimed: list[tuple[int, datetime]] | None = None, seconds: float = 0.001
) -> list[tuple[datetime, datetime]]:
    """Run the sweep in progress to its end, every step short, the first one taking ``claimed``;
    the windows its steps covered."""
    windows = []
    while (window := floor.sweep_window()) is not None:
        floor.swept(Step(None, 10, [] if windows else claimed or [], window, seconds))
        windows.append(window)
    return windows


def test_first_claim_sweeps_and_a_short_claim_raises_the_floor() -> None:
    floor = ClaimFloor(sweep_every_seconds=1.0, margin_seconds=1.0)
    assert floor.floor_for_next(0.0) == EARLIEST
    floor.observe(T0, across(256, rows(T0 - timedelta(seconds=9))))  # took everything due: nothing older is left
    assert floor.floor_for_next(0.1) == T0 - timedelta(seconds=1)
    assert floor.priorities_for(floor.floor_for_next(0.1)) == [(0, T0 - timedelta(seconds=1))]
    floor.observe(T0 + timedelta(seconds=5), [Step(0, 256, rows(T0, T0)), Step(None, 254)])
    assert floor.floor_for_next(0.2) == T0 + timedelta(seconds=4)
    assert floor.floors == {0: T0 + timedelta(seconds=4)}


def test_a_full_claim_raises_each_priority_to_its_first_row() -> None:
    """A steady backlog never gives a short claim; without this the floors would stay where the
    queue last ran dry, and under a held snapshot every claim would walk every task claimed since."""
    floor = ClaimFloor(sweep_every_seconds=1.0, margin_seconds=1.0)
    floor.floor_for_next(0.0)
    floor.observe(T0, across(4))
    floor.floor_for_next(0.1)
    later = T0 + timedelta(seconds=30)
    # Returned in any order; each priority goes to its own oldest row taken. The common floor stays:
    # a priority below the last row taken was never reached.
    claimed = [(0, later), (5, later + timedelta(seconds=2)), (5, later + timedelta(seconds=1)), (0, later)]
    floor.observe(later + timedelta(seconds=5), across(4, claimed))
    assert floor.floors == {5: later, 0: later - timedelta(seconds=1)}
    assert floor.floor == T0 - timedelta(seconds=1)


def test_priorities_a_full_first_claim_never_reached_are_claimed_next_in_order() -> None:
    """A worker starts after tasks of four priorities were submitted, the highest ones last; its
    first claim (a sweep, room for two) takes priorities 10 and 5. Priorities 0 and -5 are older
    than both, and unknown to it: they come next, in priority order, with no sweep."""
    floor = ClaimFloor(sweep_every_seconds=100.0, margin_seconds=0.1)
    queue = Queue()
    for i, priority in enumerate((0, 5, -5, 10)):  # submitted 0.5 s apart
        queue.add(f"p{priority}", T0 + timedelta(seconds=0.5 * i), priority=priority)
    now = T0 + timedelta(seconds=3)
    taken = [queue.claim(floor, now, 0.1 * n, 2 if n == 0 else 1) for n in range(5)]
    assert taken == [["p10", "p5"], ["p0"], ["p-5"], [], []]


def test_a_lower_priority_is_never_passed_over_while_a_higher_one_keeps_claims_full() -> None:
    """The shape that made one floor for all priorities wait for a sweep: a stream of priority 5
    keeps every claim full, and a priority-0 task whose transaction began 3 s before it committed
    (a transactional submit) is below anything the stream's claims have seen. Its notification
    lowers priority 0's floor, and only a claim at priority 0 raises it again."""
    floor = ClaimFloor(sweep_every_seconds=100.0, margin_seconds=1.0)
    queue = Queue()
    queue.add("old", T0 - timedelta(seconds=60), priority=0)
    assert queue.claim(floor, T0, 0.0, 4) == ["old"]  # the first claim sweeps
    for i in range(10):  # the stream: every claim full of priority 5, the clock moving on
        now = T0 + timedelta(seconds=i + 1)
        for j in range(8):
            queue.add(f"high{i}-{j}", now - timedelta(milliseconds=10 * (8 - j)), priority=5)
        if i == 3:
            queue.add("late", T0 + timedelta(seconds=1), priority=0)  # began at +1 s, commits at +4 s
            floor.lower_to(T0 + timedelta(seconds=1), priority=0)
        assert all(key.startswith("high") for key in queue.claim(floor, now, i + 1.0, 4))
    assert floor.floors[0] <= T0  # still low enough for "late", though claims never reached priority 0
    now = T0 + timedelta(seconds=12)
    taken = []
    for n in range(20):  # the stream stops; its backlog drains, then "late" comes, without a sweep
        taken += queue.claim(floor, now, 12.0 + n * 0.01, 4)
    assert taken[-1] == "late" and "late" not in taken[:-1]
    assert not queue.pending


def test_sweeps_space_out_while_they_find_nothing_and_come_back_when_they_do() -> None:
    floor = ClaimFloor(sweep_every_seconds=1.0, margin_seconds=1.0)
    floor.floor_for_next(0.0)
    floor.observe(T0, across(10))  # empty queue
    clock = 0.0
    intervals = []
    for _ in range(6):  # each sweep finds nothing a floored claim would not have
        last = clock
        while not sweep_due(floor, clock):
            clock += 0.25
        intervals.append(clock - last)
        finish_sweep(floor)
    assert intervals == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]  # doubling up to MAX_SWEEP_FACTOR intervals
    while not sweep_due(floor, clock):
        clock += 0.25
    finish_sweep(floor, rows(T0 - timedelta(minutes=5)))  # a straggler below the floor
    assert floor.sweep_every == 1.0
    floor.forget()
    assert floor.floor_for_next(clock + 0.01) == EARLIEST  # nothing known: one claim with no floor
    assert floor.sweep_window() is None


def test_a_late_commits_notification_lowers_the_floor_and_no_claim_in_flight_undoes_it() -> None:
    floor = ClaimFloor(sweep_every_seconds=1.0, margin_seconds=0.1)
    floor.floor_for_next(0.0)
    floor.observe(T0, across(10))  # drained at T0: floor T0 - 0.1 s
    assert floor.floor_for_next(0.1) == T0 - timedelta(seconds=0.1)  # a claim starts...
    floor.lower_to(T0 - timedelta(seconds=3), priority=2)  # ...while a submit that began 3 s ago commits
    floor.observe(T0 + timedelta(seconds=1), across(10))  # that claim ends short, without having seen it
    assert floor.floors[2] == T0 - timedelta(seconds=3.1)  # still low enough for the next claim
    common = floor.floor_for_next(0.2)
    assert floor.priorities_for(common) == [(2, T0 - timedelta(seconds=3.1))]
    floor.observe(T0 + timedelta(seconds=2), [Step(2, 10, rows(T0 - timedelta(seconds=3), priority=2)), Step(None, 9)])
    assert floor.floors[2] == T0 + timedelta(seconds=1.9)  # a claim made after the notification saw the row
    floor.lower_to(T0 + timedelta(seconds=5), priority=2)  # a notification above the floor changes nothing
    assert floor.floors[2] == T0 + timedelta(seconds=1.9)
    floor.lower_to(T0 + timedelta(seconds=5), priority=7)  # a new priority starts at the common floor
    assert floor.floors[7] == floor.floor == T0 + timedelta(seconds=1.9)


def test_a_priority_that_comes_back_empty_is_forgotten_until_seen_again() -> None:
    floor = ClaimFloor(sweep_every_seconds=100.0, margin_seconds=1.0)
    floor.floor_for_next(0.0)
    floor.observe(T0, across(10, rows(T0, priority=3)))
    assert set(floor.floors) == {3}
    floor.observe(T0, [Step(3, 10), Step(None, 10)])
    assert floor.floors == {}  # one statement fewer per claim while priority 3 has nothing
    floor.lower_to(T0, priority=3)
    assert set(floor.floors) == {3}


@pytest.mark.parametrize("known", [[], [0], [10, 0], [1, 0], [PRIORITY_MIN, 5], [PRIORITY_MAX], [3, -3, 0, 2]])
def test_the_other_priorities_are_every_priority_but_the_known_ones_highest_first(known: list[int]) -> None:
    above, below = other_priorities(known)
    ranges = list(zip(above, below, strict=True))
    assert all(high - low > 1 for low, high in ranges)  # no empty range (an index scan for nothing)
    assert ranges == sorted(ranges, reverse=True)  # highest first: the outer LIMIT takes them in order
    covered = [p for low, high in ranges for p in range(high - 1, low, -1)]
    assert covered == sorted(set(range(PRIORITY_MIN, PRIORITY_MAX + 1)) - set(known), reverse=True)


def test_a_claim_takes_priorities_it_never_heard_of_between_and_around_the_known_ones() -> None:
    """Known: 10 and 0, both drained. Tasks of 5, 20 and -3 arrive with no notification (sent
    before this worker listened): the claim's last step, over the other priorities, takes them in
    priority order, without a sweep."""
    floor = ClaimFloor(sweep_every_seconds=100.0, margin_seconds=0.1)
    queue = Queue()
    queue.add("ten", T0, priority=10)
    queue.add("zero", T0, priority=0)
    assert sorted(queue.claim(floor, T0 + timedelta(seconds=1), 0.0, 4)) == ["ten", "zero"]
    floor.floors.setdefault(10, T0)
    floor.floors.setdefault(0, T0)  # still known: asked one by one first, then left out
    for key, priority in (("five", 5), ("twenty", 20), ("minus", -3)):
        queue.add(key, T0 + timedelta(seconds=2), priority=priority)
    now = T0 + timedelta(seconds=3)
    assert queue.claim(floor, now, 0.1, 2) == ["twenty", "five"]
    assert queue.claim(floor, now, 0.2, 2) == ["minus"]


def test_a_sweep_comes_once_per_interval_and_after_errors() -> None:
    floor = ClaimFloor(sweep_every_seconds=1.0, margin_seconds=1.0)
    floor.floor_for_next(0.0)
    floor.observe(T0, across(10))
    assert not sweep_due(floor, 0.5)
    assert sweep_due(floor, 1.0)  # stragglers below the floor are looked for within 1 s
    finish_sweep(floor)
    assert not sweep_due(floor, 1.5)
    floor.forget()
    assert floor.floor_for_next(1.6) == EARLIEST


def test_a_sweep_walks_down_from_the_floors_in_windows_sized_by_their_time() -> None:
    """Under a held snapshot every claimed task of the last 40 s keeps its entry below the floors
    (7,000 a second here), and a step costs 2 us per entry in its window, plus 7 ms of walking the
    index on keys. One statement from EARLIEST would take 570 ms; the windows keep each step near
    SWEEP_STEP_SECONDS, cover everything from the highest floor down to EARLIEST without a gap,
    and get wide fast below the kept entries."""
    floor = ClaimFloor(sweep_every_seconds=1.0, margin_seconds=0.1)
    floor.floor_for_next(0.0)
    floor.observe(T0, across(10))  # the common floor: T0 - 0.1 s
    floor.observe(T0 + timedelta(seconds=5), [Step(3, 10, rows(T0, priority=3))])  # priority 3's is higher
    top = T0 + timedelta(seconds=4.9)
    kept_from = top - timedelta(seconds=40)

    def cost(window: tuple[datetime, datetime]) -> float:
        low, below = max(window[0], kept_from), min(window[1], top)
        kept = max(0.0, (below - low).total_seconds()) * 7000
        return 0.007 + kept * 2e-6

    assert sweep_due(floor, 1.0)
    steps = []
    while (window := floor.sweep_window()) is not None:
        steps.append((window, cost(window)))
        floor.swept(Step(None, 10, [], window, cost(window)))
    windows = [w for w, _ in steps]
    assert windows[0][1] == top and windows[-1][0] == EARLIEST
    assert all(a[0] == b[1] for a, b in itertools.pairwise(windows))  # no gap, no overlap
    assert max(seconds for _, seconds in steps) < 0.06 and cost((EARLIEST, top)) > 0.5
    assert len(steps) < 64 and sum(seconds for _, seconds in steps) < 2 * cost((EARLIEST, top))
    # The next sweep starts from the window the kept entries allowed, not from a wide one.
    assert sweep_due(floor, 1000.0)
    assert cost(floor.sweep_window()) < 0.06  # type: ignore[arg-type]


def test_a_sweep_of_an_idle_queue_fits_in_one_claim() -> None:
    """The worker makes a sweep's steps one after another while they fit in SWEEP_STEP_SECONDS:
    the steps of an idle queue's sweep (half a millisecond each) all fit, so its sweep is done in
    one claim, not one step per poll interval."""
    floor = ClaimFloor(sweep_every_seconds=1.0)
    floor.floor_for_next(0.0)
    floor.observe(T0, across(10))
    assert sweep_due(floor, 1.0)
    assert len(finish_sweep(floor, seconds=0.0005)) * 0.0005 < SWEEP_STEP_SECONDS


def test_a_sweep_takes_a_straggler_of_a_priority_never_seen() -> None:
    """A task of priority 4 (never seen) sits 20 s below every floor: a row another session held
    locked when the claims passed. The sweep takes it; floored claims never would."""
    floor = ClaimFloor(sweep_every_seconds=1.0, margin_seconds=0.1)
    queue = Queue()
    assert queue.claim(floor, T0, 0.0, 4) == []  # the first claim: nothing yet
    now = T0 + timedelta(seconds=30)
    assert queue.claim(floor, now, 0.1, 4) == []  # the floors: just below T0 + 30 s
    queue.add("straggler", T0 + timedelta(seconds=10), priority=4)  # its lock released now
    assert queue.claim(floor, now, 0.5, 4) == []  # floored: above it
    taken = [queue.claim(floor, now, 1.0 + 0.01 * n, 4) for n in range(20)]
    assert ["straggler"] in taken and floor.sweep_every == 1.0  # found, so sweeps stay frequent
    assert not queue.pending


def test_the_floor_never_moves_down() -> None:
    floor = ClaimFloor(sweep_every_seconds=1.0, margin_seconds=1.0)
    floor.floor_for_next(0.0)
    floor.observe(T0 + timedelta(seconds=10), across(10, rows(T0)))
    floor.floor_for_next(0.1)
    floor.observe(T0, across(10))  # an older clock reading (cannot raise, must not lower)
    assert floor.floor == floor.floors[0] == T0 + timedelta(seconds=9)
    floor.observe(T0, across(2, rows(T0, T0)))  # a full claim of older rows cannot lower it either
    assert floor.floor == floor.floors[0] == T0 + timedelta(seconds=9)


# -- rescue policy -------------------------------------------------------------------------------


def test_rescue_goes_through_the_retry_policy_with_backoff() -> None:
    rows = [
        {"id": 1, "worker_id": "w", "started_at": T0, "locked_until": T0, "retry_count": 0, "max_retries": 3},
        {"id": 2, "worker_id": "w", "started_at": T0, "locked_until": T0, "retry_count": 3, "max_retries": 3},
    ]
    (_, _, _, retry), (_, worker, started, fail) = rescue_decisions(rows, CONFIG)
    assert retry.state is TaskState.PENDING and retry.retry_count == 1 and retry.delay_seconds == 5.0
    assert fail.state is TaskState.FAILED and fail.retry_count == 3
    assert (worker, started) == ("w", T0)  # applied only to that claim
    assert "WorkerLost: worker w stopped renewing its lock" in (fail.error or "")


def test_a_rescue_never_takes_the_claims_this_worker_knows_it_holds() -> None:
    """After an outage longer than the lock timeout, the worker's own expired claims are running in
    its children or finished with outcomes waiting to be written: not lost. A claim of its own it
    never heard back about (the reply was lost with the connection) is rescued: it never ran."""
    rows = [
        {"id": 1, "worker_id": "me"},  # running in a child, or its outcome is in the writer
        {"id": 2, "worker_id": "me"},  # claimed, but the claim's reply never arrived
        {"id": 3, "worker_id": "other"},
    ]
    assert [r["id"] for r in foreign_claims(rows, "me", known={1})] == [2, 3]
    assert [r["id"] for r in foreign_claims(rows, "other", known={1, 3})] == [1, 2]  # its own ids only


# -- dispatcher against a fake pool -----------------------------------------------------------------


class FakePool:
    def __init__(self, size: int) -> None:
        self.children = [Child(100 + i, -1, -1, ready=True) for i in range(size)]
        self.closing = False
        self.sent: list[tuple[int, Any]] = []

    def send(self, child: Child, message: Any) -> None:
        self.sent.append((child.pid, message))


class FakeWriter:
    def __init__(self) -> None:
        self.finished: list[tuple[Job, Any]] = []
        self.released: list[Job] = []
        self.full = False

    def finish(self, job: Job, action: Any) -> None:
        self.finished.append((job, action))

    def release(self, job: Job) -> None:
        self.released.append(job)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def job(priority: int = 0, at: int = 0, timeout: int | None = None) -> Job:
    return Job(uuid.uuid4(), "n", "{}", 0, 3, timeout, priority, T0 + timedelta(seconds=at), T0)


def make(size: int = 2, concurrency: int = 2) -> tuple[Dispatcher, FakePool, FakeWriter, Clock]:
    writer, clock, pool = FakeWriter(), Clock(), FakePool(size)
    dispatcher = Dispatcher(CONFIG, concurrency, writer, lambda: None, clock=clock)  # type: ignore[arg-type]
    dispatcher.pool = pool
    return dispatcher, pool, writer, clock


def test_jobs_start_by_priority_then_due_time_then_id() -> None:
    dispatcher, pool, _, _ = make(size=1, concurrency=1)
    dispatcher.avg_duration = 0.001  # fast tasks: one child takes a window of several
    jobs = [job(0, 5), job(0, 1), job(7, 9), job(0, 1)]
    dispatcher.hold(jobs)
    sent = [seq for _pid, (_kind, batch) in pool.sent for seq, _name, _kw in batch]
    order = [dispatcher.jobs[seq] for seq in sent]
    assert order == sorted(jobs, key=lambda j: (-j.priority, j.scheduled_at, j.id))
    assert order[0].priority == 7


def test_slow_tasks_are_not_prefetched_and_fast_ones_are() -> None:
    dispatcher, _, _, _ = make(size=4, concurrency=4)
    assert dispatcher.wanted() == 4  # one per free child while tasks are slow (or unknown)
    dispatcher.avg_duration = 0.001
    assert dispatcher.wanted() >= FAST_WINDOW * 4


def test_child_result_becomes_an_outcome_and_frees_capacity() -> None:
    dispatcher, pool, writer, clock = make(size=1, concurrency=1)
    dispatcher.hold([job()])
    assert dispatcher.wanted() == 0
    child = pool.children[0]
    seq = child.outstanding[0].seq
    clock.now += 0.5
    dispatcher.on_message(child, (seq, "ok", "42"))
    ((_job, action),) = writer.finished
    assert action.state is TaskState.COMPLETED and action.result_json == "42"
    assert dispatcher.wanted() == 1 and dispatcher.processed == 1


def test_a_timed_out_child_fails_its_task_and_requeues_the_ones_behind_it() -> None:
    dispatcher, pool, writer, clock = make(size=2, concurrency=2)
    dispatcher.avg_duration = 0.001
    dispatcher.hold([job(timeout=1, at=-1), job(), job()])  # the timed one is due first: it runs first
    child = next(c for c in pool.children if c.outstanding and c.outstanding[0].timeout_seconds)
    behind = list(child.outstanding)[1:]
    clock.now += 1.5
    dispatcher.check_children()  # the watchdog's tick
    assert child.kill_reason is KillReason.TIMEOUT
    pool.children.remove(child)
    dispatcher.on_death(child, "killed by signal SIGKILL")
    ((_, action),) = writer.finished
    assert action.state is TaskState.PENDING and "TimeoutError" in (action.error or "")  # retried by policy
    assert all(j.seq in dispatcher.jobs for j in behind)  # never started: still held, run elsewhere


def test_a_crash_and_a_shutdown_kill_mean_different_things() -> None:
    dispatcher, pool, writer, _ = make(size=2, concurrency=2)
    dispatcher.hold([job(), job()])
    crashed, stopped = pool.children
    dispatcher.on_death(crashed, "exited with code 1")
    assert "WorkerChildDied" in (writer.finished[0][1].error or "")
    stopped.kill_reason = KillReason.SHUTDOWN
    dispatcher.on_death(stopped, "killed by signal SIGKILL")
    assert len(writer.finished) == 1 and len(writer.released) == 1  # released, no attempt counted


def test_a_lost_task_is_killed_if_running_and_recalled_if_queued() -> None:
    dispatcher, pool, _, _ = make(size=1, concurrency=1)
    dispatcher.avg_duration = 0.001
    running, queued = job(at=0), job(at=1)
    dispatcher.hold([running, queued])
    child = pool.children[0]
    child.kill = lambda reason: setattr(child, "kill_reason", reason)  # type: ignore[method-assign]
    dispatcher.stop_lost({queued.id})
    assert pool.sent[-1] == (child.pid, ("recall", [queued.seq]))
    dispatcher.on_message(child, ("recalled", [queued.seq]))
    assert queued.seq not in dispatcher.jobs  # cancelled and given back: dropped, never run
    dispatcher.stop_lost({running.id})
    assert child.kill_reason is KillReason.CANCEL


def test_a_worker_counts_as_gone_only_after_staying_without_a_session() -> None:
    seen = SessionWatch(own="me", after_seconds=5.0)
    assert seen.observe(["me", "a", "b"], now=99.0) == []  # both seen connected: now known
    assert seen.observe(["me"], now=100.0) == []
    assert seen.observe(["me"], now=104.9) == []
    assert seen.observe(["me", "b"], now=105.0) == ["a"]  # b reconnected: forgotten
    assert seen.observe(["me"], now=106.0) == ["a"]  # b starts over
    assert seen.observe(["me"], now=111.0) == ["a", "b"]
    seen.forget()  # our own connection failed: start over for everyone, but keep watching them
    assert seen.observe(["me"], now=112.0) == []
    assert seen.observe(["me"], now=117.0) == ["a", "b"]
    seen.settled("a")  # its claims are rescued: no longer watched
    assert seen.observe(["me"], now=118.0) == ["b"]


def test_workers_never_seen_are_found_only_through_the_owners_of_claims() -> None:
    seen = SessionWatch(own="me", after_seconds=5.0)
    seen.learn(["dead"])  # the start-up read: it holds claims and has no session
    assert seen.observe([], now=0.0) == []  # (our own session missing from a look is never a death)
    assert seen.observe(["me"], now=5.0) == ["dead"]
    assert seen.observe(["me", "dead"], now=6.0) == []  # it came back


def test_a_session_name_is_what_postgresql_keeps_of_it() -> None:
    assert session_name("host:12:ab") == "tasklib-worker host:12:ab"
    long = "pod-" + "x" * 80
    assert session_name(long) == ("tasklib-worker " + long)[:63]
    # 63 bytes, cut at a character boundary (PostgreSQL does the same with application_name)
    assert session_name("é" * 40).encode() == ("tasklib-worker " + "é" * 24).encode()


# -- async dispatcher against a fake pool -------------------------------------------------------


def make_async(children: int = 2, slots: int = 20) -> tuple[AsyncDispatcher, FakePool, FakeWriter, Clock]:
    writer, clock, pool = FakeWriter(), Clock(), FakePool(children)
    dispatcher = AsyncDispatcher(CONFIG, slots, writer, lambda: None, children, clock=clock)  # type: ignore[arg-type]
    dispatcher.pool = pool
    return dispatcher, pool, writer, clock


def test_async_children_follow_the_slots_up_to_the_cores() -> None:
    assert async_children(0) == 0
    assert [async_children(n, cpus=2) for n in (1, 100, 101, 200, 1000)] == [1, 1, 2, 2, 2]
    assert async_children(1000, cpus=8) == 8 and async_children(300, cpus=1) == 2


def test_async_jobs_all_start_at_once_spread_over_children() -> None:
    dispatcher, pool, _, _ = make_async(children=2, slots=20)
    assert dispatcher.wanted() == 20
    dispatcher.hold([job() for _ in range(25)])
    assert sorted(len(c.outstanding) for c in pool.children) == [10, 10]  # 10 slots each, all running
    assert len(dispatcher._queue) == 5 and dispatcher.wanted() == 0
    kinds = {message[0] for _pid, message in pool.sent}
    assert kinds == {"run"} and all(len(item) == 4 for _pid, (_, batch) in pool.sent for item in batch)  # + timeout


def test_async_results_arrive_in_any_order_and_free_their_slot() -> None:
    dispatcher, pool, writer, _ = make_async(children=1, slots=3)
    first, second, third, waiting = job(at=0), job(at=1), job(at=2), job(at=3)
    dispatcher.hold([first, second, third, waiting])
    child = pool.children[0]
    dispatcher.on_message(child, (third.seq, "ok", "3"))
    dispatcher.on_message(child, (first.seq, "timeout", "TimeoutError: …"))
    assert [j for j, _ in writer.finished] == [third, first]
    assert writer.finished[1][1].state is TaskState.PENDING  # a timeout is retried by policy
    assert list(child.outstanding) == [second, waiting]  # the queued one took a freed slot


def test_an_uncancellable_async_task_kills_its_child_and_only_it_is_charged() -> None:
    dispatcher, pool, writer, clock = make_async(children=1, slots=10)
    stubborn, bystander, cancelled = job(at=0, timeout=1), job(at=1), job(at=2)
    dispatcher.hold([stubborn, bystander, cancelled])
    child = pool.children[0]
    child.kill = lambda reason: setattr(child, "kill_reason", reason)  # type: ignore[method-assign]
    dispatcher.stop_lost({cancelled.id})
    assert pool.sent[-1] == (child.pid, ("cancel", [cancelled.seq]))  # asked, not killed
    clock.now += 1.5
    dispatcher.check_children()
    assert child.kill_reason is None  # the child cancels at the timeout itself; this is the grace
    clock.now += 2.0
    dispatcher.check_children()
    assert child.kill_reason is KillReason.TIMEOUT and stubborn.overdue
    pool.children.remove(child)
    dispatcher.on_death(child, "killed by signal SIGKILL")
    ((charged, action),) = writer.finished
    assert charged is stubborn and "did not stop when cancelled" in (action.error or "")
    assert writer.released == [bystander]  # back to pending, no attempt counted; the cancelled one dropped
    assert not dispatcher.jobs


def test_a_cancel_that_is_ignored_kills_the_child_after_the_grace() -> None:
    dispatcher, pool, writer, clock = make_async(children=1, slots=10)
    target, bystander = job(), job()
    dispatcher.hold([target, bystander])
    child = pool.children[0]
    child.kill = lambda reason: setattr(child, "kill_reason", reason)  # type: ignore[method-assign]
    dispatcher.stop_lost({target.id})
    clock.now += 2.5
    dispatcher.check_children()
    assert child.kill_reason is KillReason.CANCEL
    dispatcher.on_death(child, "killed by signal SIGKILL")
    assert writer.finished == [] and writer.released == [bystander]


def test_an_async_child_that_crashes_charges_every_task_it_held() -> None:
    dispatcher, pool, writer, _ = make_async(children=1, slots=10)
    dispatcher.hold([job(), job(), job()])
    dispatcher.on_death(pool.children[0], "exited with code 3")
    assert len(writer.finished) == 3 and not writer.released
    assert all(
        "WorkerChildDied" in (action.error or "") and "2 other(s)" in (action.error or "") for _, action in writer.finished
    )


def test_a_few_free_async_slots_are_claimed_after_a_short_wait_not_a_whole_wave() -> None:
    dispatcher, pool, _, clock = make_async(children=1, slots=20)
    jobs = [job() for _ in range(20)]
    dispatcher.hold(jobs)
    dispatcher.on_message(pool.children[0], (jobs[0].seq, "ok", "null"))
    assert dispatcher.wanted() == 0  # one free slot of 20: wait for others to free up
    assert dispatcher.recheck_in() == pytest.approx(0.05)  # …but the claim loop comes back for it
    clock.now += 0.06
    assert dispatcher.wanted() == 1
    dispatcher.hold([job()])
    assert dispatcher.recheck_in() is None


def test_a_floored_claim_asks_per_priority_it_has_seen_and_a_sweep_asks_for_all() -> None:
    floor = ClaimFloor(sweep_every_seconds=10)
    assert floor.floor_for_next(0.0) == EARLIEST and floor.priorities_for(EARLIEST) == []
    floor.observe(T0, across(3, rows(T0, priority=0) + rows(T0, T0, priority=5)))  # full: the floors follow it
    at = floor.floor_for_next(1.0)  # not a sweep, though the common floor knows nothing yet
    assert at == EARLIEST and [p for p, _ in floor.priorities_for(at)] == [5, 0]  # highest first
    floor.observe(T0, [Step(5, 3), Step(0, 3, rows(T0, T0, T0))])  # priority 5 came back empty
    floor.lower_to(T0 + timedelta(seconds=3), priority=9)  # a submit's NOTIFY names its priority
    assert [p for p, _ in floor.priorities_for(at)] == [9, 0]
    floor.forget()
    assert floor.priorities == set()


def test_a_submit_notification_carries_its_time_and_priority() -> None:
    assert submit_note("app.send_email 1764590400.25 -3") == (1764590400.25, -3)
    assert submit_note("app.send_email 1764590400.25") == (1764590400.25, None)  # an older submitter
    assert submit_note("my job 5 1764590400.25") == (1764590400.25, None)  # a name with spaces, old form
    assert submit_note("my job 1764590400.25 2") == (1764590400.25, 2)
    assert submit_note("garbage") == (None, None)


def test_a_rescue_look_runs_less_often_when_it_gets_slow() -> None:
    pacing = Pacing(interval=1.0, share=0.05)
    assert pacing.due(0.0)
    pacing.ran(0.0, 0.002)  # cheap: again after the interval
    assert not pacing.due(0.9) and pacing.due(1.01)
    pacing.ran(2.0, 2.25)  # 250 ms (a bloated lock index): 5 s later, so it stays at 5 % of the time
    assert not pacing.due(6.0) and pacing.due(7.26)


def test_a_slow_sweep_spaces_out_the_next_ones() -> None:
    floor = ClaimFloor(sweep_every_seconds=1)
    assert floor.floor_for_next(0.0) == EARLIEST
    floor.observe(T0, across(10, rows(T0)), seconds=0.4)  # the first claim under a held snapshot: 400 ms
    assert not sweep_due(floor, 10.0)  # 2 % of the time at most: 20 s to the next
    floor.observe(T0, [Step(0, 10, rows(T0)), Step(None, 9)], seconds=0.001)  # (floored claims do not count)
    assert sweep_due(floor, 20.1)
    steps = finish_sweep(floor, seconds=0.03)  # its steps add up: the next one is further away
    spent = 0.03 * len(steps)
    assert not sweep_due(floor, 20.1 + spent / 0.02 - 0.1) and sweep_due(floor, 20.1 + spent / 0.02 + 0.1)
    finish_sweep(floor, seconds=0.0001)  # fast again: back to the intervals (doubling: nothing new)
    last = 20.2 + spent / 0.02
    assert not sweep_due(floor, last + 3.9) and sweep_due(floor, last + 4.1)


def test_the_writer_keeps_a_batch_whose_statement_was_cancelled_and_stops_between_statements() -> None:
    import asyncio

    from tasklib._writer import OutcomeWriter
    from tasklib.outcome import Action

    async def scenario() -> tuple[int, int, int]:
        started, release = asyncio.Event(), asyncio.Event()
        calls: list[str] = []

        async def execute(statement: str, params: dict[str, Any]) -> list[Any]:
            calls.append(statement)
            started.set()
            await release.wait()  # a statement in flight
            return [(task_id,) for task_id in params.get("ids", [])]

        writer = OutcomeWriter(execute, "w")
        writer.finish(job(), Action(TaskState.COMPLETED, 0, result_json="1"))
        run = asyncio.create_task(writer.run())
        await started.wait()
        run.cancel()  # cut off mid-statement (as a shutdown used to do)
        await asyncio.gather(run, return_exceptions=True)
        kept = len(writer._finishes)  # still buffered: close() writes it
        release.set()
        await writer.close()
        written = len(calls)
        writer.finish(job(), Action(TaskState.COMPLETED, 0, result_json="1"))
        run = asyncio.create_task(writer.run())
        await asyncio.sleep(0.05)  # it writes the new outcome…
        writer.stop()
        await asyncio.wait_for(run, 1)  # …and stop() ends it without a cancel
        return kept, written, len(calls)

    kept, written, total = asyncio.run(scenario())
    assert kept == 1 and written == 2 and total == 3


class SlowStatements:
    """Stands in for the worker's connections in front of a lock keeper: answers each statement
    with no rows, taking ``seconds`` of the keeper's clock (time.monotonic, patched)."""

    def __init__(self, clock: list[float], seconds: float) -> None:
        self.clock, self.seconds, self.run = clock, seconds, []

    async def execute(self, statement: str, params: Any, **_: Any) -> list[Any]:
        self.run.append(statement)
        self.clock[0] += self.seconds
        return []


def test_slow_rescue_reads_come_less_often(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under a snapshot older than the lock timeout, the expired-lock read walks dead entries: it
    is paced like the sweep. The look for dead workers reads sessions (and the claims' owners once)."""
    import asyncio

    from tasklib import _lockkeeper, sql

    clock = [1000.0]
    monkeypatch.setattr(_lockkeeper.time, "monotonic", lambda: clock[0])
    conn = SlowStatements(clock, seconds=0.5)
    keeper = _lockkeeper.LockKeeper(
        CONFIG,
        "me",
        conn,
        set,
        set,
        lambda lost: None,
        lambda: None,
        poll_interval=1.0,  # type: ignore[arg-type]
    )

    async def rounds(n: int) -> None:
        for _ in range(n):
            await keeper.rescue()
            await keeper.rescue_vanished()
            clock[0] += 1.0  # the poll interval

    asyncio.run(rounds(10))  # 10 rounds, 1.5 s each with both reads at 0.5 s: 15 s
    assert conn.run.count(sql.EXPIRED_CLAIMS) == 1  # 0.5 s at 2 %: next after 25 s
    assert conn.run.count(sql.VANISHED_WORKERS) == 1  # once, at start
    assert conn.run.count(sql.WORKER_SESSIONS) == 1
    conn.seconds = 0.001
    clock[0] += 30.0
    asyncio.run(rounds(5))  # fast again: every round
    assert conn.run.count(sql.EXPIRED_CLAIMS) == 6 and conn.run.count(sql.WORKER_SESSIONS) == 6
    assert conn.run.count(sql.VANISHED_WORKERS) == 1


def test_a_full_writer_holds_back_claims_until_it_has_written_its_way_back() -> None:
    """Outcomes waiting to be recorded stop both dispatchers from claiming; the writer wakes the
    claim loop once (not per statement) when it is back under the bound."""
    import asyncio

    from tasklib._writer import BATCH_LIMIT, MAX_UNWRITTEN, OutcomeWriter
    from tasklib.outcome import Action

    async def execute(statement: str, params: dict[str, Any]) -> list[Any]:
        return [(task_id,) for task_id in params.get("ids", [])]

    async def scenario() -> None:
        woken: list[int] = []
        writer = OutcomeWriter(execute, "w", on_room=lambda: woken.append(1))
        dispatcher, _, _, _ = make(size=4, concurrency=4)
        async_dispatcher, _, _, _ = make_async(children=1, slots=20)
        dispatcher._writer = async_dispatcher._writer = writer
        dispatcher.avg_duration = 0.001  # fast tasks: the most a claim would ask for
        assert dispatcher.wanted() > 0 and async_dispatcher.wanted() > 0
        for _ in range(MAX_UNWRITTEN):
            writer.finish(job(), Action(TaskState.COMPLETED, 0, result_json="1"))
        assert dispatcher.wanted() == 0 and async_dispatcher.wanted() == 0
        await writer.write_pending()
        assert woken == [1] and not writer.full
        assert dispatcher.wanted() > 0 and async_dispatcher.wanted() > 0
        for _ in range(MAX_UNWRITTEN + BATCH_LIMIT):  # full again, but no claim asked meanwhile
            writer.finish(job(), Action(TaskState.COMPLETED, 0, result_json="1"))
        await writer.write_pending()
        assert woken == [1]  # nobody was held back, nobody to wake

    asyncio.run(scenario())


class Renewals:
    """Stands in for the worker's connections in front of a lock keeper's heartbeat: renews every
    id asked for except those in ``gone`` (finished or taken over meanwhile)."""

    def __init__(self, gone: set[uuid.UUID]) -> None:
        self.gone, self.asked = gone, set[uuid.UUID]()

    async def execute(self, statement: str, params: Any, **_: Any) -> list[Any]:
        self.asked = set(params["ids"])
        return [(i,) for i in params["ids"] if i not in self.gone]


def test_a_heartbeat_renews_finished_tasks_whose_outcome_is_not_written_yet() -> None:
    import asyncio

    from tasklib import _lockkeeper

    running, unwritten, written_meanwhile = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    conn = Renewals(gone={written_meanwhile})
    lost: list[set[uuid.UUID]] = []
    keeper = _lockkeeper.LockKeeper(
        CONFIG,
        "me",
        conn,  # type: ignore[arg-type]
        lambda: {running},
        lambda: {unwritten, written_meanwhile},
        lost.append,
        lambda: None,
        poll_interval=1.0,
    )
    asyncio.run(keeper.heartbeat())
    assert conn.asked == {running, unwritten, written_meanwhile}
    assert lost == []  # an outcome written meanwhile is not a lost task


class ClaimStatements:
    """Stands in for the worker's connections in front of its claim: the first statement returns
    ``rows``, every later one nothing; records what the lane's pool had been sent by then."""

    def __init__(self, rows: list[dict[str, Any]], pool: FakePool) -> None:
        self.rows, self.pool = rows, pool
        self.sent_before: list[int] = []
        self.priorities: list[int | tuple[list[int], list[int]]] = []

    async def execute(self, statement: str, params: Any, **_: Any) -> list[Any]:
        self.sent_before.append(len(self.pool.sent))
        self.priorities.append(params["priority"] if "priority" in params else (params["above"], params["below"]))
        rows, self.rows = self.rows, []
        return rows or [{"claimed_at": T0, "id": None}]


def test_a_claims_first_rows_start_before_its_later_statements_return() -> None:
    """A claim short at its one known priority asks once more across the other priorities; the rows
    the first statement took are already running by then, not waiting for that round trip."""
    import asyncio

    from tasklib.worker import Lane, TaskWorker

    worker = TaskWorker(CONFIG, concurrency=2, handle_signals=False)
    dispatcher, pool, _, _ = make(size=2, concurrency=2)
    lane = Lane(["n"], dispatcher, ClaimFloor(sweep_every_seconds=1e12))  # no sweep due after the first
    lane.floor.floor_for_next(0.0)
    lane.floor.observe(T0, across(2, rows(T0, priority=0)))  # the first claim: knows priority 0
    taken = job()
    row = {"claimed_at": T0, "id": taken.id, "name": "n", "kwargs_json": "{}", "retry_count": 0, "max_retries": 3}
    row |= {"timeout_seconds": None, "priority": 0, "scheduled_at": T0, "started_at": T0}
    statements = ClaimStatements([row], pool)
    worker._connections = statements  # type: ignore[assignment]

    jobs = asyncio.run(worker._claim(lane, 2))

    assert [j.id for j in jobs] == [taken.id]
    # At its priority, then across the others (above it, below it: the ranges' exclusive bounds).
    assert statements.priorities == [0, ([0, PRIORITY_MIN - 1], [PRIORITY_MAX + 1, 0])]
    assert statements.sent_before == [0, 1]  # the second statement found the first's task sent to a child
    assert [seq for _, (_, batch) in pool.sent for seq, _, _ in batch] == [1]  # and sent once
