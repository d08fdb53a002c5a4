"""Which tasks a list, a count or a bulk action is about: one filter type for the library and the dashboard."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tasklib import listing
from tasklib.states import TaskState


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
        }

    def clause(self, **extra: Any) -> tuple[str, dict[str, object]]:
        """``WHERE …`` and its parameters; ``extra`` adds ``listing.filter_clause``'s own keys (states, cursor)."""
        return listing.filter_clause(**self.filters(), **extra)
