"""What a newcomer touches: the CLI, the examples, compose.yaml, the README's commands (tests/release: the wheel)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from tasklib.cli import build_parser
from tests.net import free_port
from tests.workers import ROOT


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )


def test_cli_help_explains_every_command() -> None:
    out = run(sys.executable, "-m", "tasklib.cli", "--help").stdout
    for command in ("worker", "dashboard", "init-db", "db"):
        assert command in out
    worker = run(sys.executable, "-m", "tasklib.cli", "worker", "--help").stdout
    for option in ("--app", "--concurrency", "--database-url", "--poll-interval", "--lock-timeout", "--shutdown-grace"):
        assert option in worker
    dashboard = run(sys.executable, "-m", "tasklib.cli", "dashboard", "--help").stdout
    for option in ("--host", "--port", "--auth", "--insecure", "--database-url"):
        assert option in dashboard


def test_dashboard_refuses_open_bind_without_auth(database_url: str) -> None:
    result = run(sys.executable, "-m", "tasklib.cli", "dashboard", "--host", "0.0.0.0", "--database-url", database_url)
    assert result.returncode != 0 and "--auth" in result.stderr


def test_worker_reports_an_app_that_cannot_be_imported(database_url: str) -> None:
    missing = run(sys.executable, "-m", "tasklib.cli", "worker", "--app", "no.such.module", "--database-url", database_url)
    assert missing.returncode != 0 and "cannot import --app 'no.such.module'" in missing.stderr
    broken = run(sys.executable, "-m", "tasklib.cli", "worker", "--app", "tests.broken_app", "--database-url", database_url)
    assert broken.returncode != 0 and "ZeroDivisionError" in broken.stderr and "raised the error above" in broken.stderr


def test_bad_database_url_is_a_clear_error() -> None:
    result = run(sys.executable, "-m", "tasklib.cli", "init-db", "--database-url", "mysql://x@y/z")
    assert result.returncode != 0 and "only supports PostgreSQL" in result.stderr


@pytest.mark.parametrize("script", ["examples/simple.py", "examples/with_monitoring.py"])
def test_examples_run(database_url: str, script: str) -> None:
    result = run(sys.executable, script, env={"TASKLIB_DATABASE_URL": database_url})
    assert result.returncode == 0, result.stderr[-2000:]
    if script.endswith("simple.py"):
        assert "simple.add({'a': 4, 'b': 4}) -> completed: 8" in result.stdout
        assert "divide by zero -> failed after 1 retry: ZeroDivisionError" in result.stdout
    else:
        assert "cancelled the delayed email: cancelled" in result.stdout


def test_compose_file_is_valid_and_its_commands_parse() -> None:
    checker = Path(sys.executable).with_name("check-jsonschema")
    result = run(str(checker), "--builtin-schema", "vendor.compose-spec", "compose.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    services = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
    for name in ("worker", "dashboard"):
        command = services[name]["command"]
        assert command[0] == "tasklib"
        build_parser().parse_args(command[1:])  # exits on an unknown option
        if name == "worker":  # the tasks it runs ship in the package, so the image (the wheel) has them
            assert command[command.index("--app") + 1] == "tasklib.demo.tasks"
    assert services["producer"]["command"] == ["tasklib", "demo", "--submit-only"]
    build_parser().parse_args(services["producer"]["command"][1:])
    assert services["postgres"]["healthcheck"] and services["dashboard"]["healthcheck"]


def test_readme_commands_are_what_ci_and_make_run() -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```(?:bash|sh)\n(.*?)```", readme, re.S)
    run_cmd, test_cmd = blocks[0].strip().splitlines(), blocks[1].strip().splitlines()
    assert run_cmd[-1] == "make demo" and test_cmd[-1] == "make test"
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^demo: install\n\t\$\(VENV\)/bin/tasklib demo", makefile, re.M)
    assert re.search(
        r"^test: install browser systools\n\t\$\(PY\) -m pytest -n \$\(TEST_WORKERS\) --dist worksteal tests e2e$",
        makefile,
        re.M,
    )


def test_embedded_postgres_lifecycle() -> None:
    # Not pytest's tmp_path: as root the server runs as `nobody`, which must be able to enter the folder.
    tmp_path = Path(tempfile.mkdtemp(prefix="tasklib-embedded-", dir="/tmp"))
    tmp_path.chmod(0o755)
    env = {
        "TASKLIB_EMBEDDED_DIR": str(tmp_path / "pg"),
        "TASKLIB_EMBEDDED_PORT": str(free_port()),  # (a fixed port in the ephemeral range was once taken)
        "TASKLIB_DATABASE_URL": "",
    }
    tl = [sys.executable, "-m", "tasklib.cli"]
    try:
        started = run(*tl, "init-db", env=env, timeout=180)
        assert started.returncode == 0, started.stderr
        assert "connect with: psql" in started.stderr
        status = run(*tl, "db", "status", env=env).stdout
        assert "running" in status and str(tmp_path / "pg" / "data") in status
        url = run(*tl, "db", "url", env=env).stdout.strip()
        code = (
            "import tasklib, tasklib.demo.tasks as t; tasklib.init(tasklib.Config());"
            "print(tasklib.submit_task_sync(t.send_email, to='a', subject='b', body='c'))"
        )
        assert run(sys.executable, "-c", code, env=env).returncode == 0  # a second process shares the server
        import psycopg

        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT count(*) FROM tasks").fetchone() == (1,)
    finally:
        stopped = run(*tl, "db", "stop", env=env).stdout
    assert "stopped" in stopped
    assert "stopped" in run(*tl, "db", "status", env=env).stdout
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_the_command_line_page_documents_every_cli_option() -> None:
    readme = (ROOT / "docs" / "cli.md").read_text()
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name, sub in [("tasklib", parser), *subparsers.choices.items()]:
        assert name in readme
        for action in sub._actions:
            for option in action.option_strings:
                if option.startswith("--") and option != "--help":
                    assert option in readme, f"docs/cli.md does not mention {name} {option}"
