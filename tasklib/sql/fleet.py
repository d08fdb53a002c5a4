"""The fleet's own state, kept beside the tasks: settings and worker presence.

``tasks`` holds tasks only. What the workers share about themselves lives in two small tables:

- ``tasklib_settings``: one row per ``(kind, name)``. ``queue``: a queue's settings (``value``:
  paused, concurrency_limit). ``limits``: a limited task's limits as its workers declare them
  (``value``: task, queue, concurrency_limit, rate_limit) and, in ``at``, its rate's next allowed
  start. ``retention``: ``last``, the last automatic round (``value``: policy, removed, total,
  worker_id; ``at``: when it started), and ``lease``, which worker may prune now (``at``: until).
- ``tasklib_workers``: one row per running worker, refreshed every second (``seen_at``): how live
  workers tell a dead one without seeing its sessions (a pooler hides them), and what the Workers
  page lists. docs/design/liveness.md.

Both are small and updated in place (no index on the columns that change, room on each page), so
their updates are HOT and cost no index entries.
"""

from __future__ import annotations

CREATE_SETTINGS = """
CREATE TABLE IF NOT EXISTS tasklib_settings (
    kind varchar NOT NULL CHECK (kind IN ('queue', 'limits', 'retention')),
    name varchar NOT NULL,
    value jsonb NOT NULL DEFAULT '{}',
    at timestamptz,
    changed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, name)
) WITH (fillfactor = 50)
"""

CREATE_WORKERS = """
CREATE TABLE IF NOT EXISTS tasklib_workers (
    worker_id varchar PRIMARY KEY,
    host varchar NOT NULL,
    pid integer NOT NULL,
    version varchar NOT NULL,
    concurrency integer NOT NULL,
    async_concurrency integer NOT NULL,
    queues varchar[] NOT NULL,
    pool_mode varchar NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    seen_at timestamptz NOT NULL DEFAULT now()
) WITH (fillfactor = 50)
"""

#: Schema 11 moves schema 10's pseudo-rows (state 'setting', and the completed rows named
#: 'tasklib.retention') out of ``tasks``. Each is found through the name index.
MOVE_SETTINGS = [
    """
    INSERT INTO tasklib_settings (kind, name, value, changed_at)
    SELECT 'queue', queue, kwargs, coalesce(completed_at, now())
    FROM tasks WHERE name = 'tasklib.queue' AND state = 'setting' AND kwargs IS NOT NULL
    ON CONFLICT DO NOTHING
    """,
    """
    INSERT INTO tasklib_settings (kind, name, value, at, changed_at)
    SELECT 'limits', kwargs ->> 'task', kwargs || jsonb_build_object('queue', queue),
           NULLIF(scheduled_at, 'epoch'), coalesce(completed_at, now())
    FROM tasks WHERE name = 'tasklib.limits' AND state = 'setting' AND kwargs ? 'task'
    ON CONFLICT DO NOTHING
    """,
    """
    INSERT INTO tasklib_settings (kind, name, value, at, changed_at)
    SELECT 'retention', 'last',
           jsonb_build_object('policy', kwargs, 'removed', result -> 'removed', 'total', result -> 'total',
                              'worker_id', worker_id),
           started_at, completed_at
    FROM tasks WHERE name = 'tasklib.retention' AND state = 'completed'
    ORDER BY created_at DESC LIMIT 1
    ON CONFLICT DO NOTHING
    """,
    "DELETE FROM tasks WHERE name IN ('tasklib.queue', 'tasklib.limits') AND state = 'setting'",
    "DELETE FROM tasks WHERE name = 'tasklib.retention' AND state = 'completed'",
]

# Presence ---------------------------------------------------------------------------------------

#: How long a worker's presence may go unrefreshed (it refreshes every second) before it counts as
#: gone and its claims are rescued: longer than a reconnect after a PostgreSQL restart, short next
#: to the default lock. The dashboard calls a worker live by the same measure.
VANISHED_AFTER_SECONDS = 5.0

#: A worker announces itself before its first claim (again after its row was removed: a worker
#: found dead that was only slow comes back as new).
REGISTER_WORKER = """
INSERT INTO tasklib_workers (worker_id, host, pid, version, concurrency, async_concurrency, queues, pool_mode)
VALUES (%(worker_id)s, %(host)s, %(pid)s, %(version)s, %(concurrency)s, %(async_concurrency)s,
        CAST(%(queues)s AS varchar[]), %(pool_mode)s)
ON CONFLICT (worker_id) DO UPDATE SET seen_at = now(), queues = EXCLUDED.queues
"""

#: Every second: this worker is alive. No row back: it was taken for dead and removed, and must
#: register again.
REFRESH_PRESENCE = "UPDATE tasklib_workers SET seen_at = now() WHERE worker_id = %(worker_id)s RETURNING 1"

#: A worker that stops cleanly leaves: nobody needs to wait for its row to go stale.
UNREGISTER_WORKER = "DELETE FROM tasklib_workers WHERE worker_id = %(worker_id)s"

#: A worker's presence is fresh: it refreshed its row within %(after)s seconds (by the database's
#: clock, the one every worker's refresh was stamped with).
_FRESH = "seen_at >= now() - make_interval(secs => %(after)s)"

#: (read) Workers whose presence went stale: their claims are to be rescued, then their rows removed.
STALE_WORKERS = f"SELECT worker_id FROM tasklib_workers WHERE NOT ({_FRESH}) ORDER BY seen_at"

#: A running row's worker went stale. A worker with no row at all is left to its lock's expiry: it
#: may be of a version without presence, alive.
WORKER_STALE = f"""EXISTS (
    SELECT 1 FROM tasklib_workers AS w WHERE w.worker_id = t.worker_id AND NOT (w.{_FRESH}))"""

#: Its claims are all dealt with: remove the row (unless it came back meanwhile).
FORGET_WORKER = f"DELETE FROM tasklib_workers WHERE worker_id = %(worker_id)s AND NOT ({_FRESH})"

#: (read) The Workers page: every registered worker, with how long since it was seen.
WORKERS = f"""
SELECT worker_id, host, pid, version, concurrency, async_concurrency, queues, pool_mode, started_at, seen_at,
       {_FRESH} AS alive
FROM tasklib_workers ORDER BY started_at, worker_id
"""
