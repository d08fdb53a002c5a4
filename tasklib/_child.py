"""The child process that runs task code. Pre-forked, reused across tasks, killed on timeout.

Protocol (see ``_protocol``): the parent sends ``("run", [(token, name, kwargs_json), …])`` and
``("skip", token)``; the child answers ``("ready", pid)`` once, then one
``(token, status, payload)`` per task in order, status being ``ok`` (payload: result JSON),
``error`` (payload: traceback) or ``skipped``.
"""

from __future__ import annotations

import ctypes
import importlib
import json
import os
import select
import signal
import sys
import traceback
from collections import deque
from typing import Any

import pydantic_core

from tasklib._protocol import decode_available_one, encode, read_message, write_all

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this child if the worker dies, so a crashed worker leaves no task
    running that another worker will rescue and run again."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def _clean(text: str) -> str:
    return text.replace("\x00", "\\x00")


def run_one(definitions: dict[str, Any], name: str, kwargs_json: str) -> tuple[str, str]:
    """Run one task; returns (status, payload). Never raises."""
    try:
        definition = definitions.get(name)
        if definition is None:
            raise LookupError(f"task {name!r} is not registered in the worker's child process")
        kwargs = definition.load(json.loads(kwargs_json))
        result = definition.func(**kwargs)
    except BaseException as exc:
        # Drop this frame: users want their own code's traceback, not TaskLib's.
        tb = exc.__traceback__.tb_next if exc.__traceback__ is not None else None
        return "error", _clean("".join(traceback.format_exception(type(exc), exc, tb)))
    try:
        text = pydantic_core.to_json(result).decode()
    except Exception as exc:
        return "error", (
            f"TypeError: the task returned a {type(result).__name__}, which cannot be stored as JSON: {_clean(str(exc))}"
        )
    if "\\u0000" in text:
        return "error", "ValueError: the task's result contains a NUL character, which PostgreSQL's jsonb refuses"
    return "ok", text


def child_main(inbox: Any, outbox: Any, modules: list[str]) -> None:
    """Entry point of a child. ``inbox``/``outbox`` are multiprocessing pipe ends (kept alive here)."""
    read_fd, write_fd = inbox.fileno(), outbox.fileno()
    # Ctrl+C reaches the whole process group; the worker decides when task code stops, not the tty.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _die_with_parent()
    for module in modules:
        importlib.import_module(module)
    from tasklib.registry import registered_definitions

    definitions = registered_definitions()
    write_all(write_fd, encode(("ready", os.getpid())))
    buffer = bytearray()
    queue: deque[tuple[int, str, str]] = deque()
    skipped: set[int] = set()

    def handle(message: Any) -> None:
        if message[0] == "run":
            queue.extend(message[1])
        elif message[0] == "skip":
            skipped.add(message[1])

    while True:
        if not queue:
            message = read_message(read_fd, buffer)
            if message is None:  # the worker closed our pipe: time to go
                os._exit(0)
            handle(message)
            continue
        # Between tasks, take in any skip the parent sent while the previous task ran.
        while select.select([read_fd], [], [], 0)[0]:
            chunk = os.read(read_fd, 1 << 16)
            if not chunk:
                os._exit(0)
            buffer += chunk
            while (message := decode_available_one(buffer)) is not None:
                handle(message)
        token, name, kwargs_json = queue.popleft()
        if token in skipped:
            skipped.discard(token)
            write_all(write_fd, encode((token, "skipped", None)))
            continue
        status, payload = run_one(definitions, name, kwargs_json)
        write_all(write_fd, encode((token, status, payload)))
