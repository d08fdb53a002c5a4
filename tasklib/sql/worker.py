"""The worker's statements: claim, finish, heartbeat, rescue, release.

Each state-changing statement names the transition it makes and filters on the state it expects,
returning the rows it changed: no row back means the transition did not happen. None is prepared:
even an UPDATE by primary key, planned once on an empty table, can keep another index for good. Why
each is shaped the way it is: docs/design/plans.md and docs/design/claim.md.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

import orjson
from psycopg.types.json import Jsonb

from tasklib.sql.fleet import WORKER_STALE

NOW = "SELECT now()"


def _claim(pick: str) -> str:
    """pending -> running for the ids ``pick`` selects; one row even when nothing was claimed. A child
    of a workflow comes with its parents' results, read here once (``tasklib.parent_results``)."""
    return f"""
WITH claimed AS (
    UPDATE tasks
    SET state = 'running', worker_id = %(worker_id)s, started_at = now(), completed_at = NULL,
        locked_until = now() + make_interval(secs => %(lock_seconds)s)
    WHERE id = ANY(ARRAY({pick}))
    RETURNING id, name, kwargs::text AS kwargs_json, retry_count, max_retries, timeout_seconds, priority,
              scheduled_at, started_at, queue,
              CASE WHEN parent_ids IS NOT NULL THEN (
                  SELECT CAST(jsonb_object_agg(CAST(p.id AS text), p.result) AS text)
                  FROM tasks AS p WHERE p.id = ANY(tasks.parent_ids)) END AS parent_results_json
)
SELECT now() AS claimed_at, claimed.* FROM (SELECT 1) AS one LEFT JOIN claimed ON true
"""


#: The rows a claim may take, and the order and locking it takes them in: one queue's. (Whether the
#: queue is paused is the worker's to know, from the queue's settings: ``tasklib.worker.sources``.)
_DUE = (
    "queue = %(queue)s AND state = 'pending' AND scheduled_at <= now() AND scheduled_at >= %(floor)s"
    " AND name = ANY(%(names)s)"
)
_IN_ORDER = "ORDER BY priority DESC, scheduled_at, id LIMIT %(limit)s FOR UPDATE SKIP LOCKED"

#: pending -> running: up to %(limit)s due tasks of one queue this worker runs, highest priority
#: first, then oldest due first (FIFO within a priority), from %(floor)s on (docs/design/claim.md).
CLAIM_NEXT = _claim(f"SELECT id FROM tasks WHERE {_DUE} {_IN_ORDER}")
#: pending -> running: CLAIM_NEXT within one priority, where the floor bounds the index walk.
CLAIM_AT_PRIORITY = _claim(f"SELECT id FROM tasks WHERE {_DUE} AND priority = %(priority)s {_IN_ORDER}")
#: pending -> running: CLAIM_NEXT over every priority strictly between the bounds (%(above)s,
#: %(below)s), range by range, highest first: the priorities the claim did not ask one by one.
CLAIM_OTHER_PRIORITIES = _claim(f"""
    SELECT taken.id
    FROM unnest(CAST(%(above)s AS integer[]), CAST(%(below)s AS integer[])) AS gap(above, below)
    CROSS JOIN LATERAL (
        SELECT id FROM tasks WHERE {_DUE} AND priority > gap.above AND priority < gap.below {_IN_ORDER}
    ) AS taken
    LIMIT %(limit)s""")
#: pending -> running: a sweep's step, across all priorities, in a window of ``scheduled_at``.
CLAIM_IN_WINDOW = _claim(f"SELECT id FROM tasks WHERE {_DUE} AND scheduled_at < %(below)s {_IN_ORDER}")

#: State is tested as ``state || '' = 'running'`` so no state index qualifies: rows named by id are
#: reached through the primary key only (docs/design/plans.md).
STILL_RUNNING = "t.state || '' = 'running'"
#: One row's outcome in the %(outcomes)s object (keyed by id; see ``outcome_params``).
_OUTCOME = "(%(outcomes)s -> t.id::text)"


def _apply_outcomes(condition: str = "") -> str:
    """running -> completed | failed | pending: each row named in %(ids)s takes its own outcome,
    only while still running under the claim the outcome names (this worker, same started_at)."""
    return f"""
UPDATE tasks AS t
SET state = {_OUTCOME} ->> 's',
    result = {_OUTCOME} -> 'r',
    error = {_OUTCOME} ->> 'e',
    retry_count = ({_OUTCOME} ->> 'n')::integer,
    completed_at = CASE WHEN {_OUTCOME} ->> 's' = 'pending' THEN NULL ELSE now() END,
    scheduled_at = CASE WHEN {_OUTCOME} ->> 's' = 'pending'
                        THEN now() + make_interval(secs => ({_OUTCOME} ->> 'd')::double precision)
                        ELSE t.scheduled_at END,
    next_retry_at = CASE WHEN {_OUTCOME} ->> 's' = 'pending'
                         THEN now() + make_interval(secs => ({_OUTCOME} ->> 'd')::double precision) END,
    locked_until = NULL
WHERE t.id = ANY(%(ids)s::uuid[]) AND {STILL_RUNNING} AND t.worker_id = %(worker_id)s
  AND t.started_at = ({_OUTCOME} ->> 't')::timestamptz {condition}
RETURNING t.id
"""


#: running -> completed | failed | pending (retry): a batch of this worker's outcomes in one
#: statement; a late result never overwrites a cancel, a rescue or a newer claim. (A task's end
#: releases what waits for it through the table's trigger: ``tasklib.sql.tasks.SETTLE_CHILDREN``.)
FINISH_MANY = _apply_outcomes()
#: running -> pending | failed: the decisions for expired claims (``outcome.decide``); a claim
#: whose lock was renewed in between is left alone.
RESCUE_MANY = _apply_outcomes("AND t.locked_until < now()")


def outcome_params(outcomes: Iterable[tuple[Any, datetime, Any]], worker_id: str) -> dict[str, Any]:
    """Parameters for FINISH_MANY / RESCUE_MANY from ``(task id, claim started_at, Action)`` triples
    of claims held by ``worker_id``. The outcomes travel as one jsonb object keyed by id, which each
    row reads for itself (no join to plan); a result, already JSON text from the child, goes into
    it as is (``orjson.Fragment``), never parsed and encoded again."""
    ids: list[Any] = []
    decided: dict[str, dict[str, Any]] = {}
    for task_id, started_at, action in outcomes:
        ids.append(task_id)
        entry: dict[str, Any] = {
            "s": action.state.value,
            "n": int(action.retry_count),
            "d": float(action.delay_seconds),
            "t": started_at.isoformat(),
        }
        if action.result_json is not None:
            entry["r"] = orjson.Fragment(action.result_json)
        if action.error is not None:
            entry["e"] = action.error
        decided[str(task_id)] = entry
    return {"ids": ids, "outcomes": Jsonb(decided, dumps=orjson.dumps), "worker_id": worker_id}


#: running -> running: extend the locks this worker still holds; rows missing from the result were
#: cancelled or rescued meanwhile, and the worker must stop them.
HEARTBEAT = f"""
UPDATE tasks AS t SET locked_until = now() + make_interval(secs => %(lock_seconds)s)
WHERE t.id = ANY(%(ids)s) AND {STILL_RUNNING} AND t.worker_id = %(worker_id)s
RETURNING t.id
"""

#: (read) running claims whose lock expired: their worker stopped renewing it (crash, kill, lost
#: network). What happens to each is decided in Python (``outcome.decide``, the same policy as any
#: failed attempt) and applied by RESCUE_MANY. Only running rows hold a lock (every transition out
#: of running clears it), so the range scan on tasks_locked_idx reads only locks already in the
#: past: its cost follows the expired rows, not the table. The state test is kept out of index
#: selection like ``STILL_RUNNING``: on a state index it would walk every running row.
EXPIRED_CLAIMS = """
SELECT id, worker_id, started_at, locked_until, retry_count, max_retries FROM tasks
WHERE locked_until < now() AND state || '' = 'running'
ORDER BY locked_until
LIMIT %(limit)s
"""

#: (read) The running claims of a worker whose presence went stale (rows as EXPIRED_CLAIMS returns
#: them); read only when one is, through tasks_locked_idx (only running tasks hold a lock).
CLAIMS_OF_WORKER = """
SELECT id, worker_id, started_at, locked_until, retry_count, max_retries FROM tasks
WHERE locked_until IS NOT NULL AND state || '' = 'running' AND worker_id = %(worker_id)s
ORDER BY locked_until
LIMIT %(limit)s
"""

#: running -> pending | failed: RESCUE_MANY for a worker whose presence went stale, whether or not
#: its lock has expired; checked again in the statement, so a worker that came back keeps its claims.
RESCUE_VANISHED = _apply_outcomes("AND " + WORKER_STALE)

#: running -> pending: hand back tasks this worker claimed but will not finish (shutdown, prefetched
#: but never started, or stopped after the grace period). No attempt is burned.
RELEASE_MANY = f"""
UPDATE tasks AS t SET state = 'pending', locked_until = NULL, scheduled_at = now()
WHERE t.id = ANY(%(ids)s) AND {STILL_RUNNING} AND t.worker_id = %(worker_id)s
RETURNING t.id
"""
