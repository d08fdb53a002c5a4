"""Claims under a held snapshot: while a long transaction elsewhere keeps the index entries of
every claimed task, a claim walks what it takes, not what was taken before it, and a sweep finds a
late task among them in bounded steps (docs/design/claim.md)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

import tasklib
from tasklib import sql
from tasklib.worker.claim import EARLIEST, ClaimFloor, Step, claim_statement, queue_params
from tests.integration.test_plans import CLAIM_SETTINGS, NAME, _insert_spread, _plan_sum, _worker_connection


@contextmanager
def _claimed_under_a_held_snapshot(admin: psycopg.Connection[Any], url: str, which: str) -> Iterator[datetime]:
    """VACUUM, then a session sits idle in transaction (nothing claimed from here on can be cleaned
    while it does), then worker w claims the rows ``which`` selects (ids, with NAME as parameter):
    the latest ``scheduled_at`` it took."""
    admin.execute("VACUUM ANALYZE tasks")
    with psycopg.connect(url) as holder:
        holder.execute("SELECT txid_current()")
        (last,) = admin.execute(
            "WITH c AS (UPDATE tasks SET state = 'running', worker_id = 'w', started_at = now(),"
            f"          locked_until = now() + interval '1 hour' WHERE id IN ({which}) RETURNING scheduled_at)"
            " SELECT max(scheduled_at) FROM c",
            {"name": NAME},
        ).fetchone()  # type: ignore[misc]
        yield last


def test_a_floored_claim_steps_over_what_a_held_snapshot_keeps(tl: tasklib.Config) -> None:
    """100,000 claimed tasks whose pending-index entries an open snapshot keeps, 2,000 waiting above
    the floor: the claims the worker makes there walk about what they take, not the 100,000.

    A claim across all priorities cannot start its index scan at the floor (the index leads with
    priority) and steps over every kept entry before it: 16x the buffers here, growing with the
    snapshot's age and lasting until VACUUM. The worker asks per priority it knows (``_claim``)."""
    url = tl.database_url
    assert url is not None
    with psycopg.connect(url, autocommit=True) as admin:
        _insert_spread(admin, 102_000, since="10 minutes", step="1 millisecond")
        with _claimed_under_a_held_snapshot(
            admin, url, "SELECT id FROM tasks ORDER BY priority DESC, scheduled_at, id LIMIT 100000"
        ) as last:
            floor_state = ClaimFloor(sweep_every_seconds=3600)
            floor_state.floor_for_next(0.0)  # the first claim sweeps…
            full = Step(None, 256, [(0, last)] * 256)
            floor_state.observe(datetime.now(UTC), [full])  # …and was full
            floor = floor_state.floor_for_next(1.0)  # the common floor: a full sweep leaves it low…
            assert [at for _, at in floor_state.priorities_for(floor)] != [EARLIEST]  # …priority 0's is high
            claim = {
                "names": [NAME],
                "limit": 256,
                "floor": floor,
                "worker_id": "w2",
                "lock_seconds": 60.0,
                **queue_params(),
            }
            with _worker_connection(url, CLAIM_SETTINGS) as conn:
                buffers = taken = 0
                for priority, at in [*floor_state.priorities_for(floor), (None, floor)]:  # as TaskWorker._claim does
                    statement = sql.CLAIM_NEXT if priority is None else sql.CLAIM_AT_PRIORITY
                    with conn.transaction(force_rollback=True):
                        params = {**claim, "floor": at, "priority": priority, "limit": 256 - taken}
                        (plan,) = conn.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + statement, params).fetchone()  # type: ignore[misc]
                    top = plan[0]["Plan"]
                    buffers += _plan_sum(
                        top, ("Index Name", "tasks_queue_pending_idx"), ("Shared Hit Blocks", "Shared Read Blocks")
                    )
                    taken += _plan_sum(top, ("Node Type", "ModifyTable"), ("Actual Rows",))
                    if taken >= 256:
                        break
    # The index pages and heap pages of the 256 rows: 38 here. Across all priorities: 631.
    assert taken == 256 and buffers < 200, (taken, buffers)


def test_a_claim_past_its_known_priorities_steps_over_none_of_their_kept_entries(tl: tasklib.Config) -> None:
    """100,000 claimed priority-0 tasks whose index entries an open snapshot keeps, 5 still waiting
    at priority 0 (known, its floor just below them) and 3 each at priorities 7 and -2, never seen,
    on either side of it in the index. The common floor lags 10 minutes (claims were full until
    now). A claim of 9, made as TaskWorker._claim makes it, comes back short at priority 0, then its
    statement over the other priorities takes four others, highest first, without walking the
    kept entries between the common floor and priority 0's floor: one across all priorities from
    the common floor visits the heap for each of the 100,000 (106 ms seen in a benchmark run)."""
    url = tl.database_url
    assert url is not None
    with psycopg.connect(url, autocommit=True) as admin:
        _insert_spread(admin, 100_005, since="10 minutes", step="5 milliseconds")
        admin.execute(
            "INSERT INTO tasks (id, name, kwargs, state, max_retries, scheduled_at, created_at, priority)"
            " SELECT gen_random_uuid(), %s, '{}', 'pending', 3, now() - g * interval '1 second', now(), p"
            " FROM generate_series(1, 3) AS g, (VALUES (7), (-2)) AS v(p)",
            [NAME],
        )
        with _claimed_under_a_held_snapshot(
            admin, url, "SELECT id FROM tasks WHERE priority = 0 ORDER BY scheduled_at, id LIMIT 100000"
        ) as last:
            floor_state = ClaimFloor(sweep_every_seconds=3600, margin_seconds=0.1)
            floor_state.floor_for_next(0.0)
            stale = datetime.now(UTC) - timedelta(minutes=10)
            floor_state.observe(stale, [Step(None, 256)])  # the last short claim: 10 minutes ago
            floor_state.observe(last + timedelta(seconds=0.1), [Step(0, 256, [(0, last)] * 256)])  # full since
            floor = floor_state.floor_for_next(1.0)
            known = floor_state.priorities_for(floor)
            assert floor < stale and [p for p, _ in known] == [0]
            claim = {"names": [NAME], "floor": floor, "worker_id": "w2", "lock_seconds": 60.0, **queue_params()}
            with _worker_connection(url, CLAIM_SETTINGS) as conn:
                buffers, taken = 0, []
                for priority, at in [*known, (None, floor)]:  # as TaskWorker._claim does
                    statement, params = claim_statement(priority, None, [p for p, _ in known])
                    params = {**claim, **params, "floor": at, "limit": 9 - len(taken)}
                    with conn.transaction(force_rollback=True):
                        (plan,) = conn.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + statement, params).fetchone()  # type: ignore[misc]
                    with conn.transaction():
                        taken += [row[7] for row in conn.execute(statement, params) if row[1] is not None]
                    buffers += _plan_sum(
                        plan[0]["Plan"],
                        ("Index Name", "tasks_queue_pending_idx"),
                        ("Shared Hit Blocks", "Shared Read Blocks"),
                    )
    assert sorted(taken) == [-2, 0, 0, 0, 0, 0, 7, 7, 7], taken  # (RETURNING comes in no particular order)
    # The index and heap pages of the 9 rows and of the ranges' edges: 16 here. Across
    # all priorities from the common floor: 2,518.
    assert buffers < 200, buffers


def test_a_sweep_under_a_held_snapshot_goes_in_windows_and_finds_the_straggler(tl: tasklib.Config) -> None:
    """100,000 tasks claimed over the last 20 s, their pending-index entries kept by an open
    snapshot; one task among them still pending (its lock was held elsewhere when the claims
    passed), below every floor. One statement from EARLIEST visits the heap for every kept entry.
    The sweep's steps, run as TaskWorker._claim runs them, take the straggler, and no step visits
    more than a quarter of those entries: an entry outside a step's window is rejected on the index
    key, without a heap visit (a bound tested after the fetch would visit them all).

    The index entries each step returns to the executor (one heap visit each) are read from the
    statistics; each step's time is taken as proportional to them, so the windows are sized the
    same way on any machine."""
    url = tl.database_url
    assert url is not None
    with psycopg.connect(url, autocommit=True) as admin:
        _insert_spread(admin, 100_000, since="20 seconds", step="200 microseconds")
        (straggler,) = admin.execute(
            "UPDATE tasks SET name = %s WHERE id = (SELECT id FROM tasks ORDER BY scheduled_at OFFSET 50000 LIMIT 1)"
            " RETURNING id",
            [NAME + "_late"],
        ).fetchone()  # type: ignore[misc]
        with _claimed_under_a_held_snapshot(admin, url, "SELECT id FROM tasks WHERE name = %(name)s") as last:
            names = [NAME, NAME + "_late"]
            floor_state = ClaimFloor(sweep_every_seconds=0.0)
            floor_state.floor_for_next(0.0)
            # The claims came back short as the last of them was taken: the floors are just below it.
            floor_state.observe(last + timedelta(seconds=0.1), [Step(None, 256)])
            claim = {
                "names": names,
                "worker_id": "w2",
                "lock_seconds": 60.0,
                **queue_params(),
                "limit": 256,
                "priority": None,
            }
            returned = "SELECT pg_stat_get_xact_tuples_returned('tasks_queue_pending_idx'::regclass)"
            with _worker_connection(url, CLAIM_SETTINGS) as conn:

                def run(statement: str, params: dict[str, Any], keep: bool) -> tuple[list[Any], int]:
                    with conn.transaction(force_rollback=not keep):
                        (before,) = conn.execute(returned).fetchone()  # type: ignore[misc]
                        rows = conn.execute(statement, params).fetchall()
                        (after,) = conn.execute(returned).fetchone()  # type: ignore[misc]
                    return [r for r in rows if r[1] is not None], after - before

                _, whole = run(sql.CLAIM_NEXT, {**claim, "floor": EARLIEST}, keep=False)
                floor_state.floor_for_next(1.0)  # a sweep is due
                visits, taken = [], []
                while (window := floor_state.sweep_window()) is not None:
                    rows, entries = run(sql.CLAIM_IN_WINDOW, {**claim, "floor": window[0], "below": window[1]}, keep=True)
                    visits.append(entries)
                    taken += [r[1] for r in rows]
                    seconds = 0.005 + entries * 2e-6  # a few ms of walking the index, 2 us a heap visit
                    floor_state.swept(Step(None, 256, [(0, r[9]) for r in rows], window, seconds))
    assert whole >= 100_000, whole
    assert taken == [straggler] and len(visits) > 4, (taken, visits)
    assert max(visits) < whole / 4, visits
