"""The table's statements: its columns, its bookkeeping, submits (-> pending) and reads.

The insert statements cast every parameter so they run unchanged on psycopg 3 and psycopg2
(transactional submit borrows the caller's connection, whichever driver it is).
"""

from __future__ import annotations

from tasklib.sql.prepared import Prepared
from tasklib.states import SLOT_KEY_PREFIX

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


def notify_submit(name: str, priority: str) -> str:
    """The submit NOTIFY, from SQL expressions for the task's name and priority."""
    return f"pg_notify('{NOTIFY_CHANNEL_SUBMIT}', {name} || ' ' || {_NOTIFY_CLOCK} || ' ' || {priority})"


#: INSERT one task (-> pending) and wake idle workers; NOTIFY is delivered only on commit.
#: Prepared: an INSERT of one row has no access path to choose, so its generic plan cannot go wrong.
INSERT_TASK = Prepared(f"""
WITH ins AS (
    INSERT INTO tasks (id, name, args, kwargs, state, retry_count, max_retries, scheduled_at,
                       created_at, timeout_seconds, priority, tags)
    VALUES (CAST(%(id)s AS uuid), CAST(%(name)s AS varchar), '[]', CAST(%(kwargs)s AS jsonb), 'pending', 0,
            CAST(%(max_retries)s AS integer),
            now() + make_interval(secs => CAST(%(delay)s AS double precision)), now(),
            CAST(%(timeout)s AS integer), CAST(%(priority)s AS integer), CAST(%(tags)s AS jsonb))
    RETURNING name, priority
)
SELECT {notify_submit("name", "priority")} FROM ins
""")

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
SELECT {notify_submit("CAST(%(name)s AS text)", _PRIORITY)}
WHERE EXISTS (SELECT 1 FROM ins)
"""

#: ``UNIQUE_KEY_HELD`` as statements with parameters write it (``%`` doubled).
KEY_HELD = f"unique_key IS NOT NULL AND (state IN ('pending', 'running') OR unique_key LIKE '{SLOT_KEY_PREFIX}%%')"


#: INSERT one task that carries a unique key (-> pending), or find the task holding that key
#: (INSERT_TASK_UNIQUE; INSERT_SLOT for a recurring task's slot).
#: ``ON CONFLICT DO NOTHING`` makes the unique index decide a race between submitters, including
#: a holder that is still inside an uncommitted transaction (the insert waits for it). Returns the
#: new row's id, else the holder's; no row at all means the holder committed after this statement's
#: snapshot was taken, and the caller runs the statement again (``tasklib.api``).
def _insert_unique(scheduled_at: str) -> str:
    return f"""
WITH ins AS (
    INSERT INTO tasks (id, name, args, kwargs, state, retry_count, max_retries, scheduled_at,
                       created_at, timeout_seconds, priority, tags, unique_key)
    VALUES (CAST(%(id)s AS uuid), CAST(%(name)s AS varchar), '[]', CAST(%(kwargs)s AS jsonb), 'pending', 0,
            CAST(%(max_retries)s AS integer),
            {scheduled_at}, now(),
            CAST(%(timeout)s AS integer), CAST(%(priority)s AS integer), CAST(%(tags)s AS jsonb),
            CAST(%(unique_key)s AS text))
    ON CONFLICT DO NOTHING
    RETURNING id, name, priority
)
SELECT CAST(id AS text), {notify_submit("name", "priority")} FROM ins
UNION ALL
SELECT CAST(id AS text), NULL FROM tasks
WHERE unique_key = CAST(%(unique_key)s AS text) AND {KEY_HELD} AND NOT EXISTS (SELECT 1 FROM ins)
"""


INSERT_TASK_UNIQUE = _insert_unique("now() + make_interval(secs => CAST(%(delay)s AS double precision))")
#: INSERT the row of one recurring-task slot, due at the slot's time (``tasklib.worker.scheduler``); a
#: slot that already has a row (any state) inserts nothing.
INSERT_SLOT = _insert_unique("CAST(%(at)s AS timestamptz)")

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
       (SELECT {notify_submit("CAST(%(name)s AS text)", _PRIORITY)})
FROM ins
"""

#: The ids of the tasks holding these unique keys.
KEY_HOLDERS = f"""
SELECT unique_key, CAST(id AS text) FROM tasks WHERE unique_key = ANY(CAST(%(keys)s AS text[])) AND {KEY_HELD}
"""

# Read -----------------------------------------------------------------------------------------

GET_TASK = f"{_SELECT_TASK} WHERE id = %(id)s"


COUNT_BY_STATE = "SELECT state, count(*) FROM tasks GROUP BY state"
