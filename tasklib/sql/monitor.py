"""The read model's statements (``tasklib.monitor``, the dashboard, ``/metrics``).

Written for a large table: counts are capped or estimated, lists are keyset pages
(``tasklib.listing``), and the last day's outcomes are kept incrementally by ``tasklib.recent``,
which reads only new minutes.
"""

from __future__ import annotations

from tasklib.sql.tasks import COLUMNS

#: Rows per state, counted exactly up to %(cap)s through tasks_state_created_idx.
COUNT_STATE_CAPPED = "SELECT count(*) FROM (SELECT 1 FROM tasks WHERE state = %(state)s LIMIT %(cap)s) AS c"

#: The planner's row estimate for the whole table (no scan).
ESTIMATE_ROWS = "SELECT greatest(reltuples, 0)::bigint FROM pg_class WHERE oid = 'tasks'::regclass"

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
    WHERE queue = %(queue)s AND state = 'pending' AND scheduled_at <= now() AND id <> %(id)s
      AND (priority > %(priority)s OR (priority = %(priority)s AND scheduled_at < %(scheduled_at)s))
    LIMIT %(cap)s) AS ahead
"""

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
SELECT name, queue, state, count(*) FROM tasks WHERE state IN ('pending', 'waiting', 'running') GROUP BY 1, 2, 3
"""

HEALTH = "SELECT 1"


# The dashboard on a replica (``dashboard.replica``) ----------------------------------------------

#: On the primary: its current WAL position (after a commit, one that includes it).
PRIMARY_WAL_POSITION = "SELECT CAST(pg_current_wal_lsn() AS text)"

#: On the replica: what it has replayed, how far behind %(primary)s that is, since when, and
#: whether replay is paused.
REPLICA_REPLAY = """
SELECT CAST(pg_last_wal_replay_lsn() AS text) AS replayed,
       pg_wal_lsn_diff(CAST(%(primary)s AS pg_lsn), pg_last_wal_replay_lsn()) AS behind,
       CASE WHEN pg_last_wal_replay_lsn() < CAST(%(primary)s AS pg_lsn)
            THEN extract(epoch FROM now() - pg_last_xact_replay_timestamp()) END AS lag,
       pg_is_wal_replay_paused() AS paused
"""

#: On the replica: has it replayed up to %(position)s?
REPLAYED_UP_TO = "SELECT pg_last_wal_replay_lsn() >= CAST(%(position)s AS pg_lsn)"
