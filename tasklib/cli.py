"""The ``tasklib`` command: worker, dashboard, database helpers."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import sys
import traceback
from collections.abc import Sequence
from typing import NoReturn

from tasklib import arguments
from tasklib.config import ENV_DATABASE_URL, FINISHED, Config, redact_url
from tasklib.errors import ConfigError

ENV_DASHBOARD_AUTH = "TASKLIB_DASHBOARD_AUTH"


class _Parser(argparse.ArgumentParser):
    """argparse that refuses a bad command line in one line (exit status 2), naming the option."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


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
        type=arguments.database_url,
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


class _Version(argparse.Action):
    """``--version``: the release and the schema version this code creates and expects."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help="print the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        import tasklib
        from tasklib.schema import SCHEMA_VERSION

        print(f"tasklib {tasklib.__version__} (schema {SCHEMA_VERSION})")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tasklib", description="TaskLib: a durable task queue in one PostgreSQL table.")
    parser.add_argument("--version", action=_Version)
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
        type=arguments.whole(1),
        default=1,
        metavar="N",
        help="sync tasks run at once, each in its own child process (default: 1)",
    )
    worker.add_argument(
        "--async-concurrency",
        type=arguments.whole(0),
        default=None,
        metavar="N",
        help="async def tasks run at once, on event loops in a few child processes; 0 runs them in "
        "the sync children, one at a time each (default: 10)",
    )
    worker.add_argument(
        "--poll-interval",
        type=arguments.seconds(0, above=True),
        default=1.0,
        metavar="SECONDS",
        help="fallback poll interval when no notification arrives (default: 1.0)",
    )
    worker.add_argument(
        "--lock-timeout",
        type=arguments.whole(1, what="a whole number of seconds"),
        default=None,
        metavar="SECONDS",
        help="seconds without a heartbeat before another worker rescues a task (default: 600)",
    )
    worker.add_argument(
        "--shutdown-grace",
        type=arguments.seconds(0),
        default=None,
        metavar="SECONDS",
        help="on SIGTERM/Ctrl+C, how long running tasks may finish (default: 30)",
    )
    worker.add_argument(
        "--retry-delay",
        type=arguments.seconds(0),
        default=None,
        metavar="SECONDS",
        help="delay before the first retry of a failed task, doubled for each later one (default: 5)",
    )
    worker.add_argument(
        "--memory-limit",
        type=arguments.whole(16, what="a whole number of MB"),
        default=None,
        metavar="MB",
        help="memory one task attempt may allocate in its child, for tasks without memory_limit_mb (default: unlimited)",
    )
    worker.add_argument(
        "--retention",
        default=None,
        type=arguments.retention,
        metavar="POLICY",
        help="delete old finished tasks periodically, e.g. completed=7d,failed=30d,cancelled=7d,every=1h "
        "(default: keep everything)",
    )
    worker.add_argument(
        "--worker-id", default=None, type=arguments.worker_id, help="name shown in the dashboard (default: host:pid:random)"
    )
    worker.add_argument(
        "--queue",
        action="append",
        default=None,
        type=arguments.queue,
        metavar="NAME",
        help="serve this queue; repeat for several (default: every queue the registered tasks name)",
    )
    worker.add_argument(
        "--pool-mode",
        choices=["session", "transaction"],
        default=None,
        help="how --database-url reaches PostgreSQL: session (direct, or a session pooler) or transaction "
        "(a transaction-mode pooler such as PgBouncer's; default: $TASKLIB_POOL_MODE, else session)",
    )
    worker.add_argument(
        "--listen-url",
        default=None,
        type=arguments.database_url,
        metavar="URL",
        help="a direct server URL to LISTEN on when --database-url is a transaction-mode pooler "
        "(default: $TASKLIB_LISTEN_URL; without it a pooled worker polls)",
    )
    _add_log_format(worker)
    _add_database(worker)

    dash = sub.add_parser(
        "dashboard", help="serve the web dashboard", description="Serve the dashboard (Litestar + htmx) with uvicorn."
    )
    dash.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    dash.add_argument("--port", type=arguments.port, default=8080, help="port (default: 8080)")
    dash.add_argument(
        "--auth",
        default=None,
        type=arguments.auth,
        metavar="USER:PASSWORD",
        help=f"require HTTP basic auth (also ${ENV_DASHBOARD_AUTH}); needed to bind a non-loopback address",
    )
    dash.add_argument(
        "--insecure", action="store_true", help="allow a non-loopback address without --auth (not recommended)"
    )
    dash.add_argument(
        "--replica-url",
        default=None,
        type=arguments.database_url,
        metavar="URL",
        help="a streaming replica to read pages and /metrics from; actions still go to --database-url "
        "(default: $TASKLIB_REPLICA_URL)",
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
            f"--{state}-older-than",
            default=None,
            type=arguments.period,
            metavar="PERIOD",
            help=f"delete {state} tasks older than this",
        )
    _add_database(prune)

    queue = sub.add_parser(
        "queue",
        help="list, pause, resume or limit queues",
        description="Queue controls, applied by every worker from its next claim. "
        "list: each queue's tasks and settings; pause/resume NAME; limit NAME N (or none): at most N running at once.",
    )
    queue.add_argument("action", choices=["list", "pause", "resume", "limit"])
    queue.add_argument("name", nargs="?", type=arguments.queue, help="the queue (pause, resume, limit)")
    queue.add_argument("limit", nargs="?", help="limit: the most tasks of the queue running at once, or none")
    _add_database(queue)

    demo = sub.add_parser(
        "demo",
        help="run the dashboard, a worker and a stream of example tasks",
        description="The dashboard, a worker and example tasks (tasklib.demo.tasks) completing, failing, retrying, "
        "waiting, recurring and running as workflows, on the embedded PostgreSQL unless a database URL is given.",
    )
    demo.add_argument("--port", type=arguments.port, default=8080, help="the dashboard's port (default: 8080)")
    demo.add_argument(
        "--seconds",
        type=arguments.seconds(0),
        default=0,
        metavar="SECONDS",
        help="stop after this long (default: 0, run until Ctrl+C)",
    )
    demo.add_argument(
        "--submit-only",
        action="store_true",
        help="only submit example tasks, forever (for a worker and a dashboard run elsewhere, as compose.yaml does)",
    )
    _add_database(demo)

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


def check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """What one option alone cannot say, refused like a bad option: before any database is touched."""
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    parser = commands[args.command]
    if args.command == "prune" and not any(getattr(args, f"{state}_older_than") for state in FINISHED):
        parser.error("give at least one of --completed-older-than, --failed-older-than, --cancelled-older-than")
    if args.command == "queue":
        if args.action != "list" and not args.name:
            parser.error(f"{args.action}: name the queue")
        if (args.action == "limit") != (args.limit is not None):
            parser.error("a limit goes with `queue limit NAME N` only")
        if args.limit is not None:
            try:
                args.limit = arguments.queue_limit(args.limit)
            except arguments.Bad as exc:
                parser.error(f"argument limit: {exc}")
    if args.command == "dashboard":
        args.auth = args.auth or os.environ.get(ENV_DASHBOARD_AUTH) or None
        if args.auth is not None:
            try:
                arguments.auth(args.auth)
            except arguments.Bad as exc:
                parser.error(f"argument --auth (or ${ENV_DASHBOARD_AUTH}): {exc}")
        from dashboard.serve import is_loopback

        if not is_loopback(args.host) and not args.auth and not args.insecure:
            parser.error(
                f"refusing to serve on {args.host} without authentication: pass --auth user:password "
                f"(or set ${ENV_DASHBOARD_AUTH}), or --insecure if a proxy in front already authenticates"
            )
    if hasattr(args, "database_url") and args.database_url is None and os.environ.get(ENV_DATABASE_URL):
        try:
            arguments.database_url(os.environ[ENV_DATABASE_URL])
        except arguments.Bad as exc:
            parser.error(f"${ENV_DATABASE_URL}: {exc}")
    if hasattr(args, "database_url"):
        try:
            Config()  # the settings read from the environment ($TASKLIB_POOL_MODE, $TASKLIB_LISTEN_URL)
        except ConfigError as exc:
            parser.error(f"{exc} (from the environment)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check(parser, args)
    from tasklib import logs

    logs.configure(args.log_level, getattr(args, "log_format", None) or "text")
    if args.command == "worker":
        return _worker(args)
    if args.command == "dashboard":
        from dashboard.serve import serve

        extra = {} if args.replica_url is None else {"replica_url": args.replica_url}
        return serve(_config(args, **extra), host=args.host, port=args.port, auth=args.auth)
    if args.command == "prune":
        return _prune(args)
    if args.command == "queue":
        return _queue(args)
    if args.command == "demo":
        from tasklib.demo import run

        if args.submit_only:
            return run.submit_forever(args.database_url)
        return run.run(args.database_url, port=args.port, seconds=args.seconds)
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

    tasklib.init(_config(args))
    removed = tasklib.prune(**{f"{state}_older_than": getattr(args, f"{state}_older_than") for state in FINISHED})
    print(f"removed {removed} finished task(s)")
    return 0


def _queue(args: argparse.Namespace) -> int:
    import tasklib

    tasklib.init(_config(args))
    if args.action == "pause":
        tasklib.pause_queue(args.name)
    elif args.action == "resume":
        tasklib.resume_queue(args.name)
    elif args.action == "limit":
        tasklib.set_queue_limit(args.name, args.limit)
    print(f"{'queue':<24} {'pending':>8} {'running':>8} {'failed':>8} {'limit':>6}  state")
    for q in tasklib.list_queues():
        limit = "-" if q.concurrency_limit is None else str(q.concurrency_limit)
        state = "paused" if q.paused else "active"
        print(f"{q.name:<24} {q.pending:>8} {q.running:>8} {q.failed:>8} {limit:>6}  {state}")
    return 0


def _worker(args: argparse.Namespace) -> int:
    from tasklib.worker import TaskWorker

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
        extra["retention"] = args.retention
    if args.memory_limit is not None:
        extra["default_memory_limit_mb"] = args.memory_limit
    if args.pool_mode is not None:
        extra["pool_mode"] = args.pool_mode
    if args.listen_url is not None:
        extra["listen_url"] = args.listen_url
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
