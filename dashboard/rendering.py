"""Jinja setup: where templates live, and the filters pages use (times, JSON, states)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jinja2 import pass_context

import dashboard
from tasklib.states import TaskState


def asset_dir(name: str) -> Path:
    """``templates`` or ``static``, shipped inside the package (package data in the wheel)."""
    return Path(dashboard.__file__).resolve().parent / name


def reltime(value: datetime | None, now: datetime | None = None) -> str:
    if value is None:
        return "—"
    now = now or datetime.now(UTC)
    seconds = (now - value).total_seconds()
    future = seconds < 0
    seconds = abs(seconds)
    if seconds < 1:
        text = "just now" if not future else "now"
        return text
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            amount = int(seconds // size)
            text = f"{amount}{unit}"
            break
    return f"in {text}" if future else f"{text} ago"


def exact(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC" if value else ""


def pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)


def duration(start: datetime | None, end: datetime | None) -> str:
    if not start or not end:
        return "—"
    seconds = (end - start).total_seconds()
    if seconds < 1:
        return f"{seconds * 1000:.1f} ms"
    if seconds < 120:
        return f"{seconds:.2f} s"
    return f"{seconds / 60:.1f} min"


def period(seconds: float) -> str:
    """A retention period in its largest whole unit: ``7 d``, ``12 h``, ``90 s``."""
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)} {unit}"
    return f"{seconds:g} s"


def short_id(value: Any) -> str:
    """The one short form of a task id on every page: its last 8 hex digits. A UUIDv7 starts with
    its creation time, so the first digits of tasks made together read the same; the last are
    random and tell them apart."""
    return "…" + str(value)[-8:]


def mount_path(request: Any) -> str:
    """The path the dashboard is mounted under ("" at the top; "/tasklib" inside an application
    that mounts it there), from the ASGI ``root_path``: every link, form, poll and redirect starts with it."""
    return str(request.scope.get("root_path", "")).rstrip("/")


@pass_context
def root(context: Any) -> str:
    """``mount_path`` for templates."""
    request = context.get("request")
    return mount_path(request) if request is not None else ""


def setup(env: Any) -> None:
    env.filters.update(reltime=reltime, exact=exact, pretty_json=pretty_json, period=period, short_id=short_id)
    env.globals.update(
        duration=duration, states=list(TaskState), now=lambda: datetime.now(UTC), root=root, replica_note=replica_note
    )


@pass_context
def replica_note(context: Any) -> dict[str, Any] | None:
    """What the header says of the replica pages are read from (None: they read the primary)."""
    from dashboard import replica

    request = context.get("request")
    return replica.note(request) if request is not None else None
