"""Claim planning without a database: the floors' decisions, and the real planner's statements
answered by an in-memory table (``fakes.Tasks``)."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta

import pytest

from tasklib import sql
from tasklib.states import PRIORITY_MAX, PRIORITY_MIN
from tasklib.worker.claim import EARLIEST, SWEEP_STEP_SECONDS, ClaimFloor, Step, other_priorities
from tests.unit.worker.fakes import T0, Claims


def rows(*scheduled: datetime, priority: int = 0) -> list[tuple[int, datetime]]:
    return [(priority, at) for at in scheduled]


def across(limit: int, claimed: list[tuple[int, datetime]] | None = None) -> list[Step]:
    """One claim that was a single step across all priorities (a sweep, or nothing known yet)."""
    return [Step(None, limit, claimed or [])]


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
    queue = Claims(sweep_every_seconds=100.0, margin_seconds=0.1)
    for i, priority in enumerate((0, 5, -5, 10)):  # submitted 0.5 s apart
        queue.add(f"p{priority}", T0 + timedelta(seconds=0.5 * i), priority=priority)
    now = T0 + timedelta(seconds=3)
    taken = [queue.claim(now, 0.1 * n, 2 if n == 0 else 1) for n in range(5)]
    assert taken == [["p10", "p5"], ["p0"], ["p-5"], [], []]


def test_a_lower_priority_is_never_passed_over_while_a_higher_one_keeps_claims_full() -> None:
    """The shape that made one floor for all priorities wait for a sweep: a stream of priority 5
    keeps every claim full, and a priority-0 task whose transaction began 3 s before it committed
    (a transactional submit) is below anything the stream's claims have seen. Its notification
    lowers priority 0's floor, and only a claim at priority 0 raises it again."""
    queue = Claims(sweep_every_seconds=100.0, margin_seconds=1.0)
    floor = queue.floor
    queue.add("old", T0 - timedelta(seconds=60), priority=0)
    assert queue.claim(T0, 0.0, 4) == ["old"]  # the first claim sweeps
    for i in range(10):  # the stream: every claim full of priority 5, the clock moving on
        now = T0 + timedelta(seconds=i + 1)
        for j in range(8):
            queue.add(f"high{i}-{j}", now - timedelta(milliseconds=10 * (8 - j)), priority=5)
        if i == 3:
            queue.add("late", T0 + timedelta(seconds=1), priority=0)  # began at +1 s, commits at +4 s
            floor.lower_to(T0 + timedelta(seconds=1), priority=0)
        assert all(key.startswith("high") for key in queue.claim(now, i + 1.0, 4))
    assert floor.floors[0] <= T0  # still low enough for "late", though claims never reached priority 0
    now = T0 + timedelta(seconds=12)
    taken = []
    for n in range(20):  # the stream stops; its backlog drains, then "late" comes, without a sweep
        taken += queue.claim(now, 12.0 + n * 0.01, 4)
    assert taken[-1] == "late" and "late" not in taken[:-1]
    assert not queue.tasks.pending


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
    queue = Claims(sweep_every_seconds=100.0, margin_seconds=0.1)
    floor = queue.floor
    queue.add("ten", T0, priority=10)
    queue.add("zero", T0, priority=0)
    assert sorted(queue.claim(T0 + timedelta(seconds=1), 0.0, 4)) == ["ten", "zero"]
    floor.floors.setdefault(10, T0)
    floor.floors.setdefault(0, T0)  # still known: asked one by one first, then left out
    for key, priority in (("five", 5), ("twenty", 20), ("minus", -3)):
        queue.add(key, T0 + timedelta(seconds=2), priority=priority)
    now = T0 + timedelta(seconds=3)
    assert queue.claim(now, 0.1, 2) == ["twenty", "five"]
    assert queue.claim(now, 0.2, 2) == ["minus"]


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
    queue = Claims(sweep_every_seconds=1.0, margin_seconds=0.1)
    floor = queue.floor
    assert queue.claim(T0, 0.0, 4) == []  # the first claim: nothing yet
    now = T0 + timedelta(seconds=30)
    assert queue.claim(now, 0.1, 4) == []  # the floors: just below T0 + 30 s
    queue.add("straggler", T0 + timedelta(seconds=10), priority=4)  # its lock released now
    assert queue.claim(now, 0.5, 4) == []  # floored: above it
    taken = [queue.claim(now, 1.0 + 0.01 * n, 4) for n in range(20)]
    assert ["straggler"] in taken and floor.sweep_every == 1.0  # found, so sweeps stay frequent
    assert not queue.tasks.pending


def test_the_floor_never_moves_down() -> None:
    floor = ClaimFloor(sweep_every_seconds=1.0, margin_seconds=1.0)
    floor.floor_for_next(0.0)
    floor.observe(T0 + timedelta(seconds=10), across(10, rows(T0)))
    floor.floor_for_next(0.1)
    floor.observe(T0, across(10))  # an older clock reading (cannot raise, must not lower)
    assert floor.floor == floor.floors[0] == T0 + timedelta(seconds=9)
    floor.observe(T0, across(2, rows(T0, T0)))  # a full claim of older rows cannot lower it either
    assert floor.floor == floor.floors[0] == T0 + timedelta(seconds=9)


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


def test_a_claim_asks_at_each_known_priority_then_across_the_others() -> None:
    """The planner's statements, in order: the first claim is one statement with no floor; later
    ones ask each known priority from its own floor, then every other priority, and stop once full."""
    queue = Claims(sweep_every_seconds=1e12)
    queue.add("zero", T0, priority=0)
    assert queue.claim(T0, 0.0, 2) == ["zero"]
    assert [q.statement for q in queue.tasks.statements] == [sql.CLAIM_NEXT]
    assert queue.tasks.statements[0].params["floor"] == EARLIEST
    queue.tasks.statements.clear()
    queue.add("five", T0 + timedelta(seconds=1), priority=5)
    assert queue.claim(T0 + timedelta(seconds=2), 1.0, 2) == ["five"]
    at_zero, others = queue.tasks.statements
    assert at_zero.statement is sql.CLAIM_AT_PRIORITY and at_zero.params["priority"] == 0
    assert others.statement is sql.CLAIM_OTHER_PRIORITIES and others.params["limit"] == 2
    assert (others.params["above"], others.params["below"]) == ([0, PRIORITY_MIN - 1], [PRIORITY_MAX + 1, 0])
    queue.tasks.statements.clear()
    for i in range(3):
        queue.add(f"z{i}", T0 + timedelta(seconds=2), priority=0)
    # Priority 0 came back empty last time, so it is forgotten: asked only among the others.
    assert queue.claim(T0 + timedelta(seconds=3), 2.0, 2) == ["z0", "z1"]
    assert [q.params.get("priority") for q in queue.tasks.statements] == [5, None]
    queue.tasks.statements.clear()
    assert queue.claim(T0 + timedelta(seconds=3), 3.0, 1) == ["z2"]  # seen again: asked by itself, full
    assert [(q.statement, q.params.get("priority")) for q in queue.tasks.statements] == [(sql.CLAIM_AT_PRIORITY, 0)]
