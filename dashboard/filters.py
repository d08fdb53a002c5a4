"""Parse the dashboard's query parameters into a TaskFilter; bad values raise ValidationError (400)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlencode

from tasklib.api import parse_state
from tasklib.errors import ValidationError
from tasklib.filters import TaskFilter, contained
from tasklib.queues import valid_queue

MAX_TEXT = 200


@dataclass(frozen=True)
class ListParams:
    """The /tasks query string, validated. ``query()`` rebuilds it for links."""

    flt: TaskFilter
    raw: dict[str, str]  # the filter values as typed, for the form and links
    limit: int
    oldest_first: bool = False

    def query(self, **overrides: str | int | None) -> str:
        values: dict[str, str | int | None] = {**self.raw, "limit": self.limit if self.limit != 50 else None}
        values.update(overrides)
        return urlencode({k: v for k, v in values.items() if v not in (None, "")})


def _datetime(field: str, value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValidationError(f"{field}: not a date/time (expected e.g. 2026-11-27T14:30): {value[:40]!r}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)  # the dashboard shows and takes UTC


def parse_list_params(
    *,
    state: str | None,
    name: str | None,
    tag: str | None,
    q: str | None,
    created_from: str | None,
    created_to: str | None,
    finished_from: str | None,
    finished_to: str | None,
    limit: int,
    sort: str | None = None,
    queue: str | None = None,
    kwargs: str | None = None,
) -> ListParams:
    tag_pair = None
    if tag:
        key, sep, value = tag.partition("=")
        if not sep or not key.strip():
            raise ValidationError(f"tag: expected key=value, got {tag[:60]!r}")
        tag_pair = (key.strip(), value.strip())
    if sort not in (None, "", "newest", "oldest"):
        raise ValidationError(f"sort: expected newest or oldest, got {sort[:20]!r}")
    if q and len(q) > MAX_TEXT:
        raise ValidationError(f"q: search text is limited to {MAX_TEXT} characters")
    flt = TaskFilter(
        state=parse_state(state) if state else None,
        name=name.strip() or None if name else None,
        tag=tag_pair,
        text=q.strip() or None if q else None,
        created_from=_datetime("created_from", created_from),
        created_to=_datetime("created_to", created_to),
        finished_from=_datetime("finished_from", finished_from),
        finished_to=_datetime("finished_to", finished_to),
        queue=valid_queue(queue.strip()) if queue and queue.strip() else None,
        kwargs=contained(kwargs, "kwargs") if kwargs and kwargs.strip() else None,
    )
    raw = {
        "state": state or "",
        "name": name or "",
        "tag": tag or "",
        "q": q or "",
        "created_from": created_from or "",
        "created_to": created_to or "",
        "finished_from": finished_from or "",
        "finished_to": finished_to or "",
        "queue": queue or "",
        "kwargs": kwargs or "",
        "sort": "oldest" if sort == "oldest" else "",  # newest is the default and stays out of links
    }
    return ListParams(flt, {k: v for k, v in raw.items() if v}, limit, oldest_first=sort == "oldest")
