"""The child process that runs task code. Pre-forked, reused across tasks, killed on timeout.

It answers ``Ready`` once, then one ``Finished`` per task it ran, in the order it was sent them
(``messages``). A reader thread takes messages while task code runs, so a ``Recall`` is answered at
once even during a long task: a recalled task never starts here, which lets the worker move it to
an idle child (or drop it when cancelled) without ever running it twice.
"""

from __future__ import annotations

import asyncio
import ctypes
import importlib
import inspect
import json
import os
import resource
import signal
import sys
import threading
import traceback
from collections import deque
from typing import Any

import pydantic_core

from tasklib.registry import refuse_nul
from tasklib.worker.messages import (
    Finished,
    Ready,
    Recall,
    Recalled,
    Run,
    Status,
    TaskOrder,
    encode,
    read_messages,
    write_all,
)
from tasklib.workflow import running_with

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


_MB = 1024 * 1024


def _address_space() -> int:
    """This process's mapped address space now, in bytes (VmSize)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


class MemoryLimit:
    """While a task runs, cap how far the child's address space may grow (RLIMIT_AS).

    The cap is what the idle child maps plus the task's limit, so ``memory_limit_mb=256`` means
    "this attempt may allocate 256 MB": past it, allocations fail and Python raises MemoryError in
    the task. Address space, not resident memory: thread stacks and malloc arenas a task creates
    count too. Linux only; elsewhere the limit is not applied.
    """

    def __init__(self, limit_mb: int | None) -> None:
        self.limit_mb = limit_mb
        self._previous: tuple[int, int] | None = None

    def __enter__(self) -> MemoryLimit:
        if self.limit_mb and sys.platform.startswith("linux"):
            self._previous = resource.getrlimit(resource.RLIMIT_AS)
            soft = _address_space() + self.limit_mb * _MB
            hard = self._previous[1]
            resource.setrlimit(resource.RLIMIT_AS, (soft if hard == resource.RLIM_INFINITY else min(soft, hard), hard))
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            resource.setrlimit(resource.RLIMIT_AS, self._previous)


def load_call(definitions: dict[str, Any], name: str, kwargs_json: str) -> tuple[Any, dict[str, Any]]:
    """The registered definition of ``name`` and its validated arguments (raises what a task would)."""
    definition = definitions.get(name)
    if definition is None:
        raise LookupError(f"task {name!r} is not registered in the worker's child process")
    return definition, definition.load(json.loads(kwargs_json))


def failure(exc: BaseException, limit_mb: int | None = None) -> tuple[Status, str]:
    """``("error", traceback)`` for an exception a task raised, without TaskLib's own frame."""
    tb = exc.__traceback__.tb_next if exc.__traceback__ is not None else None
    text = "".join(traceback.format_exception(type(exc), exc, tb))
    if isinstance(exc, MemoryError) and limit_mb:
        text += f"MemoryError: the task exceeded its memory limit of {limit_mb} MB (memory_limit_mb)\n"
    return "error", _clean(text)


def success(result: Any) -> tuple[Status, str]:
    """``("ok", JSON)`` for a task's return value, or an error when it cannot be stored."""
    try:
        text = pydantic_core.to_json(result).decode()
    except Exception as exc:
        return "error", (
            f"TypeError: the task returned a {type(result).__name__}, which cannot be stored as JSON: {_clean(str(exc))}"
        )
    try:
        return "ok", refuse_nul(text, "the task's result")
    except ValueError as exc:
        return "error", f"ValueError: {exc}"


def run_one(
    definitions: dict[str, Any],
    name: str,
    kwargs_json: str,
    default_memory_limit_mb: int | None = None,
    parent_results_json: str | None = None,
) -> tuple[Status, str]:
    """Run one task; returns (status, payload). Never raises."""
    limit_mb = default_memory_limit_mb
    try:
        definition, kwargs = load_call(definitions, name, kwargs_json)
        limit_mb = definition.memory_limit_mb or default_memory_limit_mb
        with MemoryLimit(limit_mb), running_with(parent_results_json):
            result = definition.func(**kwargs)
            if inspect.iscoroutine(result):
                # An ``async def`` task in a sync child (the worker runs with async_concurrency=0):
                # on an event loop of its own, one at a time, stopped like sync code.
                result = asyncio.run(result)
    except BaseException as exc:
        return failure(exc, limit_mb)
    return success(result)


def child_main(read_fd: int, write_fd: int, modules: list[str], default_memory_limit_mb: int | None = None) -> None:
    """Entry point of a child (forked by ``forkserver``): its input and output pipe ends."""
    # Ctrl+C reaches the whole process group; the worker decides when task code stops, not the tty.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _die_with_parent()
    for module in modules:
        importlib.import_module(module)
    from tasklib.registry import registered_definitions

    definitions = registered_definitions()
    queue: deque[TaskOrder] = deque()
    work = threading.Condition()
    write_lock = threading.Lock()

    def send(message: Ready | Recalled | Finished) -> None:
        data = encode(message)
        with write_lock:  # two threads write: frames must not interleave
            write_all(write_fd, data)

    def reader() -> None:
        try:
            read_loop()
        except BaseException:  # (a MemoryError under a task's limit, say): a deaf child would hang
            os._exit(70)  # its tasks; dying lets the worker see it and recover them
        os._exit(0)  # the worker closed our pipe: time to go

    def read_loop() -> None:
        for message in read_messages(read_fd):
            if isinstance(message, Run):
                with work:
                    queue.extend(message.tasks)
                    work.notify()
            elif isinstance(message, Recall):
                wanted = set(message.seqs)
                with work:
                    recalled = tuple(order.seq for order in queue if order.seq in wanted)
                    kept = [order for order in queue if order.seq not in wanted]
                    queue.clear()
                    queue.extend(kept)
                send(Recalled(recalled))

    threading.Thread(target=reader, name="tasklib-child-reader", daemon=True).start()
    send(Ready(os.getpid()))
    while True:
        with work:
            while not queue:
                work.wait()
            order = queue.popleft()
        status, payload = run_one(
            definitions, order.name, order.kwargs_json, default_memory_limit_mb, order.parent_results_json
        )
        send(Finished(order.seq, status, payload))
