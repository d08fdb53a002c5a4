"""The child process that runs ``async def`` tasks: many at once, on one event loop of its own.

Everything it is sent starts at once (no queue, so no recall); ``Cancel`` cancels running tasks.
Answers come in the order tasks finish. The child enforces each task's timeout by cancelling it; a
task that swallows the cancellation or blocks the loop is stopped by the worker killing the whole
child after a grace period (``async_executor``).
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import os
import signal
from typing import Any

from tasklib.outcome import timeout_error
from tasklib.worker.child import _die_with_parent, failure, load_call, success
from tasklib.worker.messages import Cancel, Finished, Ready, Run, Status, TaskOrder, decode_available, encode, write_all
from tasklib.workflow import running_with


async def run_async(
    definitions: dict[str, Any], name: str, kwargs_json: str, timeout: int | None, parent_results_json: str | None = None
) -> tuple[Status, str]:
    """Run one async task to (status, payload). Never raises but CancelledError (a cancel). Each runs
    in an asyncio task of its own, so its ``parent_results()`` are its own."""
    deadline = asyncio.timeout(timeout or None)  # None: no deadline, and never expired
    try:
        definition, kwargs = load_call(definitions, name, kwargs_json)
        async with deadline:
            with running_with(parent_results_json):
                result = definition.func(**kwargs)
                if inspect.isawaitable(result):
                    result = await result
    except asyncio.CancelledError:
        raise  # the worker cancelled it: nothing to report but that
    except BaseException as exc:
        if deadline.expired():
            return "timeout", failure(exc)[1] + timeout_error(timeout, "was cancelled")
        return failure(exc)
    if deadline.expired():
        # It caught the cancellation and returned anyway: it still ran past its timeout.
        return "timeout", timeout_error(timeout, "was cancelled")
    return success(result)


def async_child_main(read_fd: int, write_fd: int, modules: list[str]) -> None:
    """Entry point of an async child (forked by ``forkserver``): its input and output pipe ends."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _die_with_parent()
    for module in modules:
        importlib.import_module(module)
    from tasklib.registry import registered_definitions

    asyncio.run(_serve(read_fd, write_fd, registered_definitions()))
    os._exit(0)


async def _serve(read_fd: int, write_fd: int, definitions: dict[str, Any]) -> None:
    loop = asyncio.get_running_loop()
    running: dict[int, asyncio.Task[None]] = {}
    closed = loop.create_future()
    buffer = bytearray()
    os.set_blocking(read_fd, False)

    def send(message: Ready | Finished) -> None:
        # Blocking on purpose: the worker reads continuously, and a result must never be dropped.
        write_all(write_fd, encode(message))

    async def one(order: TaskOrder) -> None:
        status: Status
        try:
            status, payload = await run_async(
                definitions, order.name, order.kwargs_json, order.timeout_seconds, order.parent_results_json
            )
        except asyncio.CancelledError:
            status, payload = "cancelled", ""
        finally:
            running.pop(order.seq, None)
        send(Finished(order.seq, status, payload))

    def on_message(message: object) -> None:
        if isinstance(message, Run):
            for order in message.tasks:
                running[order.seq] = loop.create_task(one(order))
        elif isinstance(message, Cancel):
            for seq in message.seqs:
                task = running.get(seq)
                if task is not None:
                    task.cancel()

    def readable() -> None:
        try:
            chunk = os.read(read_fd, 1 << 16)
        except BlockingIOError:
            return
        if not chunk:  # the worker closed our pipe: time to go
            loop.remove_reader(read_fd)
            if not closed.done():
                closed.set_result(None)
            return
        buffer.extend(chunk)
        for message in decode_available(buffer):
            on_message(message)

    loop.add_reader(read_fd, readable)
    send(Ready(os.getpid()))
    await closed
