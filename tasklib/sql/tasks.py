"""The table's statements: its columns, its bookkeeping, submits (-> pending) and reads.

The insert statements cast every parameter so they run unchanged on psycopg 3 and psycopg2
(transactional submit borrows the caller's connection, whichever driver it is).
"""

from __future__ import annotations

from tasklib.sql.kinds import Prepared
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
    "parent_ids",
    "waiting_for",
    "on_parent_failure",
    "has_children",
    "queue",
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

#: A submit's NOTIFY payload is "<task name> <scheduled_at as epoch seconds> <priority>", with
#: " @<queue>" after the name for a queue other than ``default``: delivered at commit, it tells
#: workers how far back the task they could not see yet lies, at which priority, and which of their
#: claim sources holds it (``tasklib.worker.claim``, ``tasklib.worker.sources``). Workers of the
#: versions before queues read its last two fields only.
_NOTIFY_CLOCK = "CAST(extract(epoch FROM now()) AS text)"
#: The priority as a submit statement binds it (bulk statements have no row to read it from).
_PRIORITY = "CAST(CAST(%(priority)s AS integer) AS text)"


#: The queue as a submit statement binds it.
_QUEUE = "CAST(%(queue)s AS text)"


def notify_submit(name: str, priority: str, queue: str) -> str:
    """The submit NOTIFY, from SQL expressions for the task's name, priority and queue."""
    at_queue = f"CASE WHEN {queue} = 'default' THEN '' ELSE ' @' || {queue} END"
    return f"pg_notify('{NOTIFY_CHANNEL_SUBMIT}', {name} || {at_queue} || ' ' || {_NOTIFY_CLOCK} || ' ' || {priority})"


#: INSERT one task (-> pending) and wake idle workers; NOTIFY is delivered only on commit.
#: Prepared: an INSERT of one row has no access path to choose, so its generic plan cannot go wrong.
INSERT_TASK = Prepared(f"""
WITH ins AS (
    INSERT INTO tasks (id, name, args, kwargs, state, retry_count, max_retries, scheduled_at,
                       created_at, timeout_seconds, priority, tags, queue)
    VALUES (CAST(%(id)s AS uuid), CAST(%(name)s AS varchar), '[]', CAST(%(kwargs)s AS jsonb), 'pending', 0,
            CAST(%(max_retries)s AS integer),
            now() + make_interval(secs => CAST(%(delay)s AS double precision)), now(),
            CAST(%(timeout)s AS integer), CAST(%(priority)s AS integer), CAST(%(tags)s AS jsonb),
            CAST(%(queue)s AS varchar))
    RETURNING name, priority, queue
)
SELECT {notify_submit("name", "priority", "queue")} FROM ins
""")

#: INSERT many tasks (-> pending) in one round trip; one NOTIFY per statement. The arguments arrive as
#: one JSON array and the ids as one uuid[] literal: building per-row Python parameters is what
#: would otherwise limit bulk submit.
INSERT_MANY = f"""
WITH ins AS (
    INSERT INTO tasks (id, name, args, kwargs, state, retry_count, max_retries, scheduled_at,
                       created_at, timeout_seconds, priority, tags, queue)
    SELECT i.id, CAST(%(name)s AS varchar), '[]', k.kwargs, 'pending', 0, CAST(%(max_retries)s AS integer),
           now() + make_interval(secs => CAST(%(delay)s AS double precision)), now(),
           CAST(%(timeout)s AS integer), CAST(%(priority)s AS integer), CAST(%(tags)s AS jsonb),
           CAST(%(queue)s AS varchar)
    FROM unnest(CAST(%(ids)s AS uuid[])) WITH ORDINALITY AS i(id, n)
    JOIN jsonb_array_elements(CAST(%(kwargs)s AS jsonb)) WITH ORDINALITY AS k(kwargs, n) USING (n)
    RETURNING 1
)
SELECT {notify_submit("CAST(%(name)s AS text)", _PRIORITY, _QUEUE)}
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
                       created_at, timeout_seconds, priority, tags, unique_key, queue)
    VALUES (CAST(%(id)s AS uuid), CAST(%(name)s AS varchar), '[]', CAST(%(kwargs)s AS jsonb), 'pending', 0,
            CAST(%(max_retries)s AS integer),
            {scheduled_at}, now(),
            CAST(%(timeout)s AS integer), CAST(%(priority)s AS integer), CAST(%(tags)s AS jsonb),
            CAST(%(unique_key)s AS text), CAST(%(queue)s AS varchar))
    ON CONFLICT DO NOTHING
    RETURNING id, name, priority, queue
)
SELECT CAST(id AS text), {notify_submit("name", "priority", "queue")} FROM ins
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
                       created_at, timeout_seconds, priority, tags, unique_key, queue)
    SELECT i.id, CAST(%(name)s AS varchar), '[]', k.kwargs, 'pending', 0, CAST(%(max_retries)s AS integer),
           now() + make_interval(secs => CAST(%(delay)s AS double precision)), now(),
           CAST(%(timeout)s AS integer), CAST(%(priority)s AS integer), CAST(%(tags)s AS jsonb), u.key,
           CAST(%(queue)s AS varchar)
    FROM unnest(CAST(%(ids)s AS uuid[])) WITH ORDINALITY AS i(id, n)
    JOIN jsonb_array_elements(CAST(%(kwargs)s AS jsonb)) WITH ORDINALITY AS k(kwargs, n) USING (n)
    JOIN unnest(CAST(%(keys)s AS text[])) WITH ORDINALITY AS u(key, n) USING (n)
    ORDER BY n
    ON CONFLICT DO NOTHING
    RETURNING id
)
SELECT CAST(id AS text),
       (SELECT {notify_submit("CAST(%(name)s AS text)", _PRIORITY, _QUEUE)})
FROM ins
"""

#: The ids of the tasks holding these unique keys.
KEY_HOLDERS = f"""
SELECT unique_key, CAST(id AS text) FROM tasks WHERE unique_key = ANY(CAST(%(keys)s AS text[])) AND {KEY_HELD}
"""

# Read -----------------------------------------------------------------------------------------

GET_TASK = f"{_SELECT_TASK} WHERE id = %(id)s"


COUNT_BY_STATE = "SELECT state, count(*) FROM tasks GROUP BY state"


# Workflows (waiting -> pending | cancelled) --------------------------------------------------

#: The parents' states that end them, and the error a child cancelled by a parent's end carries:
#: ``ParentFailed: task <id> <failed|cancelled>`` names the ancestor whose end cancelled it (the
#: same for every descendant of one failure, which is how ``retry_task`` finds them again).
ENDED_STATES = "('completed', 'failed', 'cancelled')"
PARENT_FAILED = "ParentFailed: task "

#: INSERT tasks that wait for parents (``depends_on``), all with the same parents: ``waiting`` while
#: any parent has not ended, else ``pending`` (or ``cancelled`` when a parent already failed or was
#: cancelled and the child does not run anyway). The parents are marked ``has_children`` in the same
#: statement, which locks their rows in id order: a parent's end either committed before (and is
#: read here as ended) or waits for this insert to commit, and then finds the mark and this row
#: (SETTLE_CHILDREN). Nothing is inserted unless every parent exists; the first column says how
#: many did.
INSERT_CHILDREN = f"""
WITH parents AS (
    UPDATE tasks SET has_children = true WHERE id = ANY(CAST(%(parents)s AS uuid[])) RETURNING id, state
), judged AS (
    SELECT count(*) AS found,
           count(*) FILTER (WHERE state NOT IN {ENDED_STATES}) AS unfinished,
           min(CAST(id AS text) || ' ' || state) FILTER (WHERE state IN ('failed', 'cancelled')) AS failed
    FROM parents
), decided AS (
    SELECT found, unfinished, failed,
           CASE WHEN failed IS NOT NULL AND CAST(%(on_failure)s AS varchar) IS NULL THEN 'cancelled'
                WHEN unfinished > 0 THEN 'waiting' ELSE 'pending' END AS state
    FROM judged
), ins AS (
    INSERT INTO tasks (id, name, args, kwargs, state, retry_count, max_retries, scheduled_at, created_at,
                       timeout_seconds, priority, tags, parent_ids, waiting_for, on_parent_failure,
                       completed_at, error, queue)
    SELECT i.id, CAST(%(name)s AS varchar), '[]', k.kwargs, d.state, 0, CAST(%(max_retries)s AS integer),
           now() + make_interval(secs => CAST(%(delay)s AS double precision)), now(),
           CAST(%(timeout)s AS integer), CAST(%(priority)s AS integer), CAST(%(tags)s AS jsonb),
           CAST(%(parents)s AS uuid[]), d.unfinished, CAST(%(on_failure)s AS varchar),
           CASE WHEN d.state = 'cancelled' THEN now() END,
           CASE WHEN d.state = 'cancelled' THEN '{PARENT_FAILED}' || d.failed END,
           CAST(%(queue)s AS varchar)
    FROM decided AS d
    CROSS JOIN unnest(CAST(%(ids)s AS uuid[])) WITH ORDINALITY AS i(id, n)
    JOIN jsonb_array_elements(CAST(%(kwargs)s AS jsonb)) WITH ORDINALITY AS k(kwargs, n) USING (n)
    WHERE d.found = cardinality(CAST(%(parents)s AS uuid[]))
    RETURNING state
)
SELECT (SELECT found FROM judged), (SELECT min(state) FROM ins),
       (SELECT {notify_submit("CAST(%(name)s AS text)", _PRIORITY, _QUEUE)}
        WHERE EXISTS (SELECT 1 FROM ins WHERE state = 'pending'))
"""

#: The triggers that settle a task's children when it ends (completed, failed or cancelled), in the
#: transaction of the statement that ended it, whichever it is (an outcome batch, a rescue, a
#: cancel, by hand): there is no resolver to lag or die, and no statement to forget. A row trigger,
#: which fires only for a task marked ``has_children``, notes the task in a transaction-local setting;
#: a statement trigger then settles every task its statement ended at once, so the child of many
#: parents ended in one outcome batch is counted down once, and a statement that ended no parent
#: finds the note empty and returns. A parent that failed or was cancelled first cancels its waiting
#: descendants (all of them, through children that do not run anyway; that cancel settles their
#: children in turn); then each task still waiting counts off its parents that ended and becomes
#: pending, due now or at its own later time, when none is left. Each statement of the function
#: reads a fresh snapshot, so it sees a child whose submit committed while the end waited for the
#: parent's row; two statements ending parents of one child both update the child's row, the second
#: after the first, from its result. A child counts its ended parents by looking each one up in the
#: child index, never by reading its own parent list, which for a fan-in holds thousands of ids; the
#: count is materialized, so it runs once whatever the statistics say. Children are found through
#: the child index, and updated through the primary key, only: state tests are kept out of index
#: selection, as in ``STILL_RUNNING``. The child index is GIN, read by bitmap scans only: the
#: function turns them on, and sequential scans off, for itself (a worker's write connection has
#: them the other way round), and hash joins on.
NOTE_ENDED = """
CREATE OR REPLACE FUNCTION tasklib_note_ended() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config(
        'tasklib.ended',
        coalesce(nullif(current_setting('tasklib.ended', true), '') || ',', '') || NEW.id || ' ' || NEW.state
            || ' ' || coalesce(replace(substring(NEW.error FROM 1 FOR 80), ',', ' '), ''),
        true);
    RETURN NULL;
END
$$
"""
SETTLE_CHILDREN = rf"""
CREATE OR REPLACE FUNCTION tasklib_settle_children() RETURNS trigger
LANGUAGE plpgsql SET enable_bitmapscan = on SET enable_seqscan = off SET enable_hashjoin = on AS $$
DECLARE
    noted text := current_setting('tasklib.ended', true);
    woken integer;
BEGIN
    IF noted IS NULL OR noted = '' THEN
        RETURN NULL;
    END IF;
    PERFORM set_config('tasklib.ended', '', true);
    WITH RECURSIVE noted_ends AS (
        SELECT n, split_part(n, ' ', 1) AS id_text, split_part(n, ' ', 2) AS state
        FROM unnest(string_to_array(noted, ',')) AS n
    ), ended AS (
        SELECT CAST(id_text AS uuid) AS id, state = 'completed' AS ok,
               coalesce(substring(substr(n, length(id_text) + length(state) + 3) FROM '^{PARENT_FAILED}(\S+ \S+)'),
                        id_text || ' ' || state) AS cause
        FROM noted_ends
    ), doomed(id, cause) AS (
        SELECT c.id, e.cause FROM ended AS e JOIN tasks AS c ON c.parent_ids && ARRAY[e.id]
        WHERE NOT e.ok AND c.state || '' = 'waiting' AND c.on_parent_failure IS NULL
        UNION
        SELECT c.id, d.cause FROM doomed AS d JOIN tasks AS c ON c.parent_ids && ARRAY[d.id]
        WHERE c.state || '' = 'waiting' AND c.on_parent_failure IS NULL
    ), counts AS MATERIALIZED (
        SELECT c.id, count(*) AS n
        FROM ended AS e JOIN tasks AS c ON c.parent_ids && ARRAY[e.id]
        WHERE c.state || '' = 'waiting' AND c.id NOT IN (SELECT id FROM doomed)
        GROUP BY c.id
    ), cancelled AS (
        UPDATE tasks AS t SET state = 'cancelled', completed_at = now(), error = '{PARENT_FAILED}' || d.cause
        FROM (SELECT id, min(cause) AS cause FROM doomed GROUP BY id) AS d
        WHERE t.id = d.id AND t.state || '' = 'waiting'
        RETURNING t.id
    ), released AS (
        UPDATE tasks AS t
        SET waiting_for = t.waiting_for - k.n,
            state = CASE WHEN t.waiting_for <= k.n THEN 'pending' ELSE 'waiting' END,
            scheduled_at = CASE WHEN t.waiting_for <= k.n THEN greatest(t.scheduled_at, now()) ELSE t.scheduled_at END
        FROM counts AS k
        WHERE t.id = k.id AND t.state || '' = 'waiting'
        RETURNING t.state, t.name, t.priority, t.queue
    )
    SELECT count({notify_submit("r.name", "CAST(r.priority AS text)", "r.queue")}) + (SELECT count(*) FROM cancelled)
    INTO woken
    FROM (SELECT DISTINCT name, priority, queue FROM released WHERE state = 'pending') AS r;
    RETURN NULL;
END
$$
"""
SETTLE_TRIGGERS = [
    """
CREATE TRIGGER tasks_note_ended AFTER UPDATE OF state ON tasks FOR EACH ROW
WHEN (NEW.has_children AND NEW.state IN ('completed', 'failed', 'cancelled') AND OLD.state IS DISTINCT FROM NEW.state)
EXECUTE FUNCTION tasklib_note_ended()
""",
    """
CREATE TRIGGER tasks_settle_children AFTER UPDATE OF state ON tasks FOR EACH STATEMENT
EXECUTE FUNCTION tasklib_settle_children()
""",
]

#: cancelled -> waiting: after retry_task (or a bulk retry) of the tasks in %(ids)s, in its
#: transaction, the descendants their failure or cancel cancelled go back to waiting, each counting
#: again the parents that have not completed.
RESTORE_CHILDREN = f"""
WITH RECURSIVE tree(id) AS (
    SELECT c.id FROM tasks AS c WHERE c.parent_ids && CAST(%(ids)s AS uuid[])
    UNION
    SELECT c.id FROM tree JOIN tasks AS c ON c.parent_ids @> ARRAY[tree.id]
), restored AS (
    UPDATE tasks AS t
    SET state = 'waiting', completed_at = NULL, error = NULL,
        waiting_for = (SELECT count(*) FROM tasks AS p WHERE p.id = ANY(t.parent_ids) AND p.state <> 'completed')
    WHERE t.id IN (SELECT id FROM tree) AND t.state = 'cancelled' AND starts_with(t.error, '{PARENT_FAILED}')
      AND split_part(t.error, ' ', 3) = ANY(CAST(%(ids)s AS text[]))
    RETURNING t.id
)
SELECT count(*) FROM restored
"""

#: Which of these ids are tasks (the error for an unknown parent names the others).
EXISTING_IDS = "SELECT id FROM tasks WHERE id = ANY(CAST(%(ids)s AS uuid[]))"

#: Parents and children of one task, for its page: id, name, state.
PARENTS_OF = "SELECT id, name, state FROM tasks WHERE id = ANY(%(ids)s) ORDER BY created_at, id"
CHILDREN_OF = """
SELECT id, name, state FROM tasks WHERE parent_ids @> ARRAY[CAST(%(id)s AS uuid)] ORDER BY created_at, id
"""

#: The workflow around one task: its ancestors, then everything that descends from them (capped).
WORKFLOW = """
WITH RECURSIVE up(id) AS (
    SELECT CAST(%(id)s AS uuid)
    UNION
    SELECT unnest(t.parent_ids) FROM up JOIN tasks AS t ON t.id = up.id WHERE t.parent_ids IS NOT NULL
), down(id) AS (
    SELECT id FROM up
    UNION
    SELECT c.id FROM down JOIN tasks AS c ON c.parent_ids @> ARRAY[down.id]
)
SELECT t.id, t.name, t.state, t.parent_ids, t.waiting_for FROM tasks AS t
WHERE t.id IN (SELECT id FROM down) ORDER BY t.created_at, t.id LIMIT %(cap)s
"""
