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
from datetime import UTC, datetime
from typing import Any

import psycopg

import tasklib
from tasklib import sql
from tasklib.db import (
    CLAIM_PLANNER_SETTINGS,
    WRITE_PLANNER_SETTINGS,
    connect_kwargs,
    set_statement,
)
from tasklib.outcome import Action
from tasklib.states import TaskState
from tasklib.worker.claim import EARLIEST, other_priorities, queue_params
from tasklib.worker.liveness import RESCUE_BATCH
from tests.workers import wait_for

NAME = "tests.integration.jobs.mark"
#: The session settings of the worker's claim and write connections, applied as the worker does,
#: and of an application's connection (none).
CLAIM_SETTINGS = set_statement(CLAIM_PLANNER_SETTINGS)
WRITE_SETTINGS = set_statement(WRITE_PLANNER_SETTINGS)
APP_SETTINGS = "SELECT 1"
SUBMIT_NAME = "tests.integration.jobs.record"  # submitted rows are counted apart from NAME's
SLOT_NAME = "tests.integration.recurring_jobs.tick"  # slot rows are counted apart from NAME's
#: A plan that grows with the table (a sort of every pending row, a nested loop over running rows)
#: takes seconds here; a sane one a few milliseconds, some tens while the parallel suite shares the
#: cores and its workers fill pg_stat_activity (which the vanished-worker look reads).
BOUND_SECONDS = 0.15

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
    claim = {"names": [NAME], "limit": 256, "floor": EARLIEST, "worker_id": "w2", "lock_seconds": 60.0, **queue_params()}
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
        # The claims of one worker whose presence went stale.
        "claims of a stale worker": (
            WRITE_SETTINGS,
            sql.CLAIMS_OF_WORKER,
            [{"worker_id": "w", "limit": RESCUE_BATCH} for _ in runs],
        ),
        # The scheduler's pass (its connection has the write settings): a slot nobody inserted yet.
        "slot insert": (WRITE_SETTINGS, sql.INSERT_SLOT, [_slot_params() for _ in runs]),
        # An application's submit, the one statement TaskLib prepares.
        "submit": (APP_SETTINGS, sql.INSERT_TASK, [_submit_params() for _ in runs]),
    }


def _submit_params() -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "name": SUBMIT_NAME,
        "kwargs": "{}",
        "max_retries": 3,
        "delay": 0.0,
        "timeout": None,
        "priority": 0,
        "tags": None,
        "queue": "default",
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
        "queue": "default",
    }


def _best_time(conn: psycopg.Connection[Any], query: str, runs: list[dict[str, Any]]) -> float:
    """Autocommit, as the worker runs it (a rolled-back transaction around it can change the plan used)."""
    best = float("inf")
    for params in runs:
        started = time.perf_counter()
        conn.execute(query, params, prepare=sql.prepare(query)).fetchall()  # type: ignore[arg-type]
        best = min(best, time.perf_counter() - started)  # the best run: this machine is shared
    return best


def test_worker_statements_stay_linear_after_an_empty_table_fills(tl: tasklib.Config) -> None:
    """Each statement runs as TaskLib runs it: the ``sql.Prepared`` ones prepared on the empty table
    (so marking a statement whose generic plan can go wrong fails here), the others planned afresh."""
    url = tl.database_url
    assert url is not None
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute("VACUUM ANALYZE tasks")  # statistics now say: empty
        conns = {s: _worker_connection(url, s) for s in (CLAIM_SETTINGS, WRITE_SETTINGS, APP_SETTINGS)}
        timings: dict[str, float] = {}
        try:
            # Idle polling on the empty table: with psycopg's default, the sixth run would prepare.
            nothing = [[(uuid.uuid4(), "w", datetime.now(UTC))]] * 8
            for options, query, runs in _statements(nothing, nothing).values():
                for params in runs:
                    conns[options].execute(query, params, prepare=sql.prepare(query))  # type: ignore[arg-type]
            _insert(admin, "pending", 20_000)
            running = _insert(admin, "running", 20_000, lock="10 minutes")
            batches = [running[i * 256 : (i + 1) * 256] for i in range(3)]
            # A burst: many running rows, no lock expired.
            for name, (options, query, runs) in _statements(batches, [[]] * 3).items():
                timings[f"{name} (burst)"] = _best_time(conns[options], query, runs)
            # A dead worker's claims, taken a batch at a time.
            expired = _insert(admin, "running", 3 * RESCUE_BATCH, lock="-1 second")
            dead = [expired[i * RESCUE_BATCH : (i + 1) * RESCUE_BATCH] for i in range(3)]
            for name, (options, query, runs) in _statements(batches, dead).items():
                if "expired" in name:
                    timings[f"{name} (dead worker)"] = _best_time(conns[options], query, runs)
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
    """The plans that matter, read back: the claim walks tasks_queue_pending_idx in order (no sort), the
    statements that name rows by id use the primary key only, the rescue scan reads the lock index."""
    url = tl.database_url
    assert url is not None
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute("VACUUM ANALYZE tasks")
        _insert(admin, "pending", 5000)
        running = _insert(admin, "running", 300, lock="10 minutes")
    expected = {
        "claim 256": ("tasks_queue_pending_idx", ("Sort", "Seq Scan", "Bitmap")),
        "sweep step 256": ("tasks_queue_pending_idx", ("Sort", "Seq Scan", "Bitmap")),
        "claim of the other priorities 256": ("tasks_queue_pending_idx", ("Sort", "Seq Scan", "Bitmap")),
        "finish 256": ("tasks_pkey", ("Join", "Seq Scan", "tasks_state_created_idx")),
        "heartbeat 256": ("tasks_pkey", ("Join", "Seq Scan", "tasks_state_created_idx")),
        "find expired locks": ("tasks_locked_idx", ("Seq Scan", "tasks_state_created_idx")),
        "rescue expired": ("tasks_pkey", ("Join", "Seq Scan", "tasks_state_created_idx")),
        "slot insert": ("tasks_unique_key_idx", ("Seq Scan",)),
        "claims of a stale worker": ("tasks_locked_idx", ("Seq Scan", "Bitmap", "Gather", "Sort")),
        "submit": ("Insert on tasks", ("Index", "Seq Scan", "Bitmap")),  # reads no table
    }
    for name, (options, query, runs) in _statements([running[:256]], [running[:10]]).items():
        with _worker_connection(url, options) as conn:
            plan = "\n".join(r[0] for r in conn.execute("EXPLAIN " + query, runs[0]).fetchall())  # type: ignore[operator]
        uses, never = expected[name]
        assert uses in plan and not any(word in plan for word in never), (name, plan)


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
        assert "tasks_queue_pending_idx" not in schedules, schedules
        started = time.perf_counter()
        rows = conn.execute(sql.SCHEDULES, {}).fetchall()
        assert [r[0] for r in rows] == ["app.job_0", "app.job_1", "app.job_2"]
        assert time.perf_counter() - started < BOUND_SECONDS


def _plan_sum(plan: dict[str, Any], match: tuple[str, str], fields: tuple[str, ...]) -> int:
    """The sum of ``fields`` over the nodes of an EXPLAIN JSON plan where ``node[match[0]] == match[1]``."""
    own = sum(int(plan[f]) for f in fields) if plan.get(match[0]) == match[1] else 0
    return own + sum(_plan_sum(child, match, fields) for child in plan.get("Plans", []))


def test_the_look_for_a_stale_workers_claims_reads_the_lock_index_without_parallel_workers(tl: tasklib.Config) -> None:
    """Statistics taken while 100,000 tasks were running, then all of them finished (their lock-index
    entries dead, not yet vacuumed), 64 running now. On the worker's write connection the look for
    a stale worker's claims is a plain index scan (it marks the dead entries as it passes, so the
    next look skips them), never a bitmap scan (which marks nothing) or a Gather (parallel workers
    for a few rows)."""
    url = tl.database_url
    assert url is not None
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute("ALTER TABLE tasks SET (autovacuum_enabled = false)")
        _insert(admin, "running", 100_000, lock="10 minutes")
        admin.execute("ANALYZE tasks")
        admin.execute("UPDATE tasks SET state = 'completed', locked_until = NULL, completed_at = now()")
        _insert(admin, "running", 64, lock="10 minutes")
    with _worker_connection(url, WRITE_SETTINGS) as conn:
        look = sql.CLAIMS_OF_WORKER
        params = {"worker_id": "w", "limit": 1000}
        assert len(conn.execute(look, params).fetchall()) == 64
        buffers, looks = 0, []

        def next_look_reads_only_live_entries() -> bool:
            # A look marks the dead entries it passes once no snapshot anywhere in this database can
            # still see them; while the parallel suite keeps the horizon busy that can take a look or two.
            nonlocal buffers
            (plan,) = conn.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + look, params).fetchone()  # type: ignore[misc]
            looks.append(plan)
            index = ("Index Name", "tasks_locked_idx")
            buffers = _plan_sum(plan[0]["Plan"], index, ("Shared Hit Blocks", "Shared Read Blocks"))
            return buffers < 100  # the 64 live rows' pages; the 100,000 dead entries were marked

        assert wait_for(next_look_reads_only_live_entries, timeout=10, interval=0.2), buffers
    for plan in looks:
        text = json.dumps(plan)
        nodes = re.findall(r'"Node Type": "([^"]+)"', text)
        assert "tasks_locked_idx" in text and not any(word in " ".join(nodes) for word in ("Bitmap", "Gather")), nodes
