"""Every statement the worker repeats stays linear in the rows it touches, whatever the statistics.

The shape users live in: statistics (and, with psycopg's defaults, prepared plans) taken while the
table was empty, then a burst makes it large within a second, faster than autovacuum re-analyzes
it. Each statement runs on the empty, analyzed table first (a worker polling an idle queue), then
against 20,000 pending and 20,000 running rows, first with no lock expired (the burst), then with
1,000 expired (a dead worker; the rescue takes them a batch at a time).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

import tasklib
from tasklib import listing, sql
from tasklib.db import (
    CLAIM_PLANNER_SETTINGS,
    TAG_INDEX_PLANNER_SETTINGS,
    TAG_WALK_PLANNER_SETTINGS,
    WRITE_PLANNER_SETTINGS,
    connect_kwargs,
    set_statement,
)
from tasklib.outcome import Action
from tasklib.states import TaskState
from tasklib.worker.claim import EARLIEST, ClaimFloor, Step, claim_statement, other_priorities
from tasklib.worker.liveness import RESCUE_BATCH

NAME = "tests.integration.jobs.mark"
#: The session settings of the worker's claim and write connections, applied as the worker does.
CLAIM_SETTINGS = set_statement(CLAIM_PLANNER_SETTINGS)
WRITE_SETTINGS = set_statement(WRITE_PLANNER_SETTINGS)
SLOT_NAME = "tests.integration.recurring_jobs.tick"  # slot rows are counted apart from NAME's
#: 50 ms for a few hundred rows is some 10-20x what each statement takes here; a plan that grows
#: with the table (a sort of every pending row, a nested loop over running rows) takes seconds.
BOUND_SECONDS = 0.05

Claim = tuple[uuid.UUID, str, datetime]  # id, worker id, started_at
Statement = tuple[str, str, list[dict[str, Any]]]  # connection settings, SQL, parameters for each run


def _worker_connection(url: str, settings: str) -> psycopg.Connection[Any]:
    """A connection set up as the worker's claim or write connection is (``_connections``)."""
    conn = psycopg.connect(url, **connect_kwargs("tasklib-worker test"))
    conn.execute(settings)
    return conn


def _insert(conn: psycopg.Connection[Any], state: str, count: int, lock: str = "") -> list[Claim]:
    running = state == "running"
    return conn.execute(
        "INSERT INTO tasks (id, name, kwargs, state, max_retries, scheduled_at, created_at, priority,"
        "                   worker_id, started_at, locked_until)"
        " SELECT gen_random_uuid(), %(name)s, '{}', %(state)s, 3, now() - interval '1 minute', now(), 0,"
        "        CASE WHEN %(running)s THEN 'w' END, CASE WHEN %(running)s THEN now() END,"
        "        CASE WHEN %(running)s THEN now() + CAST(%(lock)s AS interval) END"
        " FROM generate_series(1, %(count)s) RETURNING id, worker_id, started_at",
        {"name": NAME, "state": state, "count": count, "running": running, "lock": lock or "0 s"},
    ).fetchall()


def _insert_spread(conn: psycopg.Connection[Any], count: int, since: str, step: str) -> None:
    """``count`` pending rows of priority 0, the first due ``since`` ago, each ``step`` after the last."""
    conn.execute(
        "INSERT INTO tasks (id, name, kwargs, state, max_retries, scheduled_at, created_at, priority)"
        " SELECT gen_random_uuid(), %(name)s, '{}', 'pending', 3,"
        "        now() - CAST(%(since)s AS interval) + g * CAST(%(step)s AS interval), now(), 0"
        " FROM generate_series(1, %(count)s) AS g",
        {"name": NAME, "since": since, "step": step, "count": count},
    )


def _statements(batches: list[list[Claim]], expired: list[list[Claim]]) -> dict[str, Statement]:
    """Each statement with one parameter set per run (distinct rows, so no run sees another's effect)."""
    done = Action(TaskState.COMPLETED, 0, result_json="1")
    lost = Action(TaskState.PENDING, 1, error="WorkerLost", delay_seconds=5.0)
    runs = range(len(batches))
    claim = {"names": [NAME], "limit": 256, "floor": EARLIEST, "worker_id": "w2", "lock_seconds": 60.0}
    ids = [[c[0] for c in batch] for batch in batches]
    return {
        "claim 256": (CLAIM_SETTINGS, sql.CLAIM_NEXT, [claim for _ in runs]),
        # Past a known priority 5: the rows (all of priority 0) lie in the second range, below it.
        "claim of the other priorities 256": (
            CLAIM_SETTINGS,
            sql.CLAIM_OTHER_PRIORITIES,
            [dict(zip(("above", "below"), other_priorities([5]), strict=True), **claim) for _ in runs],
        ),
        "sweep step 256": (CLAIM_SETTINGS, sql.CLAIM_IN_WINDOW, [{**claim, "below": datetime.now(UTC)} for _ in runs]),
        "heartbeat 256": (
            WRITE_SETTINGS,
            sql.HEARTBEAT,
            [{"ids": i, "worker_id": "w", "lock_seconds": 600.0} for i in ids],
        ),
        "find expired locks": (WRITE_SETTINGS, sql.EXPIRED_CLAIMS, [{"limit": RESCUE_BATCH} for _ in runs]),
        "rescue expired": (
            WRITE_SETTINGS,
            sql.RESCUE_MANY,
            [sql.outcome_params(((c[0], c[2], lost) for c in batch), "w") for batch in expired],
        ),
        "finish 256": (
            WRITE_SETTINGS,
            sql.FINISH_MANY,
            [sql.outcome_params(((c[0], c[2], done) for c in b), "w") for b in batches],
        ),
        # Every running row's worker, against the sessions open: reads the lock index only.
        "vanished workers": (WRITE_SETTINGS, sql.VANISHED_WORKERS, [{} for _ in runs]),
        # The claims of one worker whose sessions closed (nobody named w is connected).
        "claims of a vanished session": (
            WRITE_SETTINGS,
            sql.CLAIMS_OF_SESSION,
            [{"session": "tasklib-worker w", "limit": RESCUE_BATCH} for _ in runs],
        ),
        # The scheduler's pass (its connection has the write settings): a slot nobody inserted yet.
        "slot insert": (WRITE_SETTINGS, sql.INSERT_SLOT, [_slot_params() for _ in runs]),
    }


def _slot_params() -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "name": SLOT_NAME,
        "kwargs": "{}",
        "max_retries": 3,
        "at": datetime.now(UTC),
        "timeout": None,
        "priority": 0,
        "tags": None,
        "unique_key": f"tasklib.slot:{SLOT_NAME}:{uuid.uuid4().int}",
    }


def _best_time(conn: psycopg.Connection[Any], query: str, runs: list[dict[str, Any]], prepared: bool) -> float:
    """Autocommit, as the worker runs it (a rolled-back transaction around it can change the plan used)."""
    best = float("inf")
    for params in runs:
        started = time.perf_counter()
        conn.execute(query, params, prepare=prepared or None).fetchall()  # type: ignore[arg-type]
        best = min(best, time.perf_counter() - started)  # the best run: this machine is shared
    return best


@pytest.mark.parametrize("prepared", [False, True], ids=["tasklib-connections", "forced-prepare"])
def test_worker_statements_stay_linear_after_an_empty_table_fills(tl: tasklib.Config, prepared: bool) -> None:
    """``tasklib-connections`` runs each statement as the worker does; ``forced-prepare`` prepares
    each one on the empty table, so the shapes themselves are checked, not only rule 1 in tasklib.db."""
    url = tl.database_url
    assert url is not None
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute("VACUUM ANALYZE tasks")  # statistics now say: empty
        conns = {settings: _worker_connection(url, settings) for settings in (CLAIM_SETTINGS, WRITE_SETTINGS)}
        timings: dict[str, float] = {}
        try:
            # Idle polling on the empty table: with psycopg's default, the sixth run would prepare.
            nothing = [[(uuid.uuid4(), "w", datetime.now(UTC))]] * 8
            for options, query, runs in _statements(nothing, nothing).values():
                for params in runs:
                    conns[options].execute(query, params, prepare=prepared or None)  # type: ignore[arg-type]
            _insert(admin, "pending", 20_000)
            running = _insert(admin, "running", 20_000, lock="10 minutes")
            batches = [running[i * 256 : (i + 1) * 256] for i in range(3)]
            # A burst: many running rows, no lock expired.
            for name, (options, query, runs) in _statements(batches, [[]] * 3).items():
                timings[f"{name} (burst)"] = _best_time(conns[options], query, runs, prepared)
            # A dead worker's claims, taken a batch at a time.
            expired = _insert(admin, "running", 3 * RESCUE_BATCH, lock="-1 second")
            dead = [expired[i * RESCUE_BATCH : (i + 1) * RESCUE_BATCH] for i in range(3)]
            for name, (options, query, runs) in _statements(batches, dead).items():
                if "expired" in name:
                    timings[f"{name} (dead worker)"] = _best_time(conns[options], query, runs, prepared)
            states = dict(
                admin.execute("SELECT state, count(*) FROM tasks WHERE name = %s GROUP BY state", [NAME]).fetchall()
            )
        finally:
            for conn in conns.values():
                conn.close()
    # The statements did their work: 9 claims (3 of each shape), 3 finishes, 3 rescues of 256 rows each.
    assert states == {"pending": 20_000 - 2304 + 768, "running": 20_000 + 2304 - 768, "completed": 768}, states
    slow = {name: round(seconds * 1000, 1) for name, seconds in timings.items() if seconds > BOUND_SECONDS}
    assert not slow, f"statements slower than {BOUND_SECONDS * 1000:.0f} ms (ms): {slow}"


def test_claim_and_id_statements_keep_their_plans(tl: tasklib.Config) -> None:
    """The plans that matter, read back: the claim walks tasks_pending_idx in order (no sort), the
    statements that name rows by id use the primary key only, the rescue scan reads the lock index."""
    url = tl.database_url
    assert url is not None
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute("VACUUM ANALYZE tasks")
        _insert(admin, "pending", 5000)
        running = _insert(admin, "running", 300, lock="10 minutes")
    expected = {
        "claim 256": ("tasks_pending_idx", ("Sort", "Seq Scan", "Bitmap")),
        "sweep step 256": ("tasks_pending_idx", ("Sort", "Seq Scan", "Bitmap")),
        "claim of the other priorities 256": ("tasks_pending_idx", ("Sort", "Seq Scan", "Bitmap")),
        "finish 256": ("tasks_pkey", ("Join", "Seq Scan", "tasks_state_created_idx")),
        "heartbeat 256": ("tasks_pkey", ("Join", "Seq Scan", "tasks_state_created_idx")),
        "find expired locks": ("tasks_locked_idx", ("Seq Scan", "tasks_state_created_idx")),
        "rescue expired": ("tasks_pkey", ("Join", "Seq Scan", "tasks_state_created_idx")),
        "slot insert": ("tasks_unique_key_idx", ("Seq Scan",)),
        "vanished workers": ("tasks_locked_idx", ("Seq Scan", "Bitmap", "Gather")),
        "claims of a vanished session": ("tasks_locked_idx", ("Seq Scan", "Bitmap", "Gather", "Sort")),
    }
    for name, (options, query, runs) in _statements([running[:256]], [running[:10]]).items():
        with _worker_connection(url, options) as conn:
            plan = "\n".join(r[0] for r in conn.execute("EXPLAIN " + query, runs[0]).fetchall())  # type: ignore[operator]
        uses, never = expected[name]
        assert uses in plan and not any(word in plan for word in never), (name, plan)


def test_name_filters_read_one_range_per_state_and_keep_the_order(tl: tasklib.Config) -> None:
    """Dashboard lists filtered by name: "failed tasks of a name that never failed" must not walk
    every failed row, and a name alone must not sort all of that name's rows. The merged page must
    be the same rows, in the same order, as the plain query."""
    with psycopg.connect(tl.database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO tasks (id, name, kwargs, state, created_at, completed_at, started_at, worker_id)"
            " SELECT gen_random_uuid(), 'app.job_' || (g % 20), '{}',"
            " CASE WHEN g % 20 < 10 AND g % 4 = 0 THEN 'failed' WHEN g % 7 = 0 THEN 'cancelled' ELSE 'completed' END,"
            " now() - g * interval '1 second', now(), now(), 'w'"
            " FROM generate_series(1, 60000) AS g"
        )
        conn.execute("ANALYZE tasks")

        def plan(**filters: Any) -> str:
            query, params = listing.page_query(**filters)
            return "\n".join(r[0] for r in conn.execute("EXPLAIN " + query, {**params, "limit": 51}).fetchall())

        empty_pair = plan(state="failed", name="app.job_15")
        assert "tasks_name_state_created_idx" in empty_pair and "tasks_state_created_idx" not in empty_pair, empty_pair
        by_name = plan(name="app.job_3")
        assert "Seq Scan" not in by_name and "Bitmap" not in by_name, by_name
        assert "Merge Append" in by_name, by_name  # short ordered walks per state, merged: no sort of every row

        _assert_pages_match_the_plain_query(conn, name="app.job_3")


def test_lists_across_states_merge_one_ordered_walk_per_state(tl: tasklib.Config) -> None:
    """With no index on created order alone (schema 6), a list of every state, newest or oldest
    first, is one short walk of tasks_state_created_idx per state, merged: never a sort of the
    table. Each page must be the rows, in the order, of the plain query. ``page_query`` with a tag
    reads the tag's own index (the dashboard's answer when its bounded walks cannot tell)."""
    with psycopg.connect(tl.database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO tasks (id, name, kwargs, state, created_at, completed_at, started_at, worker_id, locked_until)"
            " SELECT gen_random_uuid(), 'app.job_' || (g % 20), '{}',"
            " CASE WHEN g % 50 = 0 THEN 'running' WHEN g % 11 = 0 THEN 'failed' WHEN g % 7 = 0 THEN 'pending'"
            " ELSE 'completed' END,"
            " now() - (g / 3) * interval '1 second', now(), now(), 'w', now()"
            " FROM generate_series(1, 60000) AS g"
        )
        conn.execute(
            "UPDATE tasks SET completed_at = NULL, started_at = NULL, worker_id = NULL, locked_until = NULL"
            " WHERE state = 'pending'"
        )
        conn.execute("UPDATE tasks SET locked_until = NULL WHERE state <> 'running'")
        conn.execute(
            "UPDATE tasks SET tags = jsonb_build_object('batch', 'b' || (created_at::time::text)) WHERE random() < 0.01"
        )
        conn.execute("ANALYZE tasks")
        # The tag index's query: the tag's rows sorted once, not a walk of every state's rows.
        query, params = listing.page_query(tag=("batch", "b00:00:00"))
        plan = "\n".join(r[0] for r in conn.execute("EXPLAIN " + query, {**params, "limit": 51}).fetchall())
        assert "tasks_tagged_idx" in plan and "Merge Append" not in plan, plan
        for descending in (True, False):
            query, params = listing.page_query(descending=descending)
            plan = "\n".join(r[0] for r in conn.execute("EXPLAIN " + query, {**params, "limit": 51}).fetchall())
            assert "Merge Append" in plan and "Seq Scan" not in plan and "Bitmap" not in plan, plan
            assert "Sort" not in plan.replace("Sort Key", ""), plan  # each walk comes out in order
            _assert_pages_match_the_plain_query(conn, descending=descending)


def test_tag_lists_walk_a_bounded_range_per_state_or_ask_the_tag_index(tl: tasklib.Config) -> None:
    """A tag many recent rows hold is read like any list, one walk per state that stops at
    TAG_WALK_ROWS rows, not by sorting every row that holds the tag (400 ms for 50,000 of them in a
    five-million-row table); a tag no recent row holds is left to the tag index. Either way each
    keyset page, newest or oldest first, holds the rows, in the order, of the plain query."""
    from tasklib.db import Database
    from tasklib.filters import TaskFilter
    from tasklib.monitor import Monitor, merge_tag_walks

    with psycopg.connect(tl.database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO tasks (id, name, kwargs, state, created_at, completed_at, started_at, worker_id, tags)"
            " SELECT gen_random_uuid(), 'app.job_' || (g % 20), '{}',"
            " CASE WHEN g % 11 = 0 THEN 'failed' WHEN g % 7 = 0 THEN 'cancelled' ELSE 'completed' END,"
            " now() - (g / 3) * interval '1 second', now(), now(), 'w',"
            # "common": 1 row in 40 throughout; "old": only rows older than the newest 40,000.
            ' CASE WHEN g % 40 = 0 THEN \'{"batch": "common"}\'::jsonb'
            ' WHEN g > 40000 AND g % 40 = 1 THEN \'{"batch": "old"}\'::jsonb END'
            " FROM generate_series(1, 60000) AS g"
        )
        conn.execute("ANALYZE tasks")

    db = Database(tl.database_url)  # type: ignore[arg-type]
    monitor = Monitor(db)

    def plan(query: str, params: dict[str, Any], settings: dict[str, str]) -> str:
        """The plan under those settings, set the way the dashboard sets them (``Database.rows``)."""
        return "\n".join(
            r[0] for r in db.rows("EXPLAIN " + query, {**params, "limit": 51}, as_dict=False, settings=settings)
        )

    try:
        walks = plan(*listing.tag_walk_query(tag=("batch", "common")), TAG_WALK_PLANNER_SETTINGS)
        assert "tasks_state_created_idx" in walks and "Seq Scan" not in walks and "Bitmap" not in walks, walks
        assert "Sort" not in walks.replace("Sort Key", ""), walks  # each walk comes out in order
        # When the walks cannot tell, the tag index answers, through bitmaps only: never a walk of a
        # state's range that filters every row of it (the walks have just been tried). Without the
        # settings, this one is walked.
        index = plan(*listing.page_query(state="completed", tag=("batch", "old")), TAG_INDEX_PLANNER_SETTINGS)
        assert "tasks_tagged_idx" in index and "Index Scan using" not in index and "Seq Scan" not in index, index

        # (tag, newest first, walks tell the page): the old rows are where an oldest-first walk starts.
        for tag, descending, answered in (
            (("batch", "common"), True, True),
            (("batch", "common"), False, True),
            (("batch", "old"), True, False),
            (("batch", "old"), False, True),
        ):
            query, params = listing.tag_walk_query(descending=descending, tag=tag)
            walks = db.rows(query, {**params, "limit": 51}, settings=TAG_WALK_PLANNER_SETTINGS)
            assert (merge_tag_walks(walks, 51, descending) is not None) is answered, (tag, descending)
            order = "DESC" if descending else "ASC"
            cursor: str | None = None
            keyset: tuple[object, object] | None = None
            for _ in range(3):
                page = monitor.page(TaskFilter(tag=tag), after=cursor, oldest_first=not descending)
                where, plain_params = listing.filter_clause(tag=tag, cursor=keyset, cursor_op="<" if descending else ">")
                plain = db.rows(
                    f"SELECT id FROM tasks {where} ORDER BY created_at {order}, id {order} LIMIT 50", plain_params
                )
                assert [t.id for t in page.tasks] == [r["id"] for r in plain] and len(plain) == 50, (tag, descending)
                cursor, keyset = page.next, (page.tasks[-1].created_at, page.tasks[-1].id)
    finally:
        db.close()


def _assert_pages_match_the_plain_query(conn: psycopg.Connection[Any], descending: bool = True, **filters: Any) -> None:
    """Three keyset pages of ``listing.page_query`` hold the rows, in the order, of one plain query."""
    order = "DESC" if descending else "ASC"
    cursor = None
    for _ in range(3):
        query, params = listing.page_query(descending=descending, cursor=cursor, **filters)
        merged = [r[0] for r in conn.execute(query, {**params, "limit": 51}).fetchall()]
        where, plain_params = listing.filter_clause(cursor=cursor, cursor_op="<" if descending else ">", **filters)
        plain = [
            r[0]
            for r in conn.execute(
                f"SELECT id FROM tasks {where} ORDER BY created_at {order}, id {order} LIMIT 51", plain_params
            ).fetchall()
        ]
        assert merged == plain and len(merged) == 51
        last = conn.execute("SELECT created_at, id FROM tasks WHERE id = %s", [merged[-1]]).fetchone()
        cursor = (last[0], last[1])  # type: ignore[index]


def test_retention_and_schedule_reads_stay_on_their_indexes(tl: tasklib.Config) -> None:
    """Prune walks tasks_completed_idx from its keyset (not the table); the Schedules page reads
    tasks_slot_idx, one probe per recurring task, however many slots have accumulated."""
    with psycopg.connect(tl.database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO tasks (id, name, kwargs, state, created_at, scheduled_at, started_at, completed_at, unique_key)"
            " SELECT gen_random_uuid(), 'app.job_' || (g % 3), '{}',"
            "        CASE WHEN g % 5 = 0 THEN 'pending' ELSE 'completed' END,"
            "        t, t, t, CASE WHEN g % 5 <> 0 THEN t END,"
            "        CASE WHEN g % 2 = 0 THEN 'tasklib.slot:app.job_' || (g % 3) || ':' || g END"
            " FROM (SELECT g, now() - g * interval '1 second' AS t FROM generate_series(1, 60000) AS g) AS s"
        )
        conn.execute("ANALYZE tasks")
        prune = "\n".join(
            r[0]
            for r in conn.execute(
                "EXPLAIN " + sql.PRUNE_BATCH,
                {
                    "state": "completed",
                    "before": datetime.now(UTC),
                    "after": datetime(2026, 1, 1, tzinfo=UTC),
                    "limit": 5000,
                },
            ).fetchall()
        )
        assert "tasks_completed_idx" in prune and "Seq Scan" not in prune and "Sort" not in prune, prune
        schedules = "\n".join(r[0] for r in conn.execute("EXPLAIN " + sql.SCHEDULES, {}).fetchall())
        # (the one sort is of the recurring tasks' names, a handful of rows)
        assert "tasks_slot_idx" in schedules and "Seq Scan" not in schedules and "Sort Key: tasks" not in schedules
        assert "tasks_pending_idx" not in schedules, schedules
        started = time.perf_counter()
        rows = conn.execute(sql.SCHEDULES, {}).fetchall()
        assert [r[0] for r in rows] == ["app.job_0", "app.job_1", "app.job_2"]
        assert time.perf_counter() - started < BOUND_SECONDS


def _plan_sum(plan: dict[str, Any], match: tuple[str, str], fields: tuple[str, ...]) -> int:
    """The sum of ``fields`` over the nodes of an EXPLAIN JSON plan where ``node[match[0]] == match[1]``."""
    own = sum(int(plan[f]) for f in fields) if plan.get(match[0]) == match[1] else 0
    return own + sum(_plan_sum(child, match, fields) for child in plan.get("Plans", []))


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
            claim = {"names": [NAME], "limit": 256, "floor": floor, "worker_id": "w2", "lock_seconds": 60.0}
            with _worker_connection(url, CLAIM_SETTINGS) as conn:
                buffers = taken = 0
                for priority, at in [*floor_state.priorities_for(floor), (None, floor)]:  # as TaskWorker._claim does
                    statement = sql.CLAIM_NEXT if priority is None else sql.CLAIM_AT_PRIORITY
                    with conn.transaction(force_rollback=True):
                        params = {**claim, "floor": at, "priority": priority, "limit": 256 - taken}
                        (plan,) = conn.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + statement, params).fetchone()  # type: ignore[misc]
                    top = plan[0]["Plan"]
                    buffers += _plan_sum(
                        top, ("Index Name", "tasks_pending_idx"), ("Shared Hit Blocks", "Shared Read Blocks")
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
            claim = {"names": [NAME], "floor": floor, "worker_id": "w2", "lock_seconds": 60.0}
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
                        plan[0]["Plan"], ("Index Name", "tasks_pending_idx"), ("Shared Hit Blocks", "Shared Read Blocks")
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
            claim = {"names": names, "worker_id": "w2", "lock_seconds": 60.0, "limit": 256, "priority": None}
            returned = "SELECT pg_stat_get_xact_tuples_returned('tasks_pending_idx'::regclass)"
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


def test_the_look_for_vanished_workers_reads_the_lock_index_without_parallel_workers(tl: tasklib.Config) -> None:
    """Statistics taken while 100,000 tasks were running, then all of them finished (their lock-index
    entries dead, not yet vacuumed), 64 running now. On the worker's write connection the look is a
    plain index scan (it marks the dead entries as it passes, so the next look skips them), never a
    bitmap scan (which marks nothing) or a Gather (parallel workers for a few rows)."""
    url = tl.database_url
    assert url is not None
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute("ALTER TABLE tasks SET (autovacuum_enabled = false)")
        _insert(admin, "running", 100_000, lock="10 minutes")
        admin.execute("ANALYZE tasks")
        admin.execute("UPDATE tasks SET state = 'completed', locked_until = NULL, completed_at = now()")
        _insert(admin, "running", 64, lock="10 minutes")
    with _worker_connection(url, WRITE_SETTINGS) as conn:
        assert conn.execute(sql.VANISHED_WORKERS, {}).fetchall() == [("w",)]  # nobody named w is connected
        (plan,) = conn.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql.VANISHED_WORKERS, {}).fetchone()  # type: ignore[misc]
    text = json.dumps(plan)
    nodes = re.findall(r'"Node Type": "([^"]+)"', text)
    assert "tasks_locked_idx" in text and not any(word in " ".join(nodes) for word in ("Bitmap", "Gather")), nodes
    buffers = _plan_sum(plan[0]["Plan"], ("Index Name", "tasks_locked_idx"), ("Shared Hit Blocks", "Shared Read Blocks"))
    assert buffers < 100, buffers  # the 64 live rows' pages; the 100,000 dead entries were marked by the first look
