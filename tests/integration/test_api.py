"""The library API against a real PostgreSQL: the seed's Quick Start, validation, listing, actions."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import uuid
from datetime import UTC, datetime

import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

import tasklib
from tasklib.schema import SCHEMA_VERSION, ensure_schema
from tests.integration import jobs
from tests.pg import fresh_database
from tests.workers import ROOT


def count(url: str, where: str = "TRUE") -> int:
    with psycopg.connect(url) as conn:
        return conn.execute(f"SELECT count(*) FROM tasks WHERE {where}").fetchone()[0]  # type: ignore[index]


def test_seed_quick_start_sections_1_2_3_5(database_url: str, tmp_path) -> None:
    """The seed README's code, as written (plus the ``body`` its send_email example forgot)."""
    script = tmp_path / "quickstart.py"
    script.write_text(
        textwrap.dedent(f'''
        import asyncio
        import tasklib

        config = tasklib.Config(
            database_url="{database_url}",
            max_retries=3,
            base_retry_delay_seconds=5.0,
            lock_timeout_seconds=600,  # 10 minutes
        )
        tasklib.init(config)

        @tasklib.task
        def send_email(to: str, subject: str, body: str) -> bool:
            print(f"Sending email to {{to}}: {{subject}}")
            return True

        @tasklib.task(max_retries=5, timeout_seconds=30)
        def process_image(image_path: str) -> str:
            return f"processed_{{image_path}}"

        async def main():
            task_id = await tasklib.submit_task(send_email, to="user@example.com", subject="Hello", body="Hi")
            task_id = await tasklib.submit_task(
                send_email, delay_seconds=60, to="user@example.com", subject="Scheduled email", body="Later"
            )
            task_id = await tasklib.submit_task(
                process_image, image_path="/tmp/photo.jpg", priority=10, tags={{"batch": "daily-processing"}}
            )
            return task_id

        task_id = asyncio.run(main())
        task = tasklib.get_task(task_id)
        print(f"State: {{task.state}}")
        print(f"Result: {{task.result}}")
        print(f"Error: {{task.error}}")
        pending_tasks = tasklib.list_tasks(state="pending")
        failed_tasks = tasklib.list_tasks(state="failed", name="send_email")
        tasks_dict = tasklib.get_registered_tasks()
        print(len(pending_tasks), len(failed_tasks), sorted(tasks_dict))
        print(task.priority, task.tags, task.max_retries, task.timeout_seconds)
    ''')
    )
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    assert "State: pending" in out
    assert "Result: None" in out
    assert "3 0 ['quickstart.process_image', 'quickstart.send_email']" in out
    assert "10 {'batch': 'daily-processing'} 5 30" in out


def test_seed_example_without_body_is_refused(tl) -> None:
    with pytest.raises(tasklib.ValidationError) as info:
        asyncio.run(tasklib.submit_task(jobs.send_email, to="user@example.com", subject="Hello"))
    assert "body" in str(info.value)
    assert info.value.errors == [{"field": "body", "message": "Field required"}]
    assert count(tl.database_url) == 0


@pytest.mark.parametrize(
    ("kwargs", "options", "field"),
    [
        ({"to": "a", "subject": "b"}, {}, "body"),
        ({"to": "a", "subject": "b", "body": "c", "cc": "d"}, {}, "cc"),
        ({"to": ["a"], "subject": "b", "body": "c"}, {}, "to"),
        ({"to": "a", "subject": "b", "body": "c"}, {"priority": 10**9}, "priority"),
        ({"to": "a", "subject": "b", "body": "c"}, {"delay_seconds": -1}, "delay_seconds"),
        ({"to": "a", "subject": "b", "body": "c"}, {"max_retries": -1}, "max_retries"),
        ({"to": "a", "subject": "b", "body": "c"}, {"timeout_seconds": 0}, "timeout_seconds"),
        ({"to": "a", "subject": "b", "body": "c"}, {"tags": ["not", "a", "dict"]}, "tags"),
    ],
)
def test_validation_failures_insert_nothing(tl, kwargs, options, field) -> None:
    for submit in (
        lambda: asyncio.run(tasklib.submit_task(jobs.send_email, **options, **kwargs)),
        lambda: tasklib.submit_task_sync(jobs.send_email, **options, **kwargs),
    ):
        with pytest.raises(tasklib.ValidationError) as info:
            submit()
        assert field in str(info.value)
    assert count(tl.database_url) == 0


def test_unregistered_function_and_unstorable_arguments(tl) -> None:
    def plain(x: int) -> int:
        return x

    with pytest.raises(tasklib.TaskNotRegistered):
        tasklib.submit_task_sync(plain, x=1)

    @tasklib.task
    def takes_anything(value):  # type: ignore[no-untyped-def]
        return value

    with pytest.raises(tasklib.ValidationError):
        tasklib.submit_task_sync(takes_anything, value=object())
    with pytest.raises(tasklib.ValidationError):
        tasklib.submit_task_sync(takes_anything, value="nul\x00char")
    assert count(tl.database_url) == 0


def test_rich_arguments_are_stored_as_json(tl) -> None:
    import datetime
    import decimal

    task_id = tasklib.submit_task_sync(
        jobs.rich,
        when=datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC),
        ident=uuid.UUID(int=7),
        amount=decimal.Decimal("12.50"),
        color=jobs.Color.BLUE,
        point=jobs.Point(x=1, y=2),
    )
    task = tasklib.get_task(str(task_id))
    assert task is not None
    assert task.kwargs == {
        "when": "2026-01-02T03:04:05Z",
        "ident": str(uuid.UUID(int=7)),
        "amount": "12.50",
        "color": "blue",
        "point": {"x": 1, "y": 2},
    }


def test_concurrent_init_from_ten_processes(database_url: str) -> None:
    code = f"import tasklib; tasklib.init(tasklib.Config(database_url={database_url!r})); print('ok')"
    procs = [
        subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(10)
    ]
    results = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), [r[1] for r in results]
    with psycopg.connect(database_url) as conn:
        comment = conn.execute("SELECT obj_description('tasks'::regclass, 'pg_class')").fetchone()
        assert comment == (f"tasklib schema {SCHEMA_VERSION}",)
        indexes = {r[0] for r in conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'tasks'")}
    assert "tasks_queue_pending_idx" in indexes


def test_init_switches_database(config) -> None:
    from tests.pg import fresh_database

    tasklib.init(config)
    tasklib.submit_task_sync(jobs.mark, key="first")
    with fresh_database() as other_url:
        tasklib.init(tasklib.Config(database_url=other_url))
        tasklib.submit_task_sync(jobs.mark, key="second")
        assert [t.kwargs["key"] for t in tasklib.list_tasks()] == ["second"]
        tasklib.init(config)  # release the other database before it is dropped
    assert [t.kwargs["key"] for t in tasklib.list_tasks()] == ["first"]


def test_transactional_submit_with_psycopg(tl) -> None:
    with psycopg.connect(tl.database_url) as conn:
        task_id = tasklib.submit_task_in(conn, jobs.mark, key="committed")
        conn.commit()
    with psycopg.connect(tl.database_url) as conn:
        tasklib.submit_task_in(conn, jobs.mark, key="rolled-back")
        conn.rollback()
    assert [t.id for t in tasklib.list_tasks()] == [task_id]


def test_transactional_submit_with_sqlmodel_session(tl) -> None:
    from sqlalchemy import create_engine, text
    from sqlmodel import Session

    for driver in ("postgresql+psycopg", "postgresql+psycopg2"):
        engine = create_engine(tl.database_url.replace("postgresql", driver, 1))
        with Session(engine) as session:
            session.execute(text("SELECT 1"))
            kept = tasklib.submit_task_in(session, jobs.mark, key=f"{driver}-commit")
            session.commit()
        with Session(engine) as session:
            tasklib.submit_task_in(session, jobs.mark, key=f"{driver}-rollback")
            session.rollback()
        with engine.begin() as connection:  # a Connection works too
            tasklib.submit_task_in(connection, jobs.mark, key=f"{driver}-conn")
        engine.dispose()
        keys = {t.kwargs["key"] for t in tasklib.list_tasks()}
        assert f"{driver}-commit" in keys and f"{driver}-conn" in keys
        assert f"{driver}-rollback" not in keys
        assert tasklib.get_task(kept) is not None


def test_submit_many_one_statement_and_all_or_nothing(tl) -> None:
    ids = asyncio.run(tasklib.submit_many(jobs.mark, [{"key": str(i)} for i in range(500)], priority=3))
    assert len(set(ids)) == 500
    assert count(tl.database_url, "priority = 3 AND state = 'pending'") == 500
    sync_ids = tasklib.submit_many_sync(jobs.mark, [{"key": "a"}, {"key": "b"}], tags={"k": "v"})
    assert {t.tags["k"] for t in map(tasklib.get_task, sync_ids)} == {"v"}  # type: ignore[index,union-attr]
    with pytest.raises(tasklib.ValidationError) as info:
        tasklib.submit_many_sync(jobs.mark, [{"key": "ok"}, {"nope": 1}])
    assert "item 1" in str(info.value)
    assert count(tl.database_url) == 502


def test_list_tasks_filters_order_and_limits(tl) -> None:
    first = tasklib.submit_task_sync(jobs.mark, key="1")
    second = tasklib.submit_task_sync(jobs.send_email, to="a", subject="b", body="c")
    third = tasklib.submit_task_sync(jobs.mark, key="3")
    tasklib.cancel_task(third)
    assert [t.id for t in tasklib.list_tasks()] == [third, second, first]  # newest first
    assert [t.id for t in tasklib.list_tasks(limit=2)] == [third, second]
    assert [t.id for t in tasklib.list_tasks(state="pending")] == [second, first]
    assert [t.id for t in tasklib.list_tasks(state=tasklib.TaskState.CANCELLED)] == [third]
    assert [t.id for t in tasklib.list_tasks(name="mark")] == [third, first]  # bare function name
    assert [t.id for t in tasklib.list_tasks(name="tests.integration.jobs.mark", state="pending")] == [first]
    assert tasklib.list_tasks(name="no_such_task") == []
    with pytest.raises(tasklib.ValidationError):
        tasklib.list_tasks(state="bogus")
    with pytest.raises(tasklib.ValidationError):
        tasklib.list_tasks(limit=0)


def test_get_task_accepts_uuid_or_string(tl) -> None:
    task_id = tasklib.submit_task_sync(jobs.mark, key="x")
    assert tasklib.get_task(task_id) == tasklib.get_task(str(task_id))
    assert tasklib.get_task(uuid.uuid4()) is None
    with pytest.raises(tasklib.ValidationError):
        tasklib.get_task("not-a-uuid")


def test_cancel_and_retry_transitions(tl) -> None:
    task_id = tasklib.submit_task_sync(jobs.mark, key="x")
    assert tasklib.cancel_task(task_id).state == "cancelled"
    with pytest.raises(tasklib.InvalidTransition) as info:
        tasklib.cancel_task(task_id)
    assert info.value.current_state == "cancelled"
    task = tasklib.retry_task(task_id)
    assert task.state == "pending"
    with pytest.raises(tasklib.InvalidTransition):
        tasklib.retry_task(task_id)
    with pytest.raises(tasklib.TaskNotFound):
        tasklib.cancel_task(uuid.uuid4())
    assert tasklib.count_by_state()["pending"] == 1


def test_retries_tell_workers_when_and_at_which_priority(tl) -> None:
    """A manual retry makes a task pending at the database's now(): its NOTIFY carries that time and
    the priority, as a submit's does, so a worker's claim floor reaches it even when the retry's
    transaction commits late (``tasklib.worker.claim``). Bulk retries notify once per name and priority."""
    from tasklib import actions
    from tasklib.filters import TaskFilter
    from tasklib.worker.connections import submit_note
    from tests.factory import make_task

    one = make_task(tl.database_url, "failed", priority=7)
    for _ in range(3):
        make_task(tl.database_url, "cancelled", priority=-2)
    with psycopg.connect(tl.database_url, autocommit=True) as listener:
        listener.execute("LISTEN tasklib_submit")
        before = listener.execute("SELECT extract(epoch FROM now())").fetchone()[0]  # type: ignore[index]
        tasklib.retry_task(one)
        assert actions.retry_matching(tasklib.api.database(), TaskFilter(state=tasklib.TaskState.CANCELLED)) == 3
        notes = [submit_note(n.payload) for n in listener.notifies(timeout=2.0, stop_after=2)]
    assert sorted(priority for _, priority in notes) == [-2, 7], notes
    assert all(at is not None and at >= float(before) for at, _ in notes), notes


def test_check_constraints_protect_invariants(tl) -> None:
    with psycopg.connect(tl.database_url) as conn, pytest.raises(psycopg.errors.CheckViolation):
        conn.execute("INSERT INTO tasks (id, name, state) VALUES (gen_random_uuid(), 'x', 'bogus')")
    with psycopg.connect(tl.database_url) as conn, pytest.raises(psycopg.errors.CheckViolation):
        conn.execute("INSERT INTO tasks (id, name, state) VALUES (gen_random_uuid(), 'x', 'running')")


def test_testing_helpers_drain_and_assert_enqueued(tl) -> None:
    from tasklib.testing import assert_enqueued, drain, enqueued

    tasklib.submit_task_sync(jobs.send_email, to="a@x", subject="s", body="b")
    tasklib.submit_task_sync(jobs.flaky, key="f")
    later = tasklib.submit_task_sync(jobs.mark, key="later", delay_seconds=3600)
    assert assert_enqueued(jobs.send_email, to="a@x").kwargs["subject"] == "s"
    assert enqueued(jobs.send_email, to="nobody") == []
    assert drain() == 2
    assert assert_enqueued(jobs.send_email, state="completed").result is True
    flaky = assert_enqueued(jobs.flaky, state="pending")  # failed once, retry scheduled by backoff
    assert flaky.retry_count == 1 and "RuntimeError: flaky f failed" in (flaky.error or "")
    assert tasklib.get_task(later).state == "pending"  # type: ignore[union-attr]


def test_init_upgrades_a_version_1_table(database_url: str) -> None:
    """A table made by schema 1 (lock index on state) is brought to the current version by init."""
    from tasklib.schema import SCHEMA_VERSION

    tasklib.init(tasklib.Config(database_url=database_url))
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("DROP INDEX tasks_locked_idx")
        conn.execute("CREATE INDEX tasks_running_lock_idx ON tasks (locked_until) WHERE state = 'running'")
        conn.execute("CREATE INDEX tasks_created_idx ON tasks (created_at DESC, id DESC)")  # dropped by 6
        conn.execute("ALTER TABLE tasks RESET (fillfactor, autovacuum_vacuum_threshold)")  # set by 3
        conn.execute("COMMENT ON TABLE tasks IS 'tasklib schema 1'")
        conn.execute("INSERT INTO tasks (id, name, kwargs) VALUES (gen_random_uuid(), 'kept', '{}')")
    tasklib.init(tasklib.Config(database_url=database_url))
    with psycopg.connect(database_url) as conn:
        indexes = {r[0] for r in conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'tasks'")}
        comment = conn.execute("SELECT obj_description('tasks'::regclass, 'pg_class')").fetchone()[0]  # type: ignore[index]
        kept = conn.execute("SELECT count(*) FROM tasks WHERE name = 'kept'").fetchone()[0]  # type: ignore[index]
    assert "tasks_locked_idx" in indexes and "tasks_running_lock_idx" not in indexes
    assert "tasks_created_idx" not in indexes
    assert comment == f"tasklib schema {SCHEMA_VERSION}" and kept == 1
    # the upgraded table has exactly the indexes and columns a new one gets (predicates included:
    # queries rely on partial indexes only when their predicates read the same)
    with fresh_database() as new_url:
        with psycopg.connect(new_url, autocommit=True) as conn:
            ensure_schema(conn)
        assert _shape(new_url) == _shape(database_url)


def test_init_upgrades_a_version_6_table_to_fillfactor_50(database_url: str) -> None:
    """Schema 7 leaves room on every page for a batch's next row versions (see STORAGE_SETTINGS):
    a version-6 table, filled to 85 %, gets fillfactor 50 from init and keeps its other settings."""
    tasklib.init(tasklib.Config(database_url=database_url))
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE tasks SET (fillfactor = 85)")
        conn.execute("COMMENT ON TABLE tasks IS 'tasklib schema 6'")
    tasklib.init(tasklib.Config(database_url=database_url))
    options = set(_shape(database_url)[2])
    assert "fillfactor=50" in options and "autovacuum_vacuum_threshold=20000" in options


def _shape(url: str) -> tuple[set[str], list[tuple[str, str]], list[str]]:
    with psycopg.connect(url) as conn:
        indexes = {r[0] for r in conn.execute("SELECT indexdef FROM pg_indexes WHERE tablename = 'tasks'")}
        columns = conn.execute(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'tasks' ORDER BY 1"
        ).fetchall()
        options = conn.execute("SELECT coalesce(reloptions, '{}') FROM pg_class WHERE oid = 'tasks'::regclass").fetchone()
    return indexes, columns, sorted(options[0])  # type: ignore[return-value,index]


def test_init_moves_version_10_settings_rows_out_of_the_tasks_table(database_url: str) -> None:
    """Schema 11: a queue's settings, a limited task's limits and clock, and the last retention
    record, kept by version 10 as rows of tasks, move to tasklib_settings; tasks holds only tasks."""
    tasklib.init(tasklib.Config(database_url=database_url))
    clock = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("DROP TABLE tasklib_settings, tasklib_workers")
        conn.execute("ALTER TABLE tasks DROP CONSTRAINT tasks_state_valid")
        conn.execute(
            "ALTER TABLE tasks ADD CONSTRAINT tasks_state_valid CHECK (state IN "
            "('pending', 'waiting', 'running', 'completed', 'failed', 'cancelled', 'setting')) NOT VALID"
        )
        rows = [  # (name, state, queue, kwargs, result, scheduled_at), as version 10 wrote them
            ("tasklib.queue", "setting", "emails", {"paused": True, "concurrency_limit": 3}, None, "epoch"),
            ("tasklib.limits", "setting", "payments", {"task": "shop.charge", "rate_limit": "2/s"}, None, clock),
            ("tasklib.limits", "setting", "default", {"task": "shop.index", "concurrency_limit": 1}, None, "epoch"),
            (
                "tasklib.retention",
                "completed",
                "default",
                {"completed": 3600.0},
                {"removed": {"completed": 7}, "total": 7},
                clock,
            ),
            ("tasklib.retention", "completed", "default", {"completed": 60.0}, {"removed": {}, "total": 0}, clock),
            ("shop.kept", "pending", "default", {}, None, clock),
        ]
        for i, (name, state, queue, kwargs, result, at) in enumerate(rows):
            conn.execute(
                "INSERT INTO tasks (id, name, state, queue, kwargs, result, max_retries, scheduled_at, started_at,"
                " completed_at, created_at, worker_id) VALUES (gen_random_uuid(), %s, %s, %s, %s, %s, 0, %s, %s,"
                " CASE WHEN %s <> 'pending' THEN now() END, now() + make_interval(secs => %s), 'w9')",
                [name, state, queue, Jsonb(kwargs), Jsonb(result) if result else None, at, at, state, i],
            )
        conn.execute("COMMENT ON TABLE tasks IS 'tasklib schema 10'")
    tasklib.init(tasklib.Config(database_url=database_url))
    with psycopg.connect(database_url, row_factory=dict_row) as conn:
        left = conn.execute("SELECT name, state FROM tasks").fetchall()
        moved = {(r["kind"], r["name"]): r for r in conn.execute("SELECT * FROM tasklib_settings").fetchall()}
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute("INSERT INTO tasks (id, name, state, kwargs) VALUES (gen_random_uuid(), 'x', 'setting', '{}')")
    assert left == [{"name": "shop.kept", "state": "pending"}]
    assert moved[("queue", "emails")]["value"] == {"paused": True, "concurrency_limit": 3}
    charge = moved[("limits", "shop.charge")]
    assert charge["value"] == {"task": "shop.charge", "rate_limit": "2/s", "queue": "payments"} and charge["at"] == clock
    assert moved[("limits", "shop.index")]["at"] is None  # (version 10's "never started" clock)
    last = moved[("retention", "last")]["value"]
    assert last == {"policy": {"completed": 60.0}, "removed": {}, "total": 0, "worker_id": "w9"}  # the newest
    assert tasklib.list_queues()[0].name in ("default", "emails")
    assert {q.name: q.paused for q in tasklib.list_queues()}["emails"] is True


def test_list_tasks_by_the_arguments_they_contain(tl: tasklib.Config) -> None:
    """kwargs_contain: JSON containment on the arguments, with the other filters and on every page."""
    for user in (41, 42, 42, 43):
        tasklib.submit_task_sync(jobs.mark, key=f"u{user}", sleep=0.0)
    nested = tasklib.submit_task_sync(jobs.send_email, to="ann@example.com", subject="s", body="b")
    mine = tasklib.list_tasks(kwargs_contain={"key": "u42"})
    assert [t.kwargs["key"] for t in mine] == ["u42", "u42"]
    assert tasklib.list_tasks(kwargs_contain={"key": "u42"}, name="send_email") == []
    assert [t.id for t in tasklib.list_tasks(kwargs_contain={"to": "ann@example.com"}, state="pending")] == [nested]
    assert [t.kwargs["key"] for t in tasklib.iter_tasks(kwargs_contain={"key": "u42"}, page_size=1)] == ["u42", "u42"]
    assert len(tasklib.list_tasks(kwargs_contain={})) == 5  # the empty object is in every object
    for bad, says in (("{nope", "not valid JSON"), ([1], "expected a JSON object"), ({"s": {1}}, "not representable")):
        with pytest.raises(tasklib.ValidationError, match=says):
            tasklib.list_tasks(kwargs_contain=bad)  # type: ignore[arg-type]
