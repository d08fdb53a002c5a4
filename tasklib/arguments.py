"""Command-line values, checked while the command line is parsed.

Each function turns one option's text into its value or raises ``argparse.ArgumentTypeError`` with
the accepted form, so a bad value is refused in one line (exit status 2) before any database is
started, reached or created.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from datetime import timedelta

import pydantic

from tasklib.config import FINISHED, Retention, normalize_database_url, parse_duration
from tasklib.errors import problems_of, summary_of
from tasklib.limits import check_queue

Bad = argparse.ArgumentTypeError


def whole(minimum: int, maximum: int | None = None, what: str = "a whole number") -> Callable[[str], int]:
    """A whole number in ``[minimum, maximum]``."""
    form = f"{what} from {minimum} to {maximum}" if maximum is not None else f"{what} of at least {minimum}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise Bad(f"expected {form}, got {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            raise Bad(f"expected {form}, got {text!r}")
        return value

    return parse


def seconds(minimum: float = 0, *, above: bool = False) -> Callable[[str], float]:
    """A number of seconds, at least ``minimum`` (or strictly above it)."""
    form = f"a number of seconds {'above' if above else 'of at least'} {minimum:g}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise Bad(f"expected {form}, got {text!r}") from None
        if value != value or value in (float("inf"), float("-inf")) or value < minimum or (above and value == minimum):
            raise Bad(f"expected {form}, got {text!r}")
        return value

    return parse


port = whole(1, 65535, "a port number")


def period(text: str) -> timedelta:
    """``90s``, ``30m``, ``12h``, ``7d``, ``2w`` or a number of seconds."""
    try:
        return parse_duration(float(text) if text.replace(".", "", 1).isdigit() else text)
    except ValueError:
        raise Bad(f"expected a period such as 90s, 30m, 12h, 7d or 2w, got {text!r}") from None


def retention(text: str) -> Retention:
    """``completed=7d,failed=30d,cancelled=7d,every=1h`` (any of them, at least one state)."""
    form = "state=period pairs such as completed=7d,failed=30d,every=1h"
    values: dict[str, timedelta] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or key not in (*FINISHED, "every"):
            raise Bad(f"expected {form}; {part!r} is not one")
        try:
            values[key] = period(value)
        except Bad as exc:
            raise Bad(f"{key}: {exc}") from None
    every = values.pop("every", None)
    if not values:
        raise Bad(f"expected {form}; name at least one of {', '.join(FINISHED)}")
    if every is not None and every < timedelta(seconds=1):
        raise Bad("every: expected a period of at least 1s")
    try:
        return Retention(**values, **({} if every is None else {"every_seconds": every.total_seconds()}))
    except pydantic.ValidationError as exc:
        raise Bad(f"expected {form}: {summary_of(problems_of(exc))}") from None


def database_url(text: str) -> str:
    try:
        return normalize_database_url(text)
    except ValueError as exc:
        raise Bad(str(exc)) from None


def queue(text: str) -> str:
    try:
        return check_queue(text)
    except ValueError as exc:
        raise Bad(str(exc)) from None


def worker_id(text: str) -> str:
    if not 1 <= len(text) <= 200:
        raise Bad(f"expected 1 to 200 characters, got {len(text)}")
    return text


def auth(text: str) -> str:
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise Bad("expected USER:PASSWORD, both non-empty")
    return text


def queue_limit(text: str) -> int | None:
    """``limit NAME N``: a whole number of at least 1, or ``none``."""
    if text.strip().lower() == "none":
        return None
    try:
        return whole(1)(text)
    except Bad:
        raise Bad(f"expected a whole number of at least 1, or none; got {text!r}") from None
