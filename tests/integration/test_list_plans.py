"""The dashboard's lists keep their plans on a large table: one short ordered walk per state (or name
and state), bounded tag walks, and pages identical to the plain query's."""

from __future__ import annotations

from typing import Any

import psycopg

import tasklib
from tasklib import listing
from tasklib.db import TAG_INDEX_PLANNER_SETTINGS, TAG_WALK_PLANNER_SETTINGS


def test_name_filters_read_one_range_per_state_and_keep_the_order(tl: tasklib.Config) -> None:
    """Dashboard lists filtered by name: "failed tasks of a name that never failed" must not walk
    every failed row, and a name alone must not sort all of that name's rows. The merged page must
    be the same rows, in the same order, as the plain query."""
    with psycopg.connect(tl.database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO tasks (id, name, kwargs, state, created_at, completed_at, started_at, worker_id)"
            " SELECT gen_random_uuid(), 'app.job_' || (g % 20), '{}',"
            " CASE WHEN g % 20 < 10 AND g % 4 = 0 THEN 'failed' WHEN g % 7 = 0 THEN 'cancelled' ELSE 'completed' END,"
            " now() - g * interval '1 second', now(), now(), 'w'"
            " FROM generate_series(1, 60000) AS g"
        )
        conn.execute("ANALYZE tasks")

        def plan(**filters: Any) -> str:
            query, params = listing.page_query(**filters)
            return "\n".join(r[0] for r in conn.execute("EXPLAIN " + query, {**params, "limit": 51}).fetchall())

        empty_pair = plan(state="failed", name="app.job_15")
        assert "tasks_name_state_created_idx" in empty_pair and "tasks_state_created_idx" not in empty_pair, empty_pair
        by_name = plan(name="app.job_3")
        assert "Seq Scan" not in by_name and "Bitmap" not in by_name, by_name
        assert "Merge Append" in by_name, by_name  # short ordered walks per state, merged: no sort of every row

        _assert_pages_match_the_plain_query(conn, name="app.job_3")


def test_lists_across_states_merge_one_ordered_walk_per_state(tl: tasklib.Config) -> None:
    """With no index on created order alone (schema 6), a list of every state, newest or oldest
    first, is one short walk of tasks_state_created_idx per state, merged: never a sort of the
    table. Each page must be the rows, in the order, of the plain query. ``page_query`` with a tag
    reads the tag's own index (the dashboard's answer when its bounded walks cannot tell)."""
    with psycopg.connect(tl.database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO tasks (id, name, kwargs, state, created_at, completed_at, started_at, worker_id, locked_until)"
            " SELECT gen_random_uuid(), 'app.job_' || (g % 20), '{}',"
            " CASE WHEN g % 50 = 0 THEN 'running' WHEN g % 11 = 0 THEN 'failed' WHEN g % 7 = 0 THEN 'pending'"
            " ELSE 'completed' END,"
            " now() - (g / 3) * interval '1 second', now(), now(), 'w', now()"
            " FROM generate_series(1, 60000) AS g"
        )
        conn.execute(
            "UPDATE tasks SET completed_at = NULL, started_at = NULL, worker_id = NULL, locked_until = NULL"
            " WHERE state = 'pending'"
        )
        conn.execute("UPDATE tasks SET locked_until = NULL WHERE state <> 'running'")
        conn.execute(
            "UPDATE tasks SET tags = jsonb_build_object('batch', 'b' || (created_at::time::text)) WHERE random() < 0.01"
        )
        conn.execute("ANALYZE tasks")
        # The tag index's query: the tag's rows sorted once, not a walk of every state's rows.
        query, params = listing.page_query(tag=("batch", "b00:00:00"))
        plan = "\n".join(r[0] for r in conn.execute("EXPLAIN " + query, {**params, "limit": 51}).fetchall())
        assert "tasks_tagged_idx" in plan and "Merge Append" not in plan, plan
        for descending in (True, False):
            query, params = listing.page_query(descending=descending)
            plan = "\n".join(r[0] for r in conn.execute("EXPLAIN " + query, {**params, "limit": 51}).fetchall())
            assert "Merge Append" in plan and "Seq Scan" not in plan and "Bitmap" not in plan, plan
            assert "Sort" not in plan.replace("Sort Key", ""), plan  # each walk comes out in order
            _assert_pages_match_the_plain_query(conn, descending=descending)


def test_tag_lists_walk_a_bounded_range_per_state_or_ask_the_tag_index(tl: tasklib.Config) -> None:
    """A tag many recent rows hold is read like any list, one walk per state that stops at
    TAG_WALK_ROWS rows, not by sorting every row that holds the tag (400 ms for 50,000 of them in a
    five-million-row table); a tag no recent row holds is left to the tag index. Either way each
    keyset page, newest or oldest first, holds the rows, in the order, of the plain query."""
    from tasklib.db import Database
    from tasklib.filters import TaskFilter
    from tasklib.monitor import Monitor, merge_tag_walks

    with psycopg.connect(tl.database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO tasks (id, name, kwargs, state, created_at, completed_at, started_at, worker_id, tags)"
            " SELECT gen_random_uuid(), 'app.job_' || (g % 20), '{}',"
            " CASE WHEN g % 11 = 0 THEN 'failed' WHEN g % 7 = 0 THEN 'cancelled' ELSE 'completed' END,"
            " now() - (g / 3) * interval '1 second', now(), now(), 'w',"
            # "common": 1 row in 40 throughout; "old": only rows older than the newest 40,000.
            ' CASE WHEN g % 40 = 0 THEN \'{"batch": "common"}\'::jsonb'
            ' WHEN g > 40000 AND g % 40 = 1 THEN \'{"batch": "old"}\'::jsonb END'
            " FROM generate_series(1, 60000) AS g"
        )
        conn.execute("ANALYZE tasks")

    db = Database(tl.database_url)  # type: ignore[arg-type]
    monitor = Monitor(db)

    def plan(query: str, params: dict[str, Any], settings: dict[str, str]) -> str:
        """The plan under those settings, set the way the dashboard sets them (``Database.rows``)."""
        return "\n".join(
            r[0] for r in db.rows("EXPLAIN " + query, {**params, "limit": 51}, as_dict=False, settings=settings)
        )

    try:
        walks = plan(*listing.tag_walk_query(tag=("batch", "common")), TAG_WALK_PLANNER_SETTINGS)
        assert "tasks_state_created_idx" in walks and "Seq Scan" not in walks and "Bitmap" not in walks, walks
        assert "Sort" not in walks.replace("Sort Key", ""), walks  # each walk comes out in order
        # When the walks cannot tell, the tag index answers, through bitmaps only: never a walk of a
        # state's range that filters every row of it (the walks have just been tried). Without the
        # settings, this one is walked.
        index = plan(*listing.page_query(state="completed", tag=("batch", "old")), TAG_INDEX_PLANNER_SETTINGS)
        assert "tasks_tagged_idx" in index and "Index Scan using" not in index and "Seq Scan" not in index, index

        # (tag, newest first, walks tell the page): the old rows are where an oldest-first walk starts.
        for tag, descending, answered in (
            (("batch", "common"), True, True),
            (("batch", "common"), False, True),
            (("batch", "old"), True, False),
            (("batch", "old"), False, True),
        ):
            query, params = listing.tag_walk_query(descending=descending, tag=tag)
            walks = db.rows(query, {**params, "limit": 51}, settings=TAG_WALK_PLANNER_SETTINGS)
            assert (merge_tag_walks(walks, 51, descending) is not None) is answered, (tag, descending)
            order = "DESC" if descending else "ASC"
            cursor: str | None = None
            keyset: tuple[object, object] | None = None
            for _ in range(3):
                page = monitor.page(TaskFilter(tag=tag), after=cursor, oldest_first=not descending)
                where, plain_params = listing.filter_clause(tag=tag, cursor=keyset, cursor_op="<" if descending else ">")
                plain = db.rows(
                    f"SELECT id FROM tasks {where} ORDER BY created_at {order}, id {order} LIMIT 50", plain_params
                )
                assert [t.id for t in page.tasks] == [r["id"] for r in plain] and len(plain) == 50, (tag, descending)
                cursor, keyset = page.next, (page.tasks[-1].created_at, page.tasks[-1].id)
    finally:
        db.close()


def _assert_pages_match_the_plain_query(conn: psycopg.Connection[Any], descending: bool = True, **filters: Any) -> None:
    """Three keyset pages of ``listing.page_query`` hold the rows, in the order, of one plain query."""
    order = "DESC" if descending else "ASC"
    cursor = None
    for _ in range(3):
        query, params = listing.page_query(descending=descending, cursor=cursor, **filters)
        merged = [r[0] for r in conn.execute(query, {**params, "limit": 51}).fetchall()]
        where, plain_params = listing.filter_clause(cursor=cursor, cursor_op="<" if descending else ">", **filters)
        plain = [
            r[0]
            for r in conn.execute(
                f"SELECT id FROM tasks {where} ORDER BY created_at {order}, id {order} LIMIT 51", plain_params
            ).fetchall()
        ]
        assert merged == plain and len(merged) == 51
        last = conn.execute("SELECT created_at, id FROM tasks WHERE id = %s", [merged[-1]]).fetchone()
        cursor = (last[0], last[1])  # type: ignore[index]
