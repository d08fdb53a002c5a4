"""Which tasks a list, a count or a bulk action is about: one filter type for the library and the dashboard."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tasklib import listing
from tasklib.errors import ValidationError
from tasklib.states import TaskState


def contained(value: object, what: str = "kwargs_contain") -> str:
    """``value`` (a dict, or its JSON text) as the JSON object text a containment filter binds, or
    a ValidationError saying what is wrong with it."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            problem = f"{exc.msg} at character {exc.pos}"  # type: ignore[attr-defined]
            raise ValidationError(f"{what}: not valid JSON ({problem}): {str(value)[:60]!r}") from None
    if not isinstance(value, dict):
        raise ValidationError(f'{what}: expected a JSON object such as {{"user_id": 42}}, got {type(value).__name__}')
    try:
        return json.dumps(value)
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"{what}: not representable as JSON: {exc}") from None


@dataclass(frozen=True)
class TaskFilter:
    """Filters combined with AND; every field is optional. Values are always bound, never interpolated."""

    state: TaskState | None = None
    name: str | None = None
    tag: tuple[str, str] | None = None
    text: str | None = None
    created_from: datetime | None = None
    created_to: datetime | None = None
    finished_from: datetime | None = None
    finished_to: datetime | None = None
    queue: str | None = None
    #: A JSON object (text) the task's arguments contain: ``{"user_id": 42}``.
    kwargs: str | None = None

    def filters(self) -> dict[str, Any]:
        """As ``listing.filter_clause`` / ``listing.page_query`` keywords."""
        return {
            "state": self.state.value if self.state else None,
            "name": self.name,
            "tag": self.tag,
            "text": self.text,
            "created_from": self.created_from,
            "created_to": self.created_to,
            "finished_from": self.finished_from,
            "finished_to": self.finished_to,
            "queue": self.queue,
            "kwargs": self.kwargs,
        }

    def clause(self, **extra: Any) -> tuple[str, dict[str, object]]:
        """``WHERE …`` and its parameters; ``extra`` adds ``listing.filter_clause``'s own keys (states, cursor)."""
        return listing.filter_clause(**self.filters(), **extra)
