"""Create and evolve the ``tasks`` table. DDL is generated from the SQLModel class.

Versioning: the version is kept in the table's comment (``tasklib schema N``), so no second table is
needed. A new version appends a list of additive statements to ``MIGRATIONS``; ``init`` applies the
missing ones under an advisory lock, so any number of processes may start at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql as psql

from tasklib import sql
from tasklib.sql import UNIQUE_KEY_HELD
from tasklib.states import SLOT_KEY_PREFIX, STORED_STATES

SCHEMA_VERSION = 11

#: Storage settings for a queue table: room on each page for a row's next versions (a batch updates
#: a page's rows together), and vacuum and analyze after a fixed number of changed rows, not a
#: fraction of a table that may hold millions of finished ones (docs/design/plans.md).
STORAGE_SETTINGS = (
    "fillfactor = 50, autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 20000, "
    "autovacuum_vacuum_insert_scale_factor = 0, autovacuum_vacuum_insert_threshold = 20000, "
    "autovacuum_analyze_scale_factor = 0, autovacuum_analyze_threshold = 20000"
)


def create_statements() -> list[str]:
    """``CREATE TABLE`` and ``CREATE INDEX`` statements, all ``IF NOT EXISTS``, from the SQLModel class.

    Imported on demand: processes that find the schema current never load SQLAlchemy.
    """
    from sqlalchemy.dialects import postgresql
    from sqlalchemy.schema import CreateIndex, CreateTable

    from tasklib.models import Task

    dialect = postgresql.dialect()
    table = Task.__table__  # type: ignore[attr-defined]
    statements = [str(CreateTable(table, if_not_exists=True).compile(dialect=dialect))]
    for index in sorted(table.indexes, key=lambda ix: ix.name):
        statements.append(str(CreateIndex(index, if_not_exists=True).compile(dialect=dialect)))
    # SQLAlchemy doubles % for its pyformat parameters, but these run without parameters: a partial
    # index predicate must read exactly as the queries that rely on it (LIKE 'tasklib.slot:%').
    return [statement.replace("%%", "%") for statement in statements]


#: version -> a function returning the statements that bring the previous version up to it.
#: Additive (new nullable columns, new indexes) or dropping an index no statement of the version
#: before needs for its correctness, so old workers keep running during a deploy.
MIGRATIONS: dict[int, Callable[[], list[str]]] = {
    1: create_statements,
    # 2: the lock index's predicate moves from state to locked_until (see models.Task). Building an
    # index takes a write lock on the table for the time it takes; on a very large table, create
    # tasks_locked_idx CONCURRENTLY by hand first and this step finds it there.
    2: lambda: [
        "CREATE INDEX IF NOT EXISTS tasks_locked_idx ON tasks (locked_until) WHERE locked_until IS NOT NULL",
        "DROP INDEX IF EXISTS tasks_running_lock_idx",
    ],
    # 3: the claim index gains id (FIFO within a priority, no sort), queue storage settings, and the
    # tag index covers tagged rows only.
    3: lambda: [
        "CREATE INDEX IF NOT EXISTS tasks_pending_idx ON tasks (priority DESC, scheduled_at, id) WHERE state = 'pending'",
        "DROP INDEX IF EXISTS tasks_pending_due_idx",
        f"ALTER TABLE tasks SET ({STORAGE_SETTINGS})",
        "CREATE INDEX IF NOT EXISTS tasks_tagged_idx ON tasks USING gin (tags jsonb_path_ops) WHERE tags IS NOT NULL",
        "DROP INDEX IF EXISTS tasks_tags_idx",
    ],
    # 4: the name index gains state (see models.Task): a name + state filter is one index range.
    4: lambda: [
        "CREATE INDEX IF NOT EXISTS tasks_name_state_created_idx ON tasks (name, state, created_at DESC, id DESC)",
        "DROP INDEX IF EXISTS tasks_name_created_idx",
    ],
    # 5: unique tasks and recurring-task slots. Adding a nullable column without a default only
    # changes the catalogue (no table rewrite); the two indexes are partial and start empty, but
    # building them still reads the table once under a write lock (CONCURRENTLY by hand first on a
    # very large table, as for 2).
    5: lambda: [
        "ALTER TABLE tasks ADD COLUMN IF NOT EXISTS unique_key text",
        f"CREATE UNIQUE INDEX IF NOT EXISTS tasks_unique_key_idx ON tasks (unique_key) WHERE {UNIQUE_KEY_HELD}",
        "CREATE INDEX IF NOT EXISTS tasks_slot_idx ON tasks (name, scheduled_at DESC) "
        f"WHERE unique_key LIKE '{SLOT_KEY_PREFIX}%'",
    ],
    # 6: no index on created order alone (see models.Task): lists read it per state. Dropping it
    # only removes work; a dashboard of version 5 still running during a deploy lists all states
    # with a sort until it is replaced.
    6: lambda: ["DROP INDEX IF EXISTS tasks_created_idx"],
    # 7: fillfactor 50 (see STORAGE_SETTINGS). Only a catalogue change: pages filled from now on
    # keep the room, existing ones keep their fill (no rewrite, no lock held for long).
    7: lambda: [f"ALTER TABLE tasks SET ({STORAGE_SETTINGS})"],
    # 8: workflows. Four nullable columns (catalogue changes only), the state 'waiting' (the state
    # check is replaced NOT VALID, so no existing row is read under the lock: each was checked
    # against the narrower list already), the trigger that settles a parent's children when it ends,
    # and the children index: partial, it starts empty, but building it reads the table once
    # (CONCURRENTLY by hand first on a very large table, as for 2).
    8: lambda: [
        "ALTER TABLE tasks ADD COLUMN IF NOT EXISTS parent_ids uuid[]",
        "ALTER TABLE tasks ADD COLUMN IF NOT EXISTS waiting_for integer",
        "ALTER TABLE tasks ADD COLUMN IF NOT EXISTS on_parent_failure varchar",
        "ALTER TABLE tasks ADD COLUMN IF NOT EXISTS has_children boolean",
        "ALTER TABLE tasks DROP CONSTRAINT IF EXISTS tasks_state_valid",
        f"ALTER TABLE tasks ADD CONSTRAINT tasks_state_valid CHECK (state IN ({_states()})) NOT VALID",
        "CREATE INDEX IF NOT EXISTS tasks_parents_idx ON tasks USING gin (parent_ids) WHERE parent_ids IS NOT NULL",
        sql.NOTE_ENDED,
        sql.SETTLE_CHILDREN,
        "DROP TRIGGER IF EXISTS tasks_note_ended ON tasks",
        "DROP TRIGGER IF EXISTS tasks_settle_children ON tasks",
        *sql.SETTLE_TRIGGERS,
    ],
    # 9: a fan-in child counts its ended parents through the children index, which keeps no pending
    # list. Setting the option rewrites nothing; the function is replaced in place.
    9: lambda: [
        "ALTER INDEX IF EXISTS tasks_parents_idx SET (fastupdate = off)",
        sql.SETTLE_CHILDREN,
    ],
    # 10: queues. A column with a constant default is a catalogue change (no rewrite); the state
    # check gains the settings rows' state (NOT VALID, as in 8); the claim index gains the queue in
    # front, built while the table is locked for writes (CONCURRENTLY by hand first on a very large
    # table, as for 2). Workers of version 9 still claim meanwhile, with a sort.
    10: lambda: [
        "ALTER TABLE tasks ADD COLUMN IF NOT EXISTS queue varchar NOT NULL DEFAULT 'default'",
        "ALTER TABLE tasks DROP CONSTRAINT IF EXISTS tasks_state_valid",
        f"ALTER TABLE tasks ADD CONSTRAINT tasks_state_valid CHECK (state IN ({_states()})) NOT VALID",
        "CREATE INDEX IF NOT EXISTS tasks_queue_pending_idx ON tasks (queue, priority DESC, scheduled_at, id) "
        "WHERE state = 'pending'",
        "DROP INDEX IF EXISTS tasks_pending_idx",
        sql.SETTLE_CHILDREN,  # (its NOTIFY names the released tasks' queues)
    ],
    # 11: the tasks table holds only tasks. Queue settings, limits' clocks and retention records
    # move to tasklib_settings, and workers announce themselves in tasklib_workers (presence, which
    # finds a dead worker without seeing its sessions). Two new small tables; the moved rows are
    # found through the name index; the state check loses 'setting' (NOT VALID, as in 8). Workers of
    # version 10 lose their settings rows: replace them all (CHANGELOG.md).
    11: lambda: [
        sql.CREATE_SETTINGS,
        sql.CREATE_WORKERS,
        *sql.MOVE_SETTINGS,
        "ALTER TABLE tasks DROP CONSTRAINT IF EXISTS tasks_state_valid",
        f"ALTER TABLE tasks ADD CONSTRAINT tasks_state_valid CHECK (state IN ({_states()})) NOT VALID",
    ],
}


def _states() -> str:
    return ", ".join(f"'{state}'" for state in STORED_STATES)


def _version_comment(version: int) -> str:
    return f"tasklib schema {version}"


def current_version(conn: psycopg.Connection[Any]) -> int:
    """The schema version recorded on the table, 0 when there is no table."""
    if not conn.execute(sql.TABLE_EXISTS).fetchone()[0]:  # type: ignore[index]
        return 0
    comment = conn.execute(sql.SCHEMA_VERSION_GET).fetchone()[0]  # type: ignore[index]
    if comment and comment.startswith("tasklib schema "):
        return int(comment.rsplit(" ", 1)[1])
    return 1  # a table created by hand from the documented DDL


def ensure_schema(conn: psycopg.Connection[Any]) -> int:
    """Create or upgrade the table; safe to call from many processes at once. Returns the version."""
    with conn.transaction():
        conn.execute(sql.SCHEMA_LOCK)
        found = version = current_version(conn)
        for target in sorted(v for v in MIGRATIONS if v > version):
            for statement in MIGRATIONS[target]():
                conn.execute(statement)  # type: ignore[call-overload]
            version = target
        if version != found:
            conn.execute(psql.SQL(sql.SCHEMA_VERSION_SET).format(psql.Literal(_version_comment(version))))
    return version


def cleanup_problem(server_on: bool, table_on: bool) -> str | None:
    """What to tell an operator when autovacuum will not clean the table, or None when it will.

    Every task leaves two dead row versions (see ``STORAGE_SETTINGS``). Without autovacuum nothing
    removes them: the table and its indexes grow with every task ever run and each statement pays
    for it (docs/design/plans.md).
    """
    where = [
        what
        for what, on in (
            ("on this server (autovacuum or track_counts)", server_on),
            ("for the tasks table (autovacuum_enabled)", table_on),
        )
        if not on
    ]
    if not where:
        return None
    return (
        f"autovacuum is off {' and '.join(where)}: the two dead row versions every task leaves are never"
        " cleaned up, so the table and its indexes keep growing and throughput falls. Turn it on, or"
        " run VACUUM on tasks yourself often"
    )


def check_cleanup(conn: psycopg.Connection[Any]) -> str | None:
    """``cleanup_problem`` for the table this connection sees."""
    server_on, table_on = conn.execute(sql.CLEANUP_SETTINGS).fetchone()  # type: ignore[misc]
    return cleanup_problem(server_on, table_on)
