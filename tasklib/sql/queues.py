"""Queues and limits: their settings, and what a gated claim reads and writes around its claim.

A queue's settings (paused, its concurrency limit) and a limited task's declared limits and rate
clock are rows of ``tasklib_settings`` (``tasklib.sql.fleet``), kinds ``queue`` and ``limits``,
named by the queue or the task. docs/queues.md.
"""

from __future__ import annotations

NOTIFY_CHANNEL_QUEUE = "tasklib_queue"

#: Merge %(settings)s into a queue's settings (made on first use); ``changed_at`` says when they
#: last changed. Workers hear of it at once.
SET_QUEUE = """
WITH saved AS (
    INSERT INTO tasklib_settings (kind, name, value) VALUES ('queue', %(queue)s, CAST(%(settings)s AS jsonb))
    ON CONFLICT (kind, name) DO UPDATE SET value = tasklib_settings.value || EXCLUDED.value, changed_at = now()
    RETURNING value
)
SELECT CAST(value AS text), pg_notify('tasklib_queue', %(queue)s) FROM saved
"""

#: Every queue's settings, for the workers (each claim round reads them when they may have changed).
QUEUE_SETTINGS = "SELECT name AS queue, value AS settings FROM tasklib_settings WHERE kind = 'queue'"

#: Per queue: tasks pending, waiting, running and failed, and its settings; a queue with neither
#: tasks in those states nor settings is not listed.
QUEUE_OVERVIEW = """
WITH counts AS (
    SELECT queue,
           count(*) FILTER (WHERE state = 'pending') AS pending,
           count(*) FILTER (WHERE state = 'waiting') AS waiting,
           count(*) FILTER (WHERE state = 'running') AS running,
           count(*) FILTER (WHERE state = 'failed') AS failed
    FROM tasks WHERE state IN ('pending', 'waiting', 'running', 'failed')
    GROUP BY queue
), settings AS (
    SELECT name AS queue, value, changed_at FROM tasklib_settings WHERE kind = 'queue'
)
SELECT coalesce(c.queue, s.queue) AS queue, coalesce(c.pending, 0) AS pending, coalesce(c.waiting, 0) AS waiting,
       coalesce(c.running, 0) AS running, coalesce(c.failed, 0) AS failed,
       coalesce(CAST(s.value ->> 'paused' AS boolean), false) AS paused,
       CAST(s.value ->> 'concurrency_limit' AS integer) AS concurrency_limit, s.changed_at
FROM counts AS c FULL JOIN settings AS s ON s.queue = c.queue
ORDER BY 1
"""

#: One queue's settings and how many of its tasks run now (the explainer's question).
QUEUE_STATE = """
SELECT coalesce(CAST(s.value ->> 'paused' AS boolean), false) AS paused,
       CAST(s.value ->> 'concurrency_limit' AS integer) AS concurrency_limit,
       (SELECT count(*) FROM tasks WHERE locked_until IS NOT NULL AND queue = %(queue)s AND state = 'running') AS running
FROM (SELECT 1) AS one LEFT JOIN tasklib_settings AS s ON s.kind = 'queue' AND s.name = %(queue)s
"""

#: The limits of the tasks that have one, as their workers last saved them, and each one's clock
#: (its next allowed start, for a rate) with how many of it run now.
TASK_LIMITS = """
SELECT s.name AS task, s.value ->> 'queue' AS queue, CAST(s.value ->> 'concurrency_limit' AS integer) AS concurrency_limit,
       s.value ->> 'rate_limit' AS rate_limit, s.at AS next_start,
       (SELECT count(*) FROM tasks AS r WHERE r.name = s.name AND r.state = 'running') AS running
FROM tasklib_settings AS s
WHERE s.kind = 'limits' AND (%(task)s::text IS NULL OR s.name = %(task)s)
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

#: A limited task's row, saved by each worker that runs it before its first claim of it: the
#: limits its code declares (for the dashboard), beside the clock a rate keeps in ``at``. Its own
#: statement, never inside a gated claim: a row lock taken before the advisory locks could deadlock
#: with a claim holding them.
SAVE_LIMITS = """
INSERT INTO tasklib_settings (kind, name, value) VALUES ('limits', %(task)s, CAST(%(limits)s AS jsonb))
ON CONFLICT (kind, name) DO UPDATE SET value = EXCLUDED.value, changed_at = now()
WHERE tasklib_settings.value IS DISTINCT FROM EXCLUDED.value
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
       (SELECT at FROM tasklib_settings WHERE kind = 'limits' AND name = CAST(%(clock)s AS varchar)) AS clock
"""

#: Move a rate-limited task's clock on by the starts just claimed.
SET_CLOCK = "UPDATE tasklib_settings SET at = %(at)s WHERE kind = 'limits' AND name = %(clock)s RETURNING 1 AS saved"

#: A finished limited task frees its slot: wake the workers that wait for one (a submit's payload,
#: for each task name and queue in %(names)s and %(queues)s).
SLOT_FREED = """
SELECT pg_notify('tasklib_submit', n || ' @' || q || ' ' || CAST(extract(epoch FROM now()) AS text))
FROM unnest(CAST(%(names)s AS text[]), CAST(%(queues)s AS text[])) AS f(n, q)
"""
