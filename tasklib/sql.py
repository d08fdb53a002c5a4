"""Every SQL statement TaskLib runs, by name. Values are always bound parameters.

Each state-changing statement names the transition it makes and filters on the state it expects,
returning the rows it changed: no row back means the transition did not happen.
The insert statements cast every parameter so they run unchanged on psycopg 3 and psycopg2
(transactional submit borrows the caller's connection, whichever driver it is).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb

from tasklib.states import SLOT_KEY_PREFIX, TaskState

#: The ``tasks`` columns in table order. Spelled out (and checked against the SQLModel class by a unit
#: test) so that processes that only run SQL, like the worker, need not import SQLAlchemy.
TASK_COLUMNS: tuple[str, ...] = (
    "id",
    "name",
    "args",
    "kwargs",
    "state",
    "result",
    "error",
    "retry_count",
    "max_retries",
    "scheduled_at",
    "started_at",
    "completed_at",
    "created_at",
    "next_retry_at",
    "worker_id",
    "locked_until",
    "timeout_seconds",
    "priority",
    "tags",
    "unique_key",
)

#: Rows whose ``unique_key`` is taken: a user key while its task is pending or running, a slot key always.
UNIQUE_KEY_HELD = f"unique_key IS NOT NULL AND (state IN ('pending', 'running') OR unique_key LIKE '{SLOT_KEY_PREFIX}%')"

NOTIFY_CHANNEL_SUBMIT = "tasklib_submit"
NOTIFY_CHANNEL_CANCEL = "tasklib_cancel"

COLUMNS = ", ".join(TASK_COLUMNS)
_SELECT_TASK = f"SELECT {COLUMNS} FROM tasks"

# Schema / bookkeeping -------------------------------------------------------------------------

#: Serialise concurrent init() calls across processes (transaction-scoped advisory lock).
SCHEMA_LOCK = "SELECT pg_advisory_xact_lock(hashtext('tasklib.schema'))"
#: The schema version lives in the table comment: no extra table is needed to version the schema.
SCHEMA_VERSION_GET = "SELECT obj_description('tasks'::regclass, 'pg_class')"
SCHEMA_VERSION_SET = "COMMENT ON TABLE tasks IS {}"  # utility statement: a literal, not a parameter
TABLE_EXISTS = "SELECT to_regclass('tasks') IS NOT NULL"

#: Whether autovacuum cleans the table: the server's switch (with ``track_counts``, without which it
#: never starts) and the table's own ``autovacuum_enabled`` option (absent means on).
CLEANUP_SETTINGS = """
SELECT current_setting('autovacuum')::boolean AND current_setting('track_counts')::boolean,
       coalesce((SELECT option_value FROM pg_options_to_table(c.reloptions)
                 WHERE option_name = 'autovacuum_enabled')::boolean, true)
FROM pg_class AS c WHERE c.oid = 'tasks'::regclass
"""

# Submit (-> pending) --------------------------------------------------------------------------

#: A submit's NOTIFY payload is "<task name> <scheduled_at as epoch seconds> <priority>": delivered
#: at commit, it tells workers how far back the task they could not see yet lies, and at which
#: priority (``tasklib.worker.claim``).
_NOTIFY_CLOCK = "CAST(extract(epoch FROM now()) AS text)"
#: The priority as a submit statement binds it (bulk statements have no row to read it from).
_PRIORITY = "CAST(CAST(%(priority)s AS integer) AS text)"


def _notify_submit(name: str, priority: str) -> str:
    """The submit NOTIFY, from SQL expressions for the task's name and priority."""
    return f"pg_notify('{NOTIFY_CHANNEL_SUBMIT}', {name} || ' ' || {_NOTIFY_CLOCK} || ' ' || {priority})"


#: INSERT one task (-> pending) and wake idle workers; NOTIFY is delivered only on commit.
INSERT_TASK = f"""
WITH ins AS (
    INSERT INTO tasks (id, name, args, kwargs, state, retry_count, max_retries, scheduled_at,
                       created_at, timeout_seconds, priority, tags)
    VALUES (CAST(%(id)s AS uuid), CAST(%(name)s AS varchar), '[]', CAST(%(kwargs)s AS jsonb), 'pending', 0,
            CAST(%(max_retries)s AS integer),
            now() + make_interval(secs => CAST(%(delay)s AS double precision)), now(),
            CAST(%(timeout)s AS integer), CAST(%(priority)s AS integer), CAST(%(tags)s AS jsonb))
    RETURNING name, priority
)
SELECT {_notify_submit("name", "priority")} FROM ins
"""

#: INSERT many tasks (-> pending) in one round trip; one NOTIFY per statement. The arguments arrive as
#: one JSON array and the ids as one uuid[] literal: building per-row Python parameters is what
#: would otherwise limit bulk submit.
INSERT_MANY = f"""
WITH ins AS (
    INSERT INTO tasks (id, name, args, kwargs, state, retry_count, max_retries, scheduled_at,
                       created_at, timeout_seconds, priority, tags)
    SELECT i.id, CAST(%(name)s AS varchar), '[]', k.kwargs, 'pending', 0, CAST(%(max_retries)s AS integer),
           now() + make_interval(secs => CAST(%(delay)s AS double precision)), now(),
           CAST(%(timeout)s AS integer), CAST(%(priority)s AS integer), CAST(%(tags)s AS jsonb)
    FROM unnest(CAST(%(ids)s AS uuid[])) WITH ORDINALITY AS i(id, n)
    JOIN jsonb_array_elements(CAST(%(kwargs)s AS jsonb)) WITH ORDINALITY AS k(kwargs, n) USING (n)
    RETURNING 1
)
SELECT {_notify_submit("CAST(%(name)s AS text)", _PRIORITY)}
WHERE EXISTS (SELECT 1 FROM ins)
"""

#: ``UNIQUE_KEY_HELD`` inside statements that take parameters (where ``%`` must be doubled).
_KEY_HELD = UNIQUE_KEY_HELD.replace("%", "%%")

#: INSERT one task that carries a unique key (-> pending), or find the task holding that key.
#: ``ON CONFLICT DO NOTHING`` makes the unique index decide a race between submitters, including
#: a holder that is still inside an uncommitted transaction (the insert waits for it). Returns the
#: new row's id, else the holder's; no row at all means the holder committed after this statement's
#: snapshot was taken, and the caller runs the statement again (``tasklib.api``).
INSERT_UNIQUE = f"""
WITH ins AS (
    INSERT INTO tasks (id, name, args, kwargs, state, retry_count, max_retries, scheduled_at,
                       created_at, timeout_seconds, priority, tags, unique_key)
    VALUES (CAST(%(id)s AS uuid), CAST(%(name)s AS varchar), '[]', CAST(%(kwargs)s AS jsonb), 'pending', 0,
            CAST(%(max_retries)s AS integer),
            {{scheduled_at}}, now(),
            CAST(%(timeout)s AS integer), CAST(%(priority)s AS integer), CAST(%(tags)s AS jsonb),
            CAST(%(unique_key)s AS text))
    ON CONFLICT DO NOTHING
    RETURNING id, name, priority
)
SELECT CAST(id AS text), {_notify_submit("name", "priority")} FROM ins
UNION ALL
SELECT CAST(id AS text), NULL FROM tasks
WHERE unique_key = CAST(%(unique_key)s AS text) AND {_KEY_HELD} AND NOT EXISTS (SELECT 1 FROM ins)
"""
INSERT_TASK_UNIQUE = INSERT_UNIQUE.format(scheduled_at="now() + make_interval(secs => CAST(%(delay)s AS double precision))")
#: INSERT the row of one recurring-task slot, due at the slot's time (``tasklib.worker.scheduler``); a
#: slot that already has a row (any state) inserts nothing.
INSERT_SLOT = INSERT_UNIQUE.format(scheduled_at="CAST(%(at)s AS timestamptz)")

#: INSERT many tasks, each with its own unique key or none, in one statement; returns the rows it
#: inserted. Keys already held (or repeated within the batch, where the first item wins) insert
#: nothing; the caller looks their holders up with KEY_HOLDERS.
INSERT_MANY_UNIQUE = f"""
WITH ins AS (
    INSERT INTO tasks (id, name, args, kwargs, state, retry_count, max_retries, scheduled_at,
                       created_at, timeout_seconds, priority, tags, unique_key)
    SELECT i.id, CAST(%(name)s AS varchar), '[]', k.kwargs, 'pending', 0, CAST(%(max_retries)s AS integer),
           now() + make_interval(secs => CAST(%(delay)s AS double precision)), now(),
           CAST(%(timeout)s AS integer), CAST(%(priority)s AS integer), CAST(%(tags)s AS jsonb), u.key
    FROM unnest(CAST(%(ids)s AS uuid[])) WITH ORDINALITY AS i(id, n)
    JOIN jsonb_array_elements(CAST(%(kwargs)s AS jsonb)) WITH ORDINALITY AS k(kwargs, n) USING (n)
    JOIN unnest(CAST(%(keys)s AS text[])) WITH ORDINALITY AS u(key, n) USING (n)
    ORDER BY n
    ON CONFLICT DO NOTHING
    RETURNING id
)
SELECT CAST(id AS text),
       (SELECT {_notify_submit("CAST(%(name)s AS text)", _PRIORITY)})
FROM ins
"""

#: The ids of the tasks holding these unique keys.
KEY_HOLDERS = f"""
SELECT unique_key, CAST(id AS text) FROM tasks WHERE unique_key = ANY(CAST(%(keys)s AS text[])) AND {_KEY_HELD}
"""

# Read -----------------------------------------------------------------------------------------

GET_TASK = f"{_SELECT_TASK} WHERE id = %(id)s"


COUNT_BY_STATE = "SELECT state, count(*) FROM tasks GROUP BY state"

# Worker: claim, finish, heartbeat, rescue, release -------------------------------------------

#: pending -> running: claim up to %(limit)s due tasks this worker can run, highest priority first,
#: then oldest due first (scheduled_at, then id: FIFO within a priority).
#: SKIP LOCKED lets many workers claim side by side without waiting on each other's rows. The ids
#: come back as an array (an InitPlan run once) so the UPDATE finds its rows by primary key.
#: ``%(floor)s`` bounds the walk of tasks_pending_idx from below (see ``tasklib.worker.claim``): when a
#: long transaction elsewhere holds back cleanup, the entries of already-claimed rows stay in the
#: index, and without the bound every claim would step over all of them (a heap visit each).
#: The outer LEFT JOIN returns one row even when nothing was claimed, carrying the server's now():
#: the worker's next floor comes from the database's clock, never its own.
_CLAIM = """
WITH claimed AS (
    UPDATE tasks
    SET state = 'running', worker_id = %(worker_id)s, started_at = now(), completed_at = NULL,
        locked_until = now() + make_interval(secs => %(lock_seconds)s)
    WHERE id = ANY(ARRAY(
{pick}
    ))
    RETURNING id, name, kwargs::text AS kwargs_json, retry_count, max_retries, timeout_seconds, priority,
              scheduled_at, started_at
)
SELECT now() AS claimed_at, claimed.* FROM (SELECT 1) AS one LEFT JOIN claimed ON true
"""
_PICK = """\
        SELECT id FROM tasks
        WHERE state = 'pending' AND scheduled_at <= now() AND scheduled_at >= %(floor)s
          AND name = ANY(%(names)s){condition}
        ORDER BY priority DESC, scheduled_at, id
        LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED"""
CLAIM_NEXT = _CLAIM.format(pick=_PICK.format(condition=""))
#: pending -> running: CLAIM_NEXT within one priority. The floor bounds the walk only with it: the
#: index leads with priority, so without an equality on priority a btree scan cannot start at
#: (priority, floor) and steps from the index's first entry, testing ``scheduled_at`` on every
#: entry before the floor. Entries a held snapshot keeps (never marked dead, since no scan visits
#: their rows) pile up there: 90,000 of them made a 256-row claim 2.8 ms instead of 0.23 ms, and
#: they stay until VACUUM, so the cost outlasts the snapshot.
CLAIM_AT_PRIORITY = _CLAIM.format(pick=_PICK.format(condition="\n          AND priority = %(priority)s"))
#: pending -> running: CLAIM_NEXT over every priority *except* the ones this claim just asked for
#: one by one (``tasklib.worker.claim.other_priorities``): the priority ranges between them, given as
#: exclusive bounds (%(above)s, %(below)s), highest first, one index scan per range. Its floor is
#: the lane's common floor, which only a short claim raises, so after a long stretch of full claims
#: it lies seconds back; a scan over the asked priorities too would visit every entry claimed since
#: (a heap visit each while a held snapshot keeps them: 106 ms measured), only to find nothing,
#: since each of those priorities just came back short from its own floor. A range bound on the
#: leading column is an index condition: the scan starts at the range and stops at its end.
#: The outer LIMIT pulls from the ranges in order and stops, so a later range locks no row it
#: does not take.
CLAIM_OTHER_PRIORITIES = _CLAIM.format(
    pick="""\
        SELECT taken.id
        FROM unnest(CAST(%(above)s AS integer[]), CAST(%(below)s AS integer[])) AS gap(above, below)
        CROSS JOIN LATERAL (
            SELECT id FROM tasks
            WHERE state = 'pending' AND scheduled_at <= now() AND scheduled_at >= %(floor)s
              AND name = ANY(%(names)s) AND priority > gap.above AND priority < gap.below
            ORDER BY priority DESC, scheduled_at, id
            LIMIT %(limit)s
            FOR UPDATE SKIP LOCKED
        ) AS taken
        LIMIT %(limit)s"""
)
#: pending -> running: a sweep's step (``tasklib.worker.claim``), across all priorities, in a window of
#: ``scheduled_at``. It steps over the whole index as CLAIM_NEXT does, but an entry outside the
#: window is rejected on its key, without the heap visit that makes a held snapshot's entries dear.
CLAIM_IN_WINDOW = _CLAIM.format(pick=_PICK.format(condition="\n          AND scheduled_at < %(below)s"))

_OUTCOME = "(%(outcomes)s -> t.id::text)"
#: ``state = 'running'`` written so that no index on state can serve it (``|| ''`` is the classic way
#: to keep a condition out of index selection). Statements that name their rows by id must use the
#: primary key: with statistics taken while the table was empty, the planner would otherwise walk
#: every running (and recently finished) entry of a state index for each batch.
_STILL_RUNNING = "t.state || '' = 'running'"
_APPLY_OUTCOMES = f"""
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
WHERE t.id = ANY(%(ids)s::uuid[]) AND {_STILL_RUNNING} AND t.worker_id = %(worker_id)s
  AND t.started_at = ({_OUTCOME} ->> 't')::timestamptz
  {{extra}}
RETURNING t.id
"""
#: running -> completed | failed | pending (retry): record a batch of a worker's outcomes in one
#: statement. Only rows still running under the claim each outcome names (this worker, same
#: started_at) change, so a result that arrives late can never overwrite a cancel, a rescue or a newer claim.
#: Rows are found by primary key (id = ANY) and each row reads its own outcome from one jsonb
#: object keyed by id (see ``outcome_params``): there is no join, so no plan can turn a batch into a
#: quadratic join filter or a table scan when statistics are stale.
FINISH_MANY = _APPLY_OUTCOMES.format(extra="")
#: running -> pending | failed: apply the decisions (``outcome.decide``) for expired claims that
#: ``EXPIRED_CLAIMS`` found, one statement per lost worker. A claim whose lock was renewed in
#: between is left alone.
RESCUE_MANY = _APPLY_OUTCOMES.format(extra="AND t.locked_until < now()")


def outcome_params(outcomes: Iterable[tuple[Any, datetime, Any]], worker_id: str) -> dict[str, Any]:
    """Parameters for FINISH_MANY / RESCUE_MANY from ``(task id, claim started_at, Action)`` triples
    of claims held by ``worker_id``.

    The outcomes travel as one JSON object; results are already JSON text (from the child), so
    they are spliced in rather than parsed and re-encoded.
    """
    ids: list[Any] = []
    parts: list[str] = []
    for task_id, started_at, action in outcomes:
        ids.append(task_id)
        entry = (
            f'"{task_id}":{{"s":"{action.state.value}","n":{int(action.retry_count)},'
            f'"d":{float(action.delay_seconds)!r},"t":"{started_at.isoformat()}"'
        )
        if action.result_json is not None:
            entry += f',"r":{action.result_json}'
        if action.error is not None:
            entry += f',"e":{json.dumps(action.error, ensure_ascii=False)}'
        parts.append(entry + "}")
    # Sent typed as jsonb (not text cast in SQL), so PostgreSQL parses it once, not once per row.
    outcomes_json = Jsonb("{" + ",".join(parts) + "}", dumps=_already_json)
    return {"ids": ids, "outcomes": outcomes_json, "worker_id": worker_id}


def _already_json(text: str) -> str:
    return text


#: running -> running: extend the locks this worker still holds; rows missing from the result were
#: cancelled or rescued meanwhile, and the worker must stop them.
HEARTBEAT = f"""
UPDATE tasks AS t SET locked_until = now() + make_interval(secs => %(lock_seconds)s)
WHERE t.id = ANY(%(ids)s) AND {_STILL_RUNNING} AND t.worker_id = %(worker_id)s
RETURNING t.id
"""

#: (read) running claims whose lock expired: their worker stopped renewing it (crash, kill, lost
#: network). What happens to each is decided in Python (``outcome.decide``, the same policy as any
#: failed attempt) and applied by RESCUE_MANY. Only running rows hold a lock (every transition out
#: of running clears it), so the range scan on tasks_locked_idx reads only locks already in the
#: past: its cost follows the expired rows, not the table. The state test is kept out of index
#: selection like ``_STILL_RUNNING``: on a state index it would walk every running row.
EXPIRED_CLAIMS = """
SELECT id, worker_id, started_at, locked_until, retry_count, max_retries FROM tasks
WHERE locked_until < now() AND state || '' = 'running'
ORDER BY locked_until
LIMIT %(limit)s
"""

#: Every session name a worker connection carries starts with this (``_lockkeeper.session_name``).
WORKER_SESSION_PREFIX = "tasklib-worker "

#: A running row's worker has a session open: one of its connections sets application_name to
#: ``tasklib-worker <id>`` (PostgreSQL may cut a long name, so the name must be a prefix of it).
_WORKER_CONNECTED = f"""EXISTS (
    SELECT 1 FROM pg_stat_activity AS a
    WHERE a.datname = current_database() AND a.application_name LIKE '{WORKER_SESSION_PREFIX}_%%'
      AND starts_with('{WORKER_SESSION_PREFIX}' || {{worker}}, a.application_name))"""

#: (read) The session names of every worker connected to this database: the look ``_lockkeeper``
#: takes every round to notice a worker whose sessions closed (a killed process's connections close
#: at once, so the database itself knows it is gone). It reads no table, so its cost does not grow
#: with the dead index entries a long transaction elsewhere keeps.
WORKER_SESSIONS = f"""
SELECT DISTINCT application_name FROM pg_stat_activity
WHERE datname = current_database() AND application_name LIKE '{WORKER_SESSION_PREFIX}_%%'
"""

#: (read) Workers that hold unexpired claims but have no session open, read once when a worker
#: starts: it finds the workers that died before any live worker could see them go (a crashed host,
#: every worker restarted), which WORKER_SESSIONS alone cannot. Reads tasks_locked_idx: only running
#: tasks hold a lock, but while a long transaction elsewhere holds back cleanup it also reads the
#: dead entries of every task finished since, which is why it is not repeated every round.
VANISHED_WORKERS = f"""
SELECT worker_id FROM (
    SELECT DISTINCT worker_id FROM tasks WHERE locked_until >= now() AND state || '' = 'running'
) AS owners
WHERE NOT {_WORKER_CONNECTED.format(worker="owners.worker_id")}
"""

#: (read) The running claims of workers whose session name is ``%(session)s`` and who have no
#: session open (rows as EXPIRED_CLAIMS returns them). A name PostgreSQL cut short may be shared by
#: several workers, hence the prefix match, and the check that the row's own worker is gone.
CLAIMS_OF_SESSION = f"""
SELECT id, worker_id, started_at, locked_until, retry_count, max_retries FROM tasks AS t
WHERE locked_until IS NOT NULL AND state || '' = 'running'
  AND starts_with('{WORKER_SESSION_PREFIX}' || worker_id, %(session)s)
  AND NOT {_WORKER_CONNECTED.format(worker="t.worker_id")}
ORDER BY locked_until
LIMIT %(limit)s
"""

#: running -> pending | failed: RESCUE_MANY for a worker whose sessions are gone, whether or not
#: its lock has expired; checked again in the statement, so a worker that reconnected keeps its claims.
RESCUE_VANISHED = _APPLY_OUTCOMES.format(extra="AND NOT " + _WORKER_CONNECTED.format(worker="t.worker_id"))

#: running -> pending: hand back tasks this worker claimed but will not finish (shutdown, prefetched
#: but never started, or stopped after the grace period). No attempt is burned.
RELEASE_MANY = f"""
UPDATE tasks AS t SET state = 'pending', locked_until = NULL, scheduled_at = now()
WHERE t.id = ANY(%(ids)s) AND {_STILL_RUNNING} AND t.worker_id = %(worker_id)s
RETURNING t.id
"""

# Actions (dashboard and user code) ------------------------------------------------------------

#: pending | running -> cancelled; running ones are stopped by their worker (NOTIFY + heartbeat).
CANCEL_TASK = f"""
WITH c AS (
    UPDATE tasks SET state = 'cancelled', completed_at = now(), locked_until = NULL,
                     error = coalesce(error || E'\\n\\n', '') || 'Cancelled.'
    WHERE id = %(id)s AND state IN ('pending', 'running')
    RETURNING id
)
SELECT c.id, pg_notify('{NOTIFY_CHANNEL_CANCEL}', c.id::text) FROM c
"""

#: A failed or cancelled task may go back to pending only if no other task holds its unique key
#: (the unique index would refuse it; this keeps a bulk retry from failing as a whole because of one).
_KEY_FREE = """(unique_key IS NULL OR NOT EXISTS (
    SELECT 1 FROM tasks AS holder WHERE holder.unique_key = tasks.unique_key AND holder.state IN ('pending', 'running')))"""

#: failed | cancelled -> pending, due now. The retry count is kept: it records attempts made.
RETRY_TASK = f"""
WITH r AS (
    UPDATE tasks SET state = 'pending', scheduled_at = now(), next_retry_at = NULL, completed_at = NULL,
                     locked_until = NULL
    WHERE id = %(id)s AND state IN ('failed', 'cancelled') AND {_KEY_FREE}
    RETURNING id, name, priority
)
SELECT r.id, {_notify_submit("r.name", "CAST(r.priority AS text)")} FROM r
"""

#: failed | cancelled -> pending for every task matching a filter (bulk retry), capped per call.
RETRY_MATCHING = f"""
WITH r AS (
    UPDATE tasks SET state = 'pending', scheduled_at = now(), next_retry_at = NULL, completed_at = NULL,
                     locked_until = NULL
    WHERE id IN (SELECT id FROM tasks {{where}} LIMIT %(cap)s FOR UPDATE SKIP LOCKED)
      AND state IN ('failed', 'cancelled') AND {_KEY_FREE}
    RETURNING id, name, priority
)
SELECT count(*), (SELECT count({_notify_submit("d.name", "CAST(d.priority AS text)")})
                  FROM (SELECT DISTINCT name, priority FROM r) AS d)
FROM r
"""

#: pending -> cancelled for every task matching a filter (bulk cancel), capped per call.
CANCEL_MATCHING = """
WITH c AS (
    UPDATE tasks SET state = 'cancelled', completed_at = now(), locked_until = NULL,
                     error = coalesce(error || E'\\n\\n', '') || 'Cancelled.'
    WHERE id IN (SELECT id FROM tasks {where} LIMIT %(cap)s FOR UPDATE SKIP LOCKED) AND state = 'pending'
    RETURNING 1
)
SELECT count(*) FROM c
"""

COUNT_MATCHING = "SELECT count(*) FROM (SELECT 1 FROM tasks {where} LIMIT %(cap)s) AS capped"

# Schedules (recurring tasks) -------------------------------------------------------------------

_SLOT = "unique_key LIKE '" + SLOT_KEY_PREFIX + "%%'"

#: Every task that has slot rows, with its newest slot (the next run, when it is still pending: the
#: scheduler always keeps the next slot queued) and its newest slot that is not pending (the last
#: run). Task names come from a loose index scan of tasks_slot_idx (one probe per name), and each
#: lateral reads the first entries of that name's range: the cost follows the number of recurring
#: tasks, not the slots they have accumulated. No state test may pick tasks_pending_idx, which would
#: walk every pending task of every name.
SCHEDULES = f"""
WITH RECURSIVE names AS (
    (SELECT name FROM tasks WHERE {_SLOT} ORDER BY name LIMIT 1)
    UNION ALL
    SELECT (SELECT t.name FROM tasks AS t WHERE {_SLOT.replace("unique_key", "t.unique_key")} AND t.name > names.name
            ORDER BY t.name LIMIT 1)
    FROM names WHERE names.name IS NOT NULL
)
SELECT n.name,
       CASE WHEN nxt.state = 'pending' THEN nxt.id END AS next_id,
       CASE WHEN nxt.state = 'pending' THEN nxt.scheduled_at END AS next_at,
       nxt.tags,
       lst.id AS last_id, lst.unique_key AS last_key, lst.state AS last_state, lst.started_at AS last_started_at,
       lst.completed_at AS last_completed_at
FROM names AS n
CROSS JOIN LATERAL (
    SELECT id, state, scheduled_at, tags FROM tasks
    WHERE name = n.name AND {_SLOT} ORDER BY scheduled_at DESC LIMIT 1
) AS nxt
LEFT JOIN LATERAL (
    SELECT id, unique_key, state, started_at, completed_at FROM tasks
    WHERE name = n.name AND {_SLOT} AND state || '' <> 'pending' ORDER BY scheduled_at DESC LIMIT 1
) AS lst ON true
WHERE n.name IS NOT NULL
ORDER BY n.name
"""

#: (none) -> pending: "Run now" for a recurring task: a copy of its newest slot row (same arguments,
#: retries, timeout and schedule tags, plus ``run: manual``), due now and without a slot key, so it
#: neither takes nor frees a slot. Returns the new id, or nothing when the task has no slot rows.
RUN_SCHEDULE_NOW = f"""
WITH src AS (
    SELECT name, kwargs, max_retries, timeout_seconds, priority, tags FROM tasks
    WHERE name = %(name)s AND {_SLOT} ORDER BY scheduled_at DESC LIMIT 1
), ins AS (
    INSERT INTO tasks (id, name, args, kwargs, state, retry_count, max_retries, scheduled_at, created_at,
                       timeout_seconds, priority, tags)
    SELECT %(id)s, name, '[]', kwargs, 'pending', 0, max_retries, now(), now(), timeout_seconds, priority,
           coalesce(tags, '{{}}') || '{{"run": "manual"}}'
    FROM src
    RETURNING id, name, priority
)
SELECT id, {_notify_submit("name", "CAST(priority AS text)")} FROM ins
"""

# Retention (tasklib.retention) ---------------------------------------------------------------

#: completed | failed | cancelled -> deleted: one batch of one finished state, oldest completion
#: first, from %(after)s on (a keyset: the next batch starts where this one ended). The batch is
#: read from tasks_completed_idx and deleted by primary key (``id = ANY(ARRAY(...))``: a join to
#: the batch was planned as a hash join over the whole table). Rows a concurrent retry has locked
#: are skipped, and the DELETE checks the state again (kept out of index selection, as in
#: ``_STILL_RUNNING``), so a row retried meanwhile (now pending) is never deleted.
PRUNE_BATCH = """
WITH gone AS (
    DELETE FROM tasks
    WHERE id = ANY(ARRAY(
        SELECT id FROM tasks
        WHERE completed_at >= coalesce(%(after)s, '-infinity'::timestamptz) AND completed_at < %(before)s
          AND state = %(state)s
        ORDER BY completed_at
        LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED
    ))
      AND state || '' = %(state)s
    RETURNING completed_at
)
SELECT count(*), max(completed_at) FROM gone
"""

#: One worker at a time runs automatic retention: a session-level lock on the round's own connection.
RETENTION_TRY_LOCK = "SELECT pg_try_advisory_lock(hashtext('tasklib.retention'))"
RETENTION_UNLOCK = "SELECT pg_advisory_unlock(hashtext('tasklib.retention'))"

#: The record of one automatic retention round: a row that is already completed (it never waits in
#: the queue or runs in a child), carrying the policy as kwargs and the rows removed as result.
INSERT_RETENTION_RECORD = """
INSERT INTO tasks (id, name, kwargs, state, result, max_retries, scheduled_at, started_at, completed_at, worker_id)
VALUES (%(id)s, %(name)s, CAST(%(policy)s AS jsonb), 'completed', CAST(%(result)s AS jsonb), 0,
        %(started_at)s, %(started_at)s, now(), %(worker_id)s)
"""

#: The newest retention record (the overview shows the policy in force and its last outcome).
LAST_RETENTION_RECORD = """
SELECT kwargs, result, completed_at, worker_id FROM tasks
WHERE name = %(name)s AND state = 'completed' ORDER BY created_at DESC, id DESC LIMIT 1
"""

# Monitoring (dashboard, metrics) --------------------------------------------------------------
# Written for a large table: counts are capped or estimated, lists are keyset-paginated, and the
# last day's outcomes are kept incrementally by tasklib.recent, which reads only new minutes.

#: Rows per state, counted exactly up to %(cap)s through tasks_state_created_idx.
COUNT_STATE_CAPPED = "SELECT count(*) FROM (SELECT 1 FROM tasks WHERE state = %(state)s LIMIT %(cap)s) AS c"

#: The planner's row estimate for the whole table (no scan).
ESTIMATE_ROWS = "SELECT greatest(reltuples, 0)::bigint FROM pg_class WHERE oid = 'tasks'::regclass"

NOW = "SELECT now()"

#: Outcomes per minute and name since %(since)s (and before %(until)s, when given), through
#: tasks_completed_idx; one row with NULL minute when there are none, so read_at always comes back.
OUTCOMES_SINCE = """
WITH clock AS (SELECT now() AS read_at)
SELECT clock.read_at, g.* FROM clock LEFT JOIN (
    SELECT date_trunc('minute', completed_at) AS minute, name, state, count(*) AS n,
           sum(extract(epoch FROM completed_at - started_at)) FILTER (WHERE started_at IS NOT NULL) AS run_seconds,
           count(started_at) AS timed
    FROM tasks
    WHERE completed_at >= %(since)s AND (%(until)s::timestamptz IS NULL OR completed_at < %(until)s)
      AND state IN ('completed', 'failed', 'cancelled')
    GROUP BY 1, 2, 3
) g ON true
"""

#: Finished rows in [since, until), counted up to %(cap)s (is the rest of the day small enough to read at once?).
COUNT_FINISHED_BETWEEN = """
SELECT count(*) FROM (
    SELECT 1 FROM tasks WHERE completed_at >= %(since)s AND completed_at < %(until)s LIMIT %(cap)s) AS c
"""

ACTIVE_BY_NAME = """
SELECT name, state, count(*) FROM (
    SELECT name, state FROM tasks WHERE state = 'pending' LIMIT %(cap)s) AS p GROUP BY 1, 2
UNION ALL
SELECT name, state, count(*) FROM tasks WHERE state = 'running' GROUP BY 1, 2
"""

RECENT_FAILURES = f"""
SELECT {COLUMNS} FROM tasks WHERE state = 'failed' ORDER BY created_at DESC, id DESC LIMIT %(limit)s
"""

#: The due pending task that has waited longest.
OLDEST_DUE_PENDING = """
SELECT min(scheduled_at) FROM tasks WHERE state = 'pending' AND scheduled_at <= now()
"""


#: Due pending tasks that would be claimed before this one (capped).
AHEAD_OF = """
SELECT count(*) FROM (
    SELECT 1 FROM tasks
    WHERE state = 'pending' AND scheduled_at <= now() AND id <> %(id)s
      AND (priority > %(priority)s OR (priority = %(priority)s AND scheduled_at < %(scheduled_at)s))
    LIMIT %(cap)s) AS ahead
"""

#: Connected workers, from the application_name each worker connection sets.
LIVE_WORKERS = """
SELECT substr(application_name, length('tasklib-worker ') + 1) AS worker_id, min(backend_start), count(*)
FROM pg_stat_activity
WHERE datname = current_database() AND application_name LIKE 'tasklib-worker %%'
GROUP BY 1 ORDER BY 1
"""

#: Has any worker started a task of this name recently? (newest rows of that name first)
#: Has any worker started a task of this name recently? A running one, or one among the newest 50
#: finished of each outcome (bounded: each is a short walk of tasks_name_state_created_idx).
NAME_RECENTLY_STARTED = """
SELECT EXISTS (SELECT 1 FROM tasks WHERE name = %(name)s AND state = 'running')
    OR EXISTS (
        SELECT 1 FROM (
            (SELECT started_at FROM tasks WHERE name = %(name)s AND state = 'completed' ORDER BY created_at DESC LIMIT 50)
            UNION ALL
            (SELECT started_at FROM tasks WHERE name = %(name)s AND state = 'failed' ORDER BY created_at DESC LIMIT 50)
        ) AS newest
        WHERE started_at >= now() - make_interval(secs => %(window)s))
"""

RUNNING_BY_WORKER = """
SELECT worker_id, count(*) AS running, min(locked_until) AS next_lock_expiry, min(started_at) AS oldest_start
FROM tasks WHERE state = 'running' GROUP BY worker_id ORDER BY worker_id
"""

EXPIRED_LOCKS = "SELECT count(*) FROM tasks WHERE state = 'running' AND locked_until < now()"

#: Unfinished tasks by name and state, for /metrics (finished ones come from tasklib.recent).
METRICS_ACTIVE = """
SELECT name, state, count(*) FROM tasks WHERE state IN ('pending', 'running') GROUP BY 1, 2
"""

HEALTH = "SELECT 1"


#: The tag filter (``tags_tagged_idx`` can answer it), on ``%(f_tag_key)s`` and ``%(f_tag_value)s``.
_TAG = "tags @> jsonb_build_object(%(f_tag_key)s::text, %(f_tag_value)s::text)"


def filter_clause(
    *,
    state: str | None = None,
    name: str | None = None,
    tag: tuple[str, str] | None = None,
    text: str | None = None,
    created_from: object = None,
    created_to: object = None,
    finished_from: object = None,
    finished_to: object = None,
    cursor: tuple[object, object] | None = None,
    cursor_op: str = "<",
    states: tuple[str, ...] | None = None,
    names: tuple[str, ...] | None = None,
) -> tuple[str, dict[str, object]]:
    """A WHERE clause and its parameters for the dashboard's filters. Values are always bound."""
    clauses: list[str] = []
    params: dict[str, object] = {}
    if state is not None:
        clauses.append("state = %(f_state)s")
        params["f_state"] = state
    if states is not None:
        clauses.append("state = ANY(%(f_states)s)")
        params["f_states"] = list(states)
    if name is not None:
        clauses.append("name = %(f_name)s")
        params["f_name"] = name
    if names is not None:
        clauses.append("name = ANY(%(f_names)s)")
        params["f_names"] = list(names)
    if tag is not None:
        clauses.append(_TAG)
        params["f_tag_key"], params["f_tag_value"] = tag
    if text:
        clauses.append("(error ILIKE %(f_text)s OR kwargs::text ILIKE %(f_text)s OR result::text ILIKE %(f_text)s)")
        params["f_text"] = "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    for column, op, key, value in (
        ("created_at", ">=", "f_cfrom", created_from),
        ("created_at", "<", "f_cto", created_to),
        ("completed_at", ">=", "f_ffrom", finished_from),
        ("completed_at", "<", "f_fto", finished_to),
    ):
        if value is not None:
            clauses.append(f"{column} {op} %({key})s")
            params[key] = value
    if cursor is not None:
        op = "<" if cursor_op == "<" else ">"  # never interpolate anything but these two
        clauses.append(f"(created_at, id) {op} (%(c_at)s, %(c_id)s)")
        params["c_at"], params["c_id"] = cursor
    return ("WHERE " + " AND ".join(clauses)) if clauses else "", params


#: How many rows of each branch (a state, or a name and a state) a tag-filtered page reads in
#: created order before it leaves the page to the tag index instead (``tag_walk_query``).
TAG_WALK_ROWS = 10_000


def page_query(
    *,
    descending: bool = True,
    cursor: tuple[object, object] | None = None,
    name: str | None = None,
    names: Iterable[str] | None = None,
    state: str | None = None,
    states: Iterable[str] | None = None,
    **filters: Any,
) -> tuple[str, dict[str, object]]:
    """One keyset page (``%(limit)s`` rows in created order, after ``cursor``) of the tasks matching
    the filters (``filter_clause``'s keywords).

    The page is read per state (tasks_state_created_idx), or per (name, state) pair with a name
    filter (tasks_name_state_created_idx), each range in created order with its own LIMIT, and the
    pieces merged: at most states (x names) short index walks, however many rows the others hold.
    There is no index on created order alone: every claim and every outcome would add an entry
    to it (three per task), and five short walks read the same page (see models.Task).

    With a tag filter this is the tag index's query: every row holding the tag, sorted once. It
    costs what the tag's rows do, wherever they are, so the dashboard first tries
    ``tag_walk_query``, which costs what the page does, and uses this one when that cannot tell.
    """
    order = "created_at DESC, id DESC" if descending else "created_at ASC, id ASC"
    op = "<" if descending else ">"
    if filters.get("tag") is not None:
        names = None if names is None else tuple(names)
        states = None if states is None else tuple(states)
        where, params = filter_clause(
            cursor=cursor, cursor_op=op, name=name, names=names, state=state, states=states, **filters
        )
        return f"SELECT {COLUMNS} FROM tasks {where} ORDER BY {order} LIMIT %(limit)s", params
    where, params = filter_clause(cursor=cursor, cursor_op=op, **filters)
    branches = [
        f"SELECT {COLUMNS} FROM tasks {_and(where, pair)} ORDER BY {order} LIMIT %(limit)s"
        for pair in _branch_pairs(params, name, names, state, states)
    ]
    if not branches:  # an empty list of names or states matches nothing
        return f"SELECT {COLUMNS} FROM tasks WHERE false LIMIT %(limit)s", params
    if len(branches) == 1:
        return branches[0], params
    union = " UNION ALL ".join(f"({b})" for b in branches)
    return f"SELECT * FROM ({union}) AS page ORDER BY {order} LIMIT %(limit)s", params


def tag_walk_query(
    *,
    descending: bool = True,
    cursor: tuple[object, object] | None = None,
    name: str | None = None,
    names: Iterable[str] | None = None,
    state: str | None = None,
    states: Iterable[str] | None = None,
    tag: tuple[str, str],
    **filters: Any,
) -> tuple[str, dict[str, object]]:
    """A tag-filtered page read like any other list: per state (and name), in created order, but
    each walk stops after ``TAG_WALK_ROWS`` rows, so a tag that none of a state's recent rows hold
    costs that many rows, not the state's whole history.

    Rows are ``COLUMNS`` plus ``walk_row`` (the row's place in its walk, from 1) and
    ``walk_matched``: each branch returns its first ``%(limit)s`` rows that hold the tag, and
    also the walk's last row if the walk got that far before finding them, so the caller can tell
    whether the merged page is complete (``tasklib.monitor.merge_tag_walks``).
    """
    order = "created_at DESC, id DESC" if descending else "created_at ASC, id ASC"
    where, params = filter_clause(cursor=cursor, cursor_op="<" if descending else ">", **filters)
    params["f_tag_key"], params["f_tag_value"] = tag
    params["walk_rows"] = TAG_WALK_ROWS
    branches = [
        f"SELECT {COLUMNS}, walk_row, {_TAG} AS walk_matched FROM ("
        f" SELECT *, row_number() OVER (ORDER BY {order}) AS walk_row FROM ("
        f"  SELECT * FROM tasks {_and(where, pair)} ORDER BY {order} LIMIT %(walk_rows)s) AS walk) AS numbered"
        f" WHERE {_TAG} OR walk_row = %(walk_rows)s ORDER BY {order} LIMIT %(limit)s"
        for pair in _branch_pairs(params, name, names, state, states)
    ]
    if not branches:
        return f"SELECT {COLUMNS}, 0 AS walk_row, true AS walk_matched FROM tasks WHERE false", params
    return " UNION ALL ".join(f"({b})" for b in branches), params


def _branch_pairs(
    params: dict[str, object],
    name: str | None,
    names: Iterable[str] | None,
    state: str | None,
    states: Iterable[str] | None,
) -> list[str]:
    """One condition per index range a list reads: each state, or each (name, state) pair. Binds
    their values into ``params``."""
    wanted_names: list[str | None] = [name] if name is not None else list(names) if names is not None else [None]
    wanted_states = [state] if state is not None else list(states) if states is not None else list(TaskState)
    pairs = []
    for i, (branch_name, branch_state) in enumerate(itertools.product(wanted_names, wanted_states)):
        params[f"b{i}_state"] = str(branch_state)
        pair = f"state = %(b{i}_state)s"
        if branch_name is not None:
            params[f"b{i}_name"] = branch_name
            pair = f"name = %(b{i}_name)s AND {pair}"
        pairs.append(pair)
    return pairs


def _and(where: str, condition: str) -> str:
    return f"{where} AND {condition}" if where else f"WHERE {condition}"
