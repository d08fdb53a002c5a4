"""The ``tasklib`` command: worker, dashboard, database helpers."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import sys
import traceback
from collections.abc import Sequence

from tasklib.config import ENV_DATABASE_URL, FINISHED, Config, Retention, parse_duration, redact_url

ENV_DASHBOARD_AUTH = "TASKLIB_DASHBOARD_AUTH"


def _add_log_format(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-format",
        choices=["text", "json"],
        default=None,
        help="text lines (default) or one JSON object per line: time, level, event, task id, name, duration, outcome",
    )


def _add_database(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database-url",
        default=None,
        help=f"PostgreSQL URL (default: ${ENV_DATABASE_URL}, else the embedded local PostgreSQL that TaskLib starts itself)",
    )


def _config(args: argparse.Namespace, **extra: object) -> Config:
    try:
        return Config(database_url=args.database_url or os.environ.get(ENV_DATABASE_URL) or None, **extra)  # type: ignore[arg-type]
    except ValueError as exc:
        raise SystemExit(f"tasklib: invalid configuration: {exc}") from None


def _import_apps(modules: Sequence[str]) -> None:
    # Like `celery -A`: modules are found relative to the current directory.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise SystemExit(f"tasklib: cannot import --app {module!r}: {exc}") from None
        except Exception:
            traceback.print_exc()
            raise SystemExit(f"tasklib: importing --app {module!r} raised the error above") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tasklib", description="TaskLib: a durable task queue in one PostgreSQL table.")
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="logging verbosity (default: info)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    worker = sub.add_parser(
        "worker",
        help="run a worker that executes tasks",
        description="Run a worker: claim due tasks and run them in child processes.",
    )
    worker.add_argument(
        "--app",
        "-A",
        action="append",
        default=[],
        metavar="MODULE",
        help="module that defines @tasklib.task functions (repeatable), e.g. myproject.tasks",
    )
    worker.add_argument(
        "--concurrency",
        "-c",
        type=int,
        default=1,
        metavar="N",
        help="sync tasks run at once, each in its own child process (default: 1)",
    )
    worker.add_argument(
        "--async-concurrency",
        type=int,
        default=None,
        metavar="N",
        help="async def tasks run at once, on event loops in a few child processes; 0 runs them in "
        "the sync children, one at a time each (default: 10)",
    )
    worker.add_argument(
        "--poll-interval",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="fallback poll interval when no notification arrives (default: 1.0)",
    )
    worker.add_argument(
        "--lock-timeout",
        type=int,
        default=None,
        metavar="SECONDS",
        help="seconds without a heartbeat before another worker rescues a task (default: 600)",
    )
    worker.add_argument(
        "--shutdown-grace",
        type=float,
        default=None,
        metavar="SECONDS",
        help="on SIGTERM/Ctrl+C, how long running tasks may finish (default: 30)",
    )
    worker.add_argument(
        "--retry-delay",
        type=float,
        default=None,
        metavar="SECONDS",
        help="delay before the first retry of a failed task, doubled for each later one (default: 5)",
    )
    worker.add_argument(
        "--memory-limit",
        type=int,
        default=None,
        metavar="MB",
        help="memory one task attempt may allocate in its child, for tasks without memory_limit_mb (default: unlimited)",
    )
    worker.add_argument(
        "--retention",
        default=None,
        metavar="POLICY",
        help="delete old finished tasks periodically, e.g. completed=7d,failed=30d,cancelled=7d,every=1h "
        "(default: keep everything)",
    )
    worker.add_argument("--worker-id", default=None, help="name shown in the dashboard (default: host:pid:random)")
    worker.add_argument(
        "--queue",
        action="append",
        default=None,
        metavar="NAME",
        help="serve this queue; repeat for several (default: every queue the registered tasks name)",
    )
    _add_log_format(worker)
    _add_database(worker)

    dash = sub.add_parser(
        "dashboard", help="serve the web dashboard", description="Serve the dashboard (Litestar + htmx) with uvicorn."
    )
    dash.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    dash.add_argument("--port", type=int, default=8080, help="port (default: 8080)")
    dash.add_argument(
        "--auth",
        default=None,
        metavar="USER:PASSWORD",
        help=f"require HTTP basic auth (also ${ENV_DASHBOARD_AUTH}); needed to bind a non-loopback address",
    )
    dash.add_argument(
        "--insecure", action="store_true", help="allow a non-loopback address without --auth (not recommended)"
    )
    _add_log_format(dash)
    _add_database(dash)

    prune = sub.add_parser(
        "prune",
        help="delete old finished tasks, then exit",
        description="Delete finished tasks older than the given periods (pending and running ones are never touched). "
        "Periods: 90s, 30m, 12h, 7d, 2w.",
    )
    for state in FINISHED:
        prune.add_argument(
            f"--{state}-older-than", default=None, metavar="PERIOD", help=f"delete {state} tasks older than this"
        )
    _add_database(prune)

    queue = sub.add_parser(
        "queue",
        help="list, pause, resume or limit queues",
        description="Queue controls, applied by every worker from its next claim. "
        "list: each queue's tasks and settings; pause/resume NAME; limit NAME N (or none): at most N running at once.",
    )
    queue.add_argument("action", choices=["list", "pause", "resume", "limit"])
    queue.add_argument("name", nargs="?", help="the queue (pause, resume, limit)")
    queue.add_argument("limit", nargs="?", help="limit: the most tasks of the queue running at once, or none")
    _add_database(queue)

    init = sub.add_parser("init-db", help="create or upgrade the tasks table, then exit")
    _add_database(init)

    db = sub.add_parser(
        "db",
        help="manage the embedded local PostgreSQL",
        description="Manage the PostgreSQL server TaskLib runs when no database URL is set.",
    )
    db.add_argument(
        "action",
        choices=["status", "start", "stop", "url"],
        help="status: where it lives and whether it runs; url: print its URL; start/stop",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from tasklib import logs

    logs.configure(args.log_level, getattr(args, "log_format", None) or "text")
    if args.command == "worker":
        return _worker(args)
    if args.command == "dashboard":
        from dashboard.serve import serve

        auth = args.auth or os.environ.get(ENV_DASHBOARD_AUTH)
        return serve(_config(args), host=args.host, port=args.port, auth=auth, insecure=args.insecure)
    if args.command == "prune":
        return _prune(args)
    if args.command == "queue":
        return _queue(args)
    if args.command == "init-db":
        import tasklib

        config = _config(args)
        tasklib.init(config)
        print(f"tasks table ready in {redact_url(config.resolved_database_url())}")
        return 0
    if args.command == "db":
        from tasklib import embedded

        return embedded.cli(args.action)
    return 2


def _prune(args: argparse.Namespace) -> int:
    import tasklib

    periods = {f"{state}_older_than": getattr(args, f"{state}_older_than") for state in FINISHED}
    if not any(periods.values()):
        raise SystemExit(
            "tasklib prune: give at least one of --completed-older-than, --failed-older-than, --cancelled-older-than"
        )
    tasklib.init(_config(args))
    try:
        removed = tasklib.prune(**periods)
    except tasklib.ValidationError as exc:
        raise SystemExit(f"tasklib prune: {exc}") from None
    print(f"removed {removed} finished task(s)")
    return 0


def _queue(args: argparse.Namespace) -> int:
    import tasklib

    if args.action != "list" and not args.name:
        raise SystemExit(f"tasklib queue {args.action}: name the queue")
    if (args.action == "limit") != (args.limit is not None):
        raise SystemExit("tasklib queue: a limit goes with `limit NAME N` only (N a whole number, or none)")
    tasklib.init(_config(args))
    try:
        if args.action == "pause":
            tasklib.pause_queue(args.name)
        elif args.action == "resume":
            tasklib.resume_queue(args.name)
        elif args.action == "limit":
            text = args.limit.strip().lower()
            if text != "none" and not text.isdigit():
                raise SystemExit(f"tasklib queue limit: expected a whole number or none, got {args.limit!r}")
            tasklib.set_queue_limit(args.name, None if text == "none" else int(text))
    except tasklib.ValidationError as exc:
        raise SystemExit(f"tasklib queue: {exc}") from None
    print(f"{'queue':<24} {'pending':>8} {'running':>8} {'failed':>8} {'limit':>6}  state")
    for q in tasklib.list_queues():
        limit = "-" if q.concurrency_limit is None else str(q.concurrency_limit)
        state = "paused" if q.paused else "active"
        print(f"{q.name:<24} {q.pending:>8} {q.running:>8} {q.failed:>8} {limit:>6}  {state}")
    return 0


def parse_retention(text: str) -> Retention:
    """``completed=7d,failed=30d,every=1h`` -> Retention (SystemExit naming the problem otherwise)."""
    values: dict[str, object] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or key not in (*FINISHED, "every"):
            raise SystemExit(
                f"tasklib: --retention: expected state=period pairs (completed, failed, cancelled, every), got {part!r}"
            )
        if key == "every":
            try:
                values["every_seconds"] = parse_duration(value).total_seconds()
            except ValueError as exc:
                raise SystemExit(f"tasklib: --retention: every: {exc}") from None
        else:
            values[key] = value
    try:
        return Retention(**values)  # type: ignore[arg-type]
    except ValueError as exc:
        raise SystemExit(f"tasklib: --retention: {exc}") from None


def _worker(args: argparse.Namespace) -> int:
    from tasklib.worker import TaskWorker

    if args.concurrency < 1:
        raise SystemExit("tasklib: --concurrency must be at least 1")
    if args.async_concurrency is not None and args.async_concurrency < 0:
        raise SystemExit("tasklib: --async-concurrency must be at least 0")
    _import_apps(args.app)
    extra: dict[str, object] = {}
    if args.lock_timeout is not None:
        extra["lock_timeout_seconds"] = args.lock_timeout
    if args.shutdown_grace is not None:
        extra["shutdown_grace_seconds"] = args.shutdown_grace
    if args.retry_delay is not None:
        extra["base_retry_delay_seconds"] = args.retry_delay
    if args.worker_id:
        extra["worker_id"] = args.worker_id
    if args.retention:
        extra["retention"] = parse_retention(args.retention)
    if args.memory_limit is not None:
        extra["default_memory_limit_mb"] = args.memory_limit
    try:
        worker = TaskWorker(
            _config(args, **extra),
            concurrency=args.concurrency,
            poll_interval_seconds=args.poll_interval,
            modules=list(args.app),
            queues=args.queue,
            **({} if args.async_concurrency is None else {"async_concurrency": args.async_concurrency}),
        )
    except ValueError as exc:
        raise SystemExit(f"tasklib worker: {exc}") from None
    asyncio.run(worker.run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
