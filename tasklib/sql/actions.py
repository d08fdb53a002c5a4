"""Statements that change tasks on a user's or the dashboard's behalf: cancel and retry (one, or
every match of a filter), recurring tasks' manual runs, and retention."""

from __future__ import annotations

from tasklib.sql.tasks import NOTIFY_CHANNEL_CANCEL, notify_submit
from tasklib.states import SLOT_KEY_PREFIX

#: pending | waiting | running -> cancelled; running ones are stopped by their worker (NOTIFY +
#: heartbeat). What waits for it is cancelled too (the table's trigger, SETTLE_CHILDREN).
CANCEL_TASK = f"""
WITH c AS (
    UPDATE tasks SET state = 'cancelled', completed_at = now(), locked_until = NULL,
                     error = coalesce(error || E'\\n\\n', '') || 'Cancelled.'
    WHERE id = %(id)s AND state IN ('pending', 'waiting', 'running')
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
    RETURNING id, name, priority, queue
)
SELECT r.id, {notify_submit("r.name", "CAST(r.priority AS text)", "r.queue")} FROM r
"""


def retry_matching(where: str) -> str:
    """failed | cancelled -> pending for every task matching ``where`` (bulk retry), capped per call;
    one row per task retried, its id first (for RESTORE_CHILDREN)."""
    return f"""
WITH r AS (
    UPDATE tasks SET state = 'pending', scheduled_at = now(), next_retry_at = NULL, completed_at = NULL,
                     locked_until = NULL
    WHERE id IN (SELECT id FROM tasks {where} LIMIT %(cap)s FOR UPDATE SKIP LOCKED)
      AND state IN ('failed', 'cancelled') AND {_KEY_FREE}
    RETURNING id, name, priority, queue
)
SELECT id, (SELECT count({notify_submit("d.name", "CAST(d.priority AS text)", "d.queue")})
            FROM (SELECT DISTINCT name, priority, queue FROM r) AS d)
FROM r
"""


def cancel_matching(where: str) -> str:
    """pending | waiting -> cancelled for every task matching ``where`` (bulk cancel), capped per
    call; returns the ids."""
    return f"""
UPDATE tasks SET state = 'cancelled', completed_at = now(), locked_until = NULL,
                 error = coalesce(error || E'\\n\\n', '') || 'Cancelled.'
WHERE id IN (SELECT id FROM tasks {where} LIMIT %(cap)s FOR UPDATE SKIP LOCKED) AND state IN ('pending', 'waiting')
RETURNING id
"""


def count_matching(where: str) -> str:
    """How many tasks match ``where``, counted up to %(cap)s."""
    return f"SELECT count(*) FROM (SELECT 1 FROM tasks {where} LIMIT %(cap)s) AS capped"


# Schedules (recurring tasks) ------------------------------------------------------------

#: A slot row: its key is a schedule's (``%`` doubled: the statements take parameters).
_SLOT = f"unique_key LIKE '{SLOT_KEY_PREFIX}%%'"

#: Every task that has slot rows, with its newest slot (the next run, when it is still pending: the
#: scheduler always keeps the next slot queued) and its newest slot that is not pending (the last
#: run). Task names come from a loose index scan of tasks_slot_idx (one probe per name), and each
#: lateral reads the first entries of that name's range: the cost follows the number of recurring
#: tasks, not the slots they have accumulated. No state test may pick tasks_queue_pending_idx, which would
#: walk every pending task of every name.
SCHEDULES = f"""
WITH RECURSIVE names AS (
    (SELECT name FROM tasks WHERE {_SLOT} ORDER BY name LIMIT 1)
    UNION ALL
    SELECT (SELECT t.name FROM tasks AS t WHERE t.unique_key LIKE '{SLOT_KEY_PREFIX}%%' AND t.name > names.name
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
    SELECT name, kwargs, max_retries, timeout_seconds, priority, tags, queue FROM tasks
    WHERE name = %(name)s AND {_SLOT} ORDER BY scheduled_at DESC LIMIT 1
), ins AS (
    INSERT INTO tasks (id, name, args, kwargs, state, retry_count, max_retries, scheduled_at, created_at,
                       timeout_seconds, priority, tags, queue)
    SELECT %(id)s, name, '[]', kwargs, 'pending', 0, max_retries, now(), now(), timeout_seconds, priority,
           coalesce(tags, '{{}}') || '{{"run": "manual"}}', queue
    FROM src
    RETURNING id, name, priority, queue
)
SELECT id, {notify_submit("name", "CAST(priority AS text)", "queue")} FROM ins
"""


# Retention --------------------------------------------------------------------------------

#: completed | failed | cancelled -> deleted: one batch of one finished state, oldest completion
#: first, from %(after)s on (a keyset: the next batch starts where this one ended). The batch is
#: read from tasks_completed_idx and deleted by primary key (``id = ANY(ARRAY(...))``: a join to
#: the batch was planned as a hash join over the whole table). Rows a concurrent retry has locked
#: are skipped, and the DELETE checks the state again (kept out of index selection, as in
#: ``STILL_RUNNING``), so a row retried meanwhile (now pending) is never deleted. A parent some
#: waiting task still depends on (``depends_on``) is kept until that task has started or ended.
PRUNE_BATCH = """
WITH gone AS (
    DELETE FROM tasks
    WHERE id = ANY(ARRAY(
        SELECT id FROM tasks
        WHERE completed_at >= coalesce(%(after)s, '-infinity'::timestamptz) AND completed_at < %(before)s
          AND state = %(state)s
          AND NOT EXISTS (SELECT 1 FROM tasks AS c WHERE c.parent_ids @> ARRAY[tasks.id] AND c.state = 'waiting')
        ORDER BY completed_at
        LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED
    ))
      AND state || '' = %(state)s
    RETURNING completed_at
)
SELECT count(*), max(completed_at) FROM gone
"""

#: One worker at a time runs automatic retention: it takes the lease (``tasklib_settings``) when
#: nobody holds it, or when the holder's lease ran out (a worker that died mid-round). A row, not
#: an advisory lock: it holds across transactions without a session, so it works through a
#: transaction-mode pooler too.
TAKE_RETENTION_LEASE = """
INSERT INTO tasklib_settings (kind, name, value, at)
VALUES ('retention', 'lease', jsonb_build_object('worker_id', CAST(%(worker_id)s AS text)),
        now() + make_interval(secs => %(seconds)s))
ON CONFLICT (kind, name) DO UPDATE SET value = EXCLUDED.value, at = EXCLUDED.at, changed_at = now()
WHERE tasklib_settings.at < now()
RETURNING 1
"""
#: The round is over: the lease is free at once (only if it is still this worker's).
END_RETENTION_LEASE = """
UPDATE tasklib_settings SET at = now(), changed_at = now()
WHERE kind = 'retention' AND name = 'lease' AND value ->> 'worker_id' = %(worker_id)s
"""

#: The record of the last automatic retention round (the overview shows the policy in force and
#: its outcome): %(record)s holds the policy, the rows removed per state, their total and the worker.
RECORD_RETENTION = """
INSERT INTO tasklib_settings (kind, name, value, at) VALUES ('retention', 'last', CAST(%(record)s AS jsonb), %(started_at)s)
ON CONFLICT (kind, name) DO UPDATE SET value = EXCLUDED.value, at = EXCLUDED.at, changed_at = now()
"""

#: The last retention round's record, as RECORD_RETENTION wrote it.
LAST_RETENTION_RECORD = """
SELECT value, at AS started_at, changed_at AS completed_at FROM tasklib_settings WHERE kind = 'retention' AND name = 'last'
"""
