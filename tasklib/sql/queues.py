"""Queues and limits: the settings rows, and what a gated claim reads and writes around its claim.

A queue's settings (paused, its concurrency limit) and a rate-limited task's clock are rows of the
tasks table in the state ``setting``, each with a fixed id (``tasklib.limits``): no statement on
tasks names that state, so lists, counts, claims and retention never meet them. docs/queues.md.
"""

from __future__ import annotations

NOTIFY_CHANNEL_QUEUE = "tasklib_queue"
QUEUE_ROW_NAME = "tasklib.queue"
LIMITS_ROW_NAME = "tasklib.limits"

#: (none) -> setting, setting -> setting: merge %(settings)s into a queue's settings row (made on
#: first use); ``completed_at`` says when they last changed. Workers hear of it at once.
SET_QUEUE = f"""
WITH saved AS (
    INSERT INTO tasks (id, name, state, queue, kwargs, max_retries, completed_at)
    VALUES (%(id)s, '{QUEUE_ROW_NAME}', 'setting', %(queue)s, CAST(%(settings)s AS jsonb), 0, now())
    ON CONFLICT (id) DO UPDATE SET kwargs = tasks.kwargs || EXCLUDED.kwargs, completed_at = now()
    WHERE tasks.state = 'setting'
    RETURNING kwargs
)
SELECT CAST(kwargs AS text), pg_notify('{NOTIFY_CHANNEL_QUEUE}', %(queue)s) FROM saved
"""

#: Every queue's settings, for the workers (each claim round reads them when they may have changed).
QUEUE_SETTINGS = f"SELECT queue, kwargs FROM tasks WHERE state = 'setting' AND name = '{QUEUE_ROW_NAME}'"

#: Per queue: tasks pending, waiting, running and failed, and its settings; a queue with neither
#: tasks in those states nor settings is not listed.
QUEUE_OVERVIEW = f"""
WITH counts AS (
    SELECT queue,
           count(*) FILTER (WHERE state = 'pending') AS pending,
           count(*) FILTER (WHERE state = 'waiting') AS waiting,
           count(*) FILTER (WHERE state = 'running') AS running,
           count(*) FILTER (WHERE state = 'failed') AS failed
    FROM tasks WHERE state IN ('pending', 'waiting', 'running', 'failed')
    GROUP BY queue
), settings AS (
    SELECT queue, kwargs, completed_at FROM tasks WHERE state = 'setting' AND name = '{QUEUE_ROW_NAME}'
)
SELECT coalesce(c.queue, s.queue) AS queue, coalesce(c.pending, 0) AS pending, coalesce(c.waiting, 0) AS waiting,
       coalesce(c.running, 0) AS running, coalesce(c.failed, 0) AS failed,
       coalesce(CAST(s.kwargs ->> 'paused' AS boolean), false) AS paused,
       CAST(s.kwargs ->> 'concurrency_limit' AS integer) AS concurrency_limit, s.completed_at AS changed_at
FROM counts AS c FULL JOIN settings AS s ON s.queue = c.queue
ORDER BY 1
"""

#: One queue's settings and how many of its tasks run now (the explainer's question).
QUEUE_STATE = """
SELECT coalesce(CAST(s.kwargs ->> 'paused' AS boolean), false) AS paused,
       CAST(s.kwargs ->> 'concurrency_limit' AS integer) AS concurrency_limit,
       (SELECT count(*) FROM tasks WHERE locked_until IS NOT NULL AND queue = %(queue)s AND state = 'running') AS running
FROM (SELECT 1) AS one LEFT JOIN tasks AS s ON s.id = %(row)s AND s.state = 'setting'
"""

#: The limits of the tasks that have one, as their workers last saved them, and each one's clock
#: (its next allowed start, for a rate) with how many of it run now.
TASK_LIMITS = f"""
SELECT s.kwargs ->> 'task' AS task, s.queue, CAST(s.kwargs ->> 'concurrency_limit' AS integer) AS concurrency_limit,
       s.kwargs ->> 'rate_limit' AS rate_limit, s.scheduled_at AS next_start,
       (SELECT count(*) FROM tasks AS r WHERE r.name = s.kwargs ->> 'task' AND r.state = 'running') AS running
FROM tasks AS s
WHERE s.state = 'setting' AND s.name = '{LIMITS_ROW_NAME}' AND (%(task)s::text IS NULL OR s.kwargs ->> 'task' = %(task)s)
ORDER BY 1
"""

# A gated claim: one transaction on the claim connection --------------------------------------

#: Before it: is any task of these names due in this queue? Read through the name index (the queue
#: test is kept out of index selection: a walk of the queue's own range would step over every
#: pending task of other names), so a limited task with nothing due costs one short statement.
ANY_DUE = """
SELECT EXISTS (
    SELECT FROM tasks WHERE name = ANY(%(names)s) AND state = 'pending' AND scheduled_at <= now()
                        AND queue || '' = %(queue)s
) AS due
"""

#: First: the advisory locks of every limit the claim counts against (queue and task), in one order
#: everywhere, held to the end of the transaction. Claims counted against one limit take turns.
GATE_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended(k, 0)) FROM unnest(CAST(%(keys)s AS text[])) AS k ORDER BY k"

#: (none) -> setting, setting -> setting: a limited task's row, saved by each worker that runs it
#: before its first claim of it: the limits its code declares (for the dashboard), and the clock a
#: rate keeps in ``scheduled_at``. Its own statement, never inside a gated claim: a row lock taken
#: before the advisory locks could deadlock with a claim holding them.
SAVE_LIMITS = f"""
INSERT INTO tasks (id, name, state, queue, kwargs, max_retries, scheduled_at, completed_at)
VALUES (%(row)s, '{LIMITS_ROW_NAME}', 'setting', %(queue)s, CAST(%(limits)s AS jsonb), 0, 'epoch', now())
ON CONFLICT (id) DO UPDATE SET kwargs = EXCLUDED.kwargs, queue = EXCLUDED.queue, completed_at = now()
WHERE tasks.state = 'setting' AND tasks.kwargs IS DISTINCT FROM EXCLUDED.kwargs
"""

#: Then, in a snapshot taken after the locks: what runs now against each limit, and the task's clock.
#: Running tasks are counted from their claim to their outcome or rescue (the state says it). The
#: time is the transaction's, which is also the ``started_at`` its claim writes: the starts a rate
#: allows are the starts the table records.
GATE_COUNTS = """
SELECT now() AS now,
       CASE WHEN CAST(%(count_queue)s AS boolean) THEN (
           SELECT count(*) FROM tasks
           WHERE locked_until IS NOT NULL AND queue = CAST(%(queue)s AS varchar) AND state = 'running'
       ) END AS queue_running,
       CASE WHEN CAST(%(task)s AS varchar) IS NOT NULL THEN (
           SELECT count(*) FROM tasks WHERE name = CAST(%(task)s AS varchar) AND state = 'running'
       ) END AS task_running,
       (SELECT scheduled_at FROM tasks WHERE id = CAST(%(clock)s AS uuid) AND state = 'setting') AS clock
"""

#: setting -> setting: move a rate-limited task's clock on by the starts just claimed.
SET_CLOCK = "UPDATE tasks SET scheduled_at = %(at)s WHERE id = %(clock)s AND state = 'setting' RETURNING 1 AS saved"

#: A finished limited task frees its slot: wake the workers that wait for one (a submit's payload,
#: for each task name and queue in %(names)s and %(queues)s).
SLOT_FREED = """
SELECT pg_notify('tasklib_submit', n || ' @' || q || ' ' || CAST(extract(epoch FROM now()) AS text))
FROM unnest(CAST(%(names)s AS text[]), CAST(%(queues)s AS text[])) AS f(n, q)
"""
