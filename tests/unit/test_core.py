"""Pure code: configuration, naming, validation, outcomes, transitions, framing. No database."""

from __future__ import annotations

import datetime
import subprocess
import sys
import textwrap
import uuid

import pytest

import tasklib
from tasklib.config import redact_url
from tasklib.outcome import Outcome, OutcomeKind, backoff_delay, decide
from tasklib.registry import definition_for
from tasklib.states import TRANSITIONS, TaskState, can_transition


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://u:p@h/db", "postgresql://u:p@h/db"),
        ("postgres://u@h:5433/db", "postgresql://u@h:5433/db"),
        ("postgresql+psycopg://u@h/db", "postgresql://u@h/db"),
        ("postgresql+psycopg2://u@h/db", "postgresql://u@h/db"),
    ],
)
def test_config_accepts_the_urls_people_write(url: str, expected: str) -> None:
    assert tasklib.Config(database_url=url).database_url == expected


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"database_url": "mysql://u@h/db"}, "only supports PostgreSQL"),
        ({"database_url": "not a url"}, "must be a PostgreSQL URL"),
        ({"max_retries": -1}, "max_retries"),
        ({"lock_timeout_seconds": 0}, "lock_timeout_seconds"),
        ({"base_retry_delay_seconds": -1}, "base_retry_delay_seconds"),
        ({"retry_backoff_multiplier": 0.5}, "retry_backoff_multiplier"),
        ({"default_task_timeout_seconds": 0}, "default_task_timeout_seconds"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_config_refuses_bad_values(kwargs: dict, message: str) -> None:
    with pytest.raises(tasklib.ConfigError, match=message):
        tasklib.Config(**{"database_url": "postgresql://h/db", **kwargs})


def test_config_repr_hides_the_password() -> None:
    config = tasklib.Config(database_url="postgresql://app:s3cret@db/prod")
    assert "s3cret" not in repr(config)
    assert redact_url("postgresql://app:s3cret@db:5432/prod") == "postgresql://app:***@db:5432/prod"


def test_seed_retry_schedule() -> None:
    config = tasklib.Config(database_url="postgresql://h/db")
    assert [backoff_delay(n, config) for n in range(3)] == [5.0, 10.0, 20.0]
    jittered = tasklib.Config(database_url="postgresql://h/db", retry_jitter=True)
    assert backoff_delay(0, jittered, rand=lambda: 0.0) == 3.75
    assert backoff_delay(0, jittered, rand=lambda: 1.0) == 6.25


def test_decide_outcomes() -> None:
    config = tasklib.Config(database_url="postgresql://h/db")
    ok = decide(Outcome(OutcomeKind.OK, result_json="1"), 0, 3, config)
    assert (ok.state, ok.result_json, ok.retry_count) == (TaskState.COMPLETED, "1", 0)
    retry = decide(Outcome(OutcomeKind.ERROR, error="tb"), 1, 3, config)
    assert (retry.state, retry.retry_count, retry.delay_seconds, retry.error) == (TaskState.PENDING, 2, 10.0, "tb")
    final = decide(Outcome(OutcomeKind.TIMEOUT, error="TimeoutError"), 3, 3, config)
    assert (final.state, final.retry_count) == (TaskState.FAILED, 3)
    never = decide(Outcome(OutcomeKind.CRASHED, error="died"), 0, 0, config)
    assert never.state == TaskState.FAILED


def test_transition_table() -> None:
    assert can_transition("pending", "running")
    assert can_transition("running", "cancelled")
    assert not can_transition("completed", "pending")
    assert not can_transition("pending", "completed")
    assert all(source != target for source, target in TRANSITIONS)


def test_task_names_are_module_qualified_and_script_tasks_use_the_file_name(tmp_path) -> None:
    @tasklib.task
    def local_fn() -> None: ...

    name = definition_for(local_fn).name
    assert name.startswith("tests.unit.test_core.test_task_names") and name.endswith(".<locals>.local_fn")
    assert local_fn() is None  # still directly callable
    script = tmp_path / "myjobs.py"
    script.write_text(
        textwrap.dedent("""
        import tasklib
        @tasklib.task
        def hello() -> str:
            return "hi"
        @tasklib.task(name="custom.name")
        def other() -> None: ...
        print(sorted(tasklib.get_registered_tasks()))
    """)
    )
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['custom.name', 'myjobs.hello']"


def test_async_functions_are_tasks_with_validated_arguments() -> None:
    @tasklib.task(name="unit.async_job")
    async def job(count: int) -> int:
        return count

    assert definition_for(job).validate({"count": "3"}) == {"count": 3}
    with pytest.raises(tasklib.ValidationError, match="count"):
        definition_for(job).validate({"count": "many"})


def test_validation_names_every_field() -> None:
    @tasklib.task
    def typed(count: int, when: datetime.date, label: str = "x") -> None: ...

    definition = definition_for(typed)
    with pytest.raises(tasklib.ValidationError) as info:
        definition.validate({"count": "many", "extra": 1})
    fields = {e["field"] for e in info.value.errors}
    assert fields == {"count", "when", "extra"}
    assert definition.validate({"count": "3", "when": datetime.date(2026, 1, 2)}) == {"count": 3, "when": "2026-01-02"}
    assert definition.load({"count": 3, "when": "2026-01-02"}) == {"count": 3, "when": datetime.date(2026, 1, 2)}


def test_var_keyword_tasks_accept_json_extras() -> None:
    @tasklib.task
    def anything(**kwargs) -> None: ...  # type: ignore[no-untyped-def]

    definition = definition_for(anything)
    assert definition.validate({"a": 1, "b": [1, "x"]}) == {"a": 1, "b": [1, "x"]}
    with pytest.raises(tasklib.ValidationError):
        definition.validate({"a": object()})


def test_errors_share_one_root() -> None:
    for error in (
        tasklib.ValidationError,
        tasklib.TaskNotFound,
        tasklib.InvalidTransition,
        tasklib.TaskNotRegistered,
        tasklib.NotInitialized,
        tasklib.DatabaseError,
    ):
        assert issubclass(error, tasklib.TaskLibError)
    assert str(tasklib.NotInitialized()) == "tasklib.init(config) has not been called in this process."


def test_sql_column_list_matches_the_model() -> None:
    from tasklib.models import Task
    from tasklib.sql import TASK_COLUMNS

    assert tuple(c.name for c in Task.__table__.columns) == TASK_COLUMNS  # type: ignore[attr-defined]


def test_task_ids_are_uuid7_and_ordered_as_made(monkeypatch) -> None:
    import time as time_module

    from tasklib import ids

    made = ids.new_ids(5000) + [ids.new_id() for _ in range(100)]
    assert all(i.version == 7 and i.variant == uuid.RFC_4122 for i in made)
    assert made == sorted(made) and len(set(made)) == len(made)  # strictly increasing
    ms = int(made[-1].hex[:12], 16)
    assert abs(ms - time_module.time() * 1000) < 60_000  # the leading 48 bits are Unix milliseconds
    # More than the 4,096 ids a millisecond's counter holds, all in one frozen millisecond: the next
    # ones borrow the following millisecond, and order still holds.
    monkeypatch.setattr(ids.time, "time_ns", lambda: (ms + 10) * 1_000_000)
    frozen = ids.new_ids(10_000)
    assert frozen == sorted(frozen) and frozen[0] > made[-1]
    assert int(frozen[-1].hex[:12], 16) == ms + 10 + 2


def test_autovacuum_off_is_reported_with_where_it_is_off() -> None:
    from tasklib.schema import cleanup_problem

    assert cleanup_problem(server_on=True, table_on=True) is None
    server = cleanup_problem(server_on=False, table_on=True)
    table = cleanup_problem(server_on=True, table_on=False)
    both = cleanup_problem(server_on=False, table_on=False)
    assert server and "on this server" in server and "tasks table" not in server
    assert table and "tasks table" in table and "on this server" not in table
    assert both and "on this server" in both and "tasks table" in both


def test_tag_walks_merge_only_when_no_unread_row_could_enter_the_page() -> None:
    from tasklib import listing
    from tasklib.monitor import merge_tag_walks

    end = listing.TAG_WALK_ROWS

    def row(at: int, branch: int, place: int, matched: bool = True) -> dict:
        return {"created_at": at, "id": at, "walk_row": place, "walk_matched": matched}

    # Newest first, a page of 2: branch 0 found 2 tagged rows; branch 1 stopped unfinished at 50.
    page = merge_tag_walks([row(100, 0, 1), row(90, 0, 7), row(50, 1, end, matched=False)], 2, descending=True)
    assert page is not None and [r["id"] for r in page] == [100, 90] and set(page[0]) == {"created_at", "id"}
    # Branch 1 stopped at 95: a tagged row of it older than 95 but newer than 90 may exist unread.
    assert merge_tag_walks([row(100, 0, 1), row(90, 0, 7), row(95, 1, end, matched=False)], 2, True) is None
    # A walk that stopped unfinished and a page that is not full: the rest may be anywhere.
    assert merge_tag_walks([row(100, 0, 1), row(50, 1, end, matched=False)], 2, True) is None
    # Every walk finished: a short page is the whole answer; the last row read may itself be tagged.
    assert [r["id"] for r in merge_tag_walks([row(100, 0, 1), row(10, 1, 3)], 5, True) or []] == [100, 10]
    assert [r["id"] for r in merge_tag_walks([row(100, 0, 1), row(90, 1, end)], 2, True) or []] == [100, 90]
    # Oldest first, the same rule the other way round.
    assert merge_tag_walks([row(1, 0, 1), row(2, 0, 2), row(9, 1, end, matched=False)], 2, False) is not None
    assert merge_tag_walks([row(1, 0, 1), row(5, 0, 2), row(3, 1, end, matched=False)], 2, False) is None


def test_statements_with_parameters_write_the_held_key_predicate_as_the_index_does() -> None:
    """The unique index's predicate and the statements' must be the same for the planner to use the
    index; statements with parameters double the ``%`` of its LIKE pattern."""
    from tasklib import sql

    assert sql.KEY_HELD.replace("%%", "%") == sql.UNIQUE_KEY_HELD
    assert "%%" not in sql.UNIQUE_KEY_HELD


def test_outcomes_travel_as_json_with_results_as_the_child_wrote_them() -> None:
    import json
    import uuid
    from datetime import UTC, datetime

    from tasklib import sql
    from tasklib.outcome import Action
    from tasklib.states import TaskState

    done, failed = uuid.uuid4(), uuid.uuid4()
    at = datetime(2026, 12, 1, tzinfo=UTC)
    params = sql.outcome_params(
        [
            (done, at, Action(TaskState.COMPLETED, 0, result_json='{"a": ["é", 1.5]}')),
            (failed, at, Action(TaskState.FAILED, 2, error='KeyError: "x"\n\u00e9')),
        ],
        "w",
    )
    decided = json.loads(params["outcomes"].dumps(params["outcomes"].obj))
    assert params["ids"] == [done, failed]
    assert decided[str(done)] == {"s": "completed", "n": 0, "d": 0.0, "t": at.isoformat(), "r": {"a": ["é", 1.5]}}
    assert decided[str(failed)]["e"] == 'KeyError: "x"\n\u00e9' and "r" not in decided[str(failed)]
