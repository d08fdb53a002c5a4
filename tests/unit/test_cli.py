"""Every command-line option with a bad value: one line naming it, exit status 2, no database touched."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from tasklib.cli import build_parser, main

# (command line, what the one line must name). Every option that takes a value is here, or in FREE_FORM.
BAD = [
    (["--log-level", "loud", "init-db"], "--log-level"),
    (["worker", "--concurrency", "0"], "--concurrency"),
    (["worker", "-c", "two"], "--concurrency"),
    (["worker", "--async-concurrency", "-1"], "--async-concurrency"),
    (["worker", "--poll-interval", "0"], "--poll-interval"),
    (["worker", "--poll-interval", "nan"], "--poll-interval"),
    (["worker", "--lock-timeout", "1.5"], "--lock-timeout"),
    (["worker", "--shutdown-grace", "-1"], "--shutdown-grace"),
    (["worker", "--retry-delay", "soon"], "--retry-delay"),
    (["worker", "--memory-limit", "8"], "--memory-limit"),
    (["worker", "--retention", "completed=abc"], "--retention"),
    (["worker", "--retention", "kept=7d"], "--retention"),
    (["worker", "--retention", "every=1h"], "--retention"),
    (["worker", "--retention", "completed=7d,every=0.5s"], "--retention"),
    (["worker", "--worker-id", ""], "--worker-id"),
    (["worker", "--worker-id", "x" * 201], "--worker-id"),
    (["worker", "--queue", "no spaces"], "--queue"),
    (["worker", "--log-format", "xml"], "--log-format"),
    (["worker", "--database-url", "mysql://u@h/db"], "--database-url"),
    (["worker", "--pool-mode", "statement"], "--pool-mode"),
    (["worker", "--listen-url", "redis://x"], "--listen-url"),
    (["dashboard", "--port", "99999"], "--port"),
    (["dashboard", "--port", "http"], "--port"),
    (["dashboard", "--auth", "nopassword"], "--auth"),
    (["dashboard", "--host", "0.0.0.0"], "--auth"),
    (["dashboard", "--log-format", "xml"], "--log-format"),
    (["dashboard", "--database-url", "sqlite:///x"], "--database-url"),
    (["dashboard", "--replica-url", "x"], "--replica-url"),
    (["prune"], "--completed-older-than"),
    (["prune", "--completed-older-than", "banana"], "--completed-older-than"),
    (["prune", "--failed-older-than", "-3d"], "--failed-older-than"),
    (["prune", "--cancelled-older-than", "0"], "--cancelled-older-than"),
    (["prune", "--completed-older-than", "7d", "--database-url", "x"], "--database-url"),
    (["queue", "stop"], "action"),
    (["queue", "pause"], "name the queue"),
    (["queue", "pause", "bad name"], "name"),
    (["queue", "limit", "emails"], "limit"),
    (["queue", "limit", "emails", "0"], "limit"),
    (["queue", "pause", "emails", "3"], "limit"),
    (["queue", "list", "--database-url", "x"], "--database-url"),
    (["demo", "--port", "0"], "--port"),
    (["demo", "--seconds", "-5"], "--seconds"),
    (["demo", "--database-url", "x"], "--database-url"),
    (["init-db", "--database-url", "x"], "--database-url"),
    (["db", "drop"], "action"),
    (["nonsense"], "COMMAND"),
]
#: Options whose every value is acceptable to the parser: a module is checked by importing it (with
#: its own clear error), a host by binding it, the flags take no value.
FREE_FORM = {"--app", "--host", "--insecure", "--submit-only", "--help", "--version"}


@pytest.fixture
def no_database(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No database is configured, so touching one would start the embedded server in this folder."""
    monkeypatch.delenv("TASKLIB_DATABASE_URL", raising=False)
    monkeypatch.delenv("TASKLIB_DASHBOARD_AUTH", raising=False)
    monkeypatch.setenv("TASKLIB_EMBEDDED_DIR", str(tmp_path / "pg"))
    return tmp_path / "pg"


@pytest.mark.parametrize(("argv", "named"), BAD, ids=[" ".join(a)[:40] for a, _ in BAD])
def test_a_bad_value_is_one_line_and_exit_2(
    argv: list[str], named: str, no_database: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    err = capsys.readouterr().err
    assert exited.value.code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert named in err and "Traceback" not in err
    assert not no_database.exists()  # nothing was started


def test_a_bad_database_url_in_the_environment_is_refused_first(
    no_database: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TASKLIB_DATABASE_URL", "mysql://u@h/db")
    with pytest.raises(SystemExit) as exited:
        main(["worker", "--app", "tasklib.demo.tasks"])
    assert exited.value.code == 2 and "$TASKLIB_DATABASE_URL" in capsys.readouterr().err


@pytest.mark.parametrize(("variable", "value"), [("TASKLIB_POOL_MODE", "statement"), ("TASKLIB_LISTEN_URL", "x")])
def test_a_bad_setting_in_the_environment_is_refused_first(
    variable: str, value: str, no_database: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SystemExit) as exited:
        main(["worker", "--app", "tasklib.demo.tasks"])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and len(err.strip().splitlines()) == 1
    assert variable.removeprefix("TASKLIB_").lower() in err and not no_database.exists()


def test_every_option_that_takes_a_value_is_tried() -> None:
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    tried = {option for argv, named in BAD for option in [*argv, named] if option.startswith("-")}
    for sub in [parser, *commands.values()]:
        for action in sub._actions:
            long = [o for o in action.option_strings if o.startswith("--")]
            if long and long[0] not in FREE_FORM:
                assert long[0] in tried, f"{sub.prog} {long[0]}: no bad value is tried"


def test_good_values_parse() -> None:
    args = build_parser().parse_args(
        [
            "worker",
            "-c",
            "4",
            "--retention",
            "completed=7d,failed=30d,every=1h",
            "--poll-interval",
            "0.5",
            "--queue",
            "emails",
        ]
    )
    assert args.concurrency == 4 and args.retention.every_seconds == 3600 and args.queue == ["emails"]
    assert build_parser().parse_args(["prune", "--completed-older-than", "90"]).completed_older_than.total_seconds() == 90
