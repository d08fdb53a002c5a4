"""The dashboard: a thin Litestar app over tasklib's own read models (``tasklib.monitor``) and actions
(``tasklib.actions``), on a pool of its own."""

from __future__ import annotations

import logging
import os
import secrets
from typing import Annotated, Any

from litestar import Litestar, MediaType, Request, Response, get, post
from litestar.config.allowed_hosts import AllowedHostsConfig
from litestar.config.csrf import CSRFConfig
from litestar.datastructures import Cookie, State
from litestar.enums import RequestEncodingType
from litestar.exceptions import HTTPException, NotFoundException, ValidationException
from litestar.middleware import DefineMiddleware
from litestar.params import Body, FromPath, Parameter
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Redirect, Template
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig
from pydantic import BaseModel, Field

from dashboard import rendering, replica
from dashboard.context import (
    detail_context,
    list_context,
    overview_context,
    queues_context,
    schedules_context,
    workers_context,
    workflow_context,
)
from dashboard.filters import parse_list_params
from dashboard.security import BasicAuth, add_security_headers
from tasklib import actions, metrics, queues
from tasklib.config import Config
from tasklib.db import Database, translated_errors
from tasklib.errors import DatabaseError, InvalidTransition, TaskLibError, TaskNotFound, ValidationError
from tasklib.monitor import Monitor
from tasklib.schema import ensure_schema

log = logging.getLogger("tasklib.dashboard")

STATEMENT_TIMEOUT_MS = 5000
Limit = Annotated[int, Parameter(ge=1, le=500, description="rows per page")]


def _monitor(state: State) -> Monitor:
    """The read side: pages, partials and /metrics (on the replica when one is configured)."""
    return state["monitor"]  # type: ignore[no-any-return]


def _primary(state: State) -> Database:
    """Where actions write: always the primary."""
    return state["primary"]  # type: ignore[no-any-return]


def _acted(state: State, to: str) -> Redirect:
    """The redirect after an action; on a replica it carries the primary's position, so the next
    pages can say when they do not show the change yet (``dashboard.replica``)."""
    watch: replica.ReplicaWatch | None = state.get("replica")
    if watch is None:
        return Redirect(to, status_code=303)
    cookie = Cookie(key=replica.SEEN_COOKIE, value=watch.primary_position(), max_age=replica.SEEN_SECONDS, samesite="strict")
    return Redirect(to, status_code=303, cookies=[cookie])


def _poll(request: Request, template: str, context: dict[str, Any]) -> Any:
    """An htmx poll: 204 when it already shows this version of the data (htmx keeps what it has),
    otherwise the partial, rendered from the page's own context builder."""
    if request.query_params.get("v") == context["version"]:
        return Response(None, status_code=204)
    return Template(template, context=context)


# -- pages and their partials -----------------------------------------------------------------


@get("/", sync_to_thread=True)
def overview_page(state: State) -> Template:
    return Template("overview.html", context=overview_context(_monitor(state)))


@get("/partials/overview", sync_to_thread=True)
def overview_partial(request: Request, state: State) -> Template | Response[None]:
    return _poll(request, "_overview.html", overview_context(_monitor(state)))


def _list(app_state: State, **query: Any) -> dict[str, Any]:
    after, before = query.pop("after"), query.pop("before")
    params = parse_list_params(**query)
    return list_context(_monitor(app_state), params, after, before)


_LIST_PARAMS = dict(
    state=None,
    name=None,
    tag=None,
    q=None,
    created_from=None,
    created_to=None,
    finished_from=None,
    finished_to=None,
    queue=None,
    kwargs=None,
    sort=None,
    after=None,
    before=None,
)


@get("/tasks", sync_to_thread=True)
def tasks_page(
    state: State,
    request: Request,
    limit: Limit = 50,
) -> Template:
    query = {k: request.query_params.get(k) or None for k in _LIST_PARAMS}
    context = _list(state, limit=limit, **query)
    context["done"] = request.query_params.get("done")
    return Template("tasks.html", context=context)


@get("/partials/tasks", sync_to_thread=True)
def tasks_partial(state: State, request: Request, limit: Limit = 50) -> Template | Response[None]:
    query = {k: request.query_params.get(k) or None for k in _LIST_PARAMS}
    return _poll(request, "_task_rows.html", _list(state, limit=limit, **query))


@get("/tasks/{task_id:str}", sync_to_thread=True)
def task_page(state: State, task_id: FromPath[str]) -> Template:
    return Template("task.html", context=detail_context(_monitor(state), task_id))


@get("/partials/tasks/{task_id:str}", sync_to_thread=True)
def task_partial(state: State, request: Request, task_id: FromPath[str]) -> Template | Response[None]:
    return _poll(request, "_task_detail.html", detail_context(_monitor(state), task_id))


@get("/workflows/{task_id:str}", sync_to_thread=True)
def workflow_page(state: State, task_id: FromPath[str]) -> Template:
    return Template("workflow.html", context=workflow_context(_monitor(state), task_id))


@get("/partials/workflows/{task_id:str}", sync_to_thread=True)
def workflow_partial(state: State, request: Request, task_id: FromPath[str]) -> Template | Response[None]:
    return _poll(request, "_workflow.html", workflow_context(_monitor(state), task_id))


@get("/workers", sync_to_thread=True)
def workers_page(state: State) -> Template:
    return Template("workers.html", context=workers_context(_monitor(state)))


@get("/partials/workers", sync_to_thread=True)
def workers_partial(state: State, request: Request) -> Template | Response[None]:
    return _poll(request, "_workers.html", workers_context(_monitor(state)))


@get("/queues", sync_to_thread=True)
def queues_page(state: State) -> Template:
    return Template("queues.html", context=queues_context(_monitor(state)))


@get("/partials/queues", sync_to_thread=True)
def queues_partial(state: State, request: Request) -> Template | Response[None]:
    return _poll(request, "_queues.html", queues_context(_monitor(state)))


@get("/schedules", sync_to_thread=True)
def schedules_page(state: State, request: Request) -> Template:
    context = schedules_context(_monitor(state))
    context["started"] = request.query_params.get("started")
    return Template("schedules.html", context=context)


@get("/partials/schedules", sync_to_thread=True)
def schedules_partial(state: State, request: Request) -> Template | Response[None]:
    return _poll(request, "_schedules.html", schedules_context(_monitor(state)))


# -- actions (POST only, CSRF-checked by Litestar) -------------------------------------------


class RunNowForm(BaseModel):
    name: str = Field(min_length=1, max_length=1000)


@post("/schedules/run", sync_to_thread=True, status_code=303)
def run_schedule_action(
    state: State, request: Request, data: Annotated[RunNowForm, Body(media_type=RequestEncodingType.URL_ENCODED)]
) -> Redirect:
    task_id = actions.run_schedule_now(_primary(state), data.name)
    return _acted(state, f"{rendering.mount_path(request)}/tasks/{task_id}")


@post("/tasks/{task_id:str}/retry", sync_to_thread=True, status_code=303)
def retry_action(state: State, task_id: FromPath[str], request: Request) -> Redirect:
    actions.retry(_primary(state), task_id)
    return _acted(state, _back(request, f"/tasks/{task_id}"))


@post("/tasks/{task_id:str}/cancel", sync_to_thread=True, status_code=303)
def cancel_action(state: State, task_id: FromPath[str], request: Request) -> Redirect:
    actions.cancel(_primary(state), task_id)
    return _acted(state, _back(request, f"/tasks/{task_id}"))


@post("/workflows/{task_id:str}/{kind:str}", sync_to_thread=True, status_code=303)
def workflow_action(state: State, task_id: FromPath[str], kind: FromPath[str], request: Request) -> Redirect:
    """``retry``: every failed step (what they cancelled waits again); ``cancel``: every step not ended."""
    if kind not in ("retry", "cancel"):
        raise NotFoundException(f"no workflow action {kind!r}")
    context = workflow_context(_monitor(state), task_id)
    actions.act_on_steps(_primary(state), kind, context["graph"].nodes)
    return _acted(state, f"{rendering.mount_path(request)}/workflows/{task_id}")


@post("/queues/{name:str}/{kind:str}", sync_to_thread=True, status_code=303)
def queue_action(state: State, name: FromPath[str], kind: FromPath[str], request: Request) -> Redirect:
    """``pause`` or ``resume`` a queue (every worker applies it from its next claim)."""
    if kind not in ("pause", "resume"):
        raise NotFoundException(f"no queue action {kind!r}")
    queues.save_on(_primary(state), name, {"paused": kind == "pause"})
    return _acted(state, f"{rendering.mount_path(request)}/queues")


def _back(request: Request, default: str) -> str:
    """Return to the page the button was on (same-origin paths within the dashboard only)."""
    target = request.query_params.get("next") or ""
    return rendering.mount_path(request) + (target if target.startswith("/") and not target.startswith("//") else default)


@get("/bulk/{kind:str}", sync_to_thread=True)
def bulk_confirm(state: State, request: Request, kind: FromPath[str], limit: Limit = 50) -> Template:
    if kind not in actions.BULK_SOURCES:
        raise NotFoundException(f"no bulk action {kind!r}")
    query = {k: request.query_params.get(k) or None for k in _LIST_PARAMS if k not in ("after", "before")}
    params = parse_list_params(limit=limit, **query)
    count = actions.count_matching(_monitor(state).db, params.flt, actions.BULK_SOURCES[kind])
    return Template("confirm.html", context={"action": kind, "count": count, "params": params, "page": "tasks"})


@post("/bulk/{kind:str}/apply", sync_to_thread=True, status_code=303)
def bulk_apply(
    state: State,
    request: Request,
    kind: FromPath[str],
    data: Annotated[dict[str, str], Body(media_type=RequestEncodingType.URL_ENCODED)],
) -> Redirect:
    if kind not in actions.BULK_SOURCES:
        raise NotFoundException(f"no bulk action {kind!r}")
    query = {k: data.get(k) or None for k in _LIST_PARAMS if k not in ("after", "before")}
    params = parse_list_params(limit=50, **query)
    apply = actions.retry_matching if kind == "retry" else actions.cancel_matching
    done = apply(_primary(state), params.flt)
    return _acted(state, f"{rendering.mount_path(request)}/tasks?{params.query(done=f'{kind}:{done}')}")


# -- machine endpoints --------------------------------------------------------------------------


@get("/healthz", sync_to_thread=True, media_type=MediaType.JSON)
def healthz(state: State) -> Response[dict[str, str]]:
    ok = _monitor(state).healthy()
    return Response({"status": "ok" if ok else "database unreachable"}, status_code=200 if ok else 503)


@get("/metrics", sync_to_thread=True, media_type="text/plain; version=0.0.4; charset=utf-8")
def metrics_endpoint(state: State) -> str:
    return metrics.render(_monitor(state))


# -- errors: a page with the message and the right status, never a bare 500 -------------------

_STATUS = {ValidationError: 400, TaskNotFound: 404, InvalidTransition: 409, DatabaseError: 503}


def _error_page(request: Request, status: int, title: str, message: str) -> Response[Any]:
    if request.url.path.endswith(("/metrics", "/healthz")):
        return Response(f"{title}: {message}\n", status_code=status, media_type=MediaType.TEXT)
    return Template("error.html", status_code=status, context={"status": status, "title": title, "message": message})


def _tasklib_error(request: Request, exc: TaskLibError) -> Response[Any]:
    status = next((code for kind, code in _STATUS.items() if isinstance(exc, kind)), 500)
    titles = {400: "Bad request", 404: "Not found", 409: "Conflict", 503: "Database unavailable"}
    return _error_page(request, status, titles.get(status, "Error"), str(exc))


def _http_error(request: Request, exc: HTTPException) -> Response[Any]:
    detail = exc.detail
    if isinstance(exc, ValidationException) and isinstance(exc.extra, list):
        detail = "; ".join(f"{e.get('key', '')}: {e.get('message', '')}" for e in exc.extra if isinstance(e, dict))
    if exc.status_code == 403 and "CSRF" in str(exc.detail):
        detail = "This form's security token is missing or stale. Reload the page and try again."
    return _error_page(request, exc.status_code, {403: "Forbidden", 404: "Not found"}.get(exc.status_code, "Error"), detail)


def _unexpected(request: Request, exc: Exception) -> Response[Any]:
    log.error("dashboard error on %s %s", request.method, request.url.path, exc_info=exc)
    return _error_page(request, 500, "Internal error", "Something went wrong; the server log has the details.")


#: Connections the dashboard's own pool may open (requests run on a thread pool; more would only
#: queue inside PostgreSQL). The library's default pool is not touched.
POOL_SIZE = 4
POOL_TIMEOUT_SECONDS = 3.0


def create_app(
    config: Config,
    *,
    auth: str | None = None,
    csrf_secret: str | None = None,
    allowed_hosts: list[str] | None = None,
    ensure_table: bool = True,
    statement_timeout_ms: int = STATEMENT_TIMEOUT_MS,
) -> Litestar:
    """The dashboard as an ASGI app, to serve alone or mount inside an application.

    It reads and acts through a pool of its own (at most ``POOL_SIZE`` connections, every statement
    under ``statement_timeout_ms``, 5 s by default) and never changes the library's default config, so an
    application that mounts it keeps its own ``tasklib.init``. ``ensure_table`` creates or upgrades
    the ``tasks`` table on the first request's database if needed. ``auth`` is ``user:password`` for
    HTTP basic auth; ``allowed_hosts`` restricts the Host header (``tasklib dashboard`` on a loopback
    address allows only loopback names, so a web page cannot read the dashboard through DNS rebinding).
    """

    def pool(url: str) -> Database:
        return Database(
            url,
            max_size=POOL_SIZE,
            application_name="tasklib-dashboard",
            statement_timeout_ms=statement_timeout_ms,
            # A page waits at most this long for a connection (database down, connections used up)
            # before answering 503: a person is looking at it.
            pool_timeout_seconds=POOL_TIMEOUT_SECONDS,
            prepared_statements=config.prepares(),
        )

    db = pool(config.resolved_database_url())
    reads = pool(config.replica_url) if config.replica_url else db
    if ensure_table:
        with db.connect("tasklib-dashboard") as conn, translated_errors():
            ensure_schema(conn)
    monitor = Monitor(reads)
    watch = replica.ReplicaWatch(db, reads) if reads is not db else None
    secret = csrf_secret or os.environ.get("TASKLIB_DASHBOARD_SECRET") or secrets.token_urlsafe(32)
    template_config = TemplateConfig(
        directory=rendering.asset_dir("templates"),
        engine=JinjaTemplateEngine,
        engine_callback=lambda engine: rendering.setup(engine.engine),
    )
    return Litestar(
        route_handlers=[
            overview_page,
            overview_partial,
            tasks_page,
            tasks_partial,
            task_page,
            task_partial,
            workflow_page,
            workflow_partial,
            workflow_action,
            workers_page,
            workers_partial,
            queues_page,
            queues_partial,
            queue_action,
            schedules_page,
            schedules_partial,
            run_schedule_action,
            retry_action,
            cancel_action,
            bulk_confirm,
            bulk_apply,
            healthz,
            metrics_endpoint,
            create_static_files_router(path="/static", directories=[rendering.asset_dir("static")]),
        ],
        template_config=template_config,
        csrf_config=CSRFConfig(
            secret=secret, cookie_httponly=False, cookie_samesite="strict", exclude=["/healthz", "/metrics"]
        ),
        state=State({"monitor": monitor, "primary": db, "replica": watch}),
        exception_handlers={TaskLibError: _tasklib_error, HTTPException: _http_error, Exception: _unexpected},
        on_shutdown=[db.close] + ([reads.close] if reads is not db else []),
        before_send=[add_security_headers],
        middleware=[DefineMiddleware(BasicAuth, credentials=auth)] if auth else [],
        allowed_hosts=AllowedHostsConfig(allowed_hosts=allowed_hosts, www_redirect=False) if allowed_hosts else None,
        debug=False,
        # Logging is the host's to configure (the `tasklib` command's, or the application's that
        # mounts this app): Litestar's default would install its own handler on the root logger.
        logging_config=None,
    )
