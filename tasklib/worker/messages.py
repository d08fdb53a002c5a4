"""The messages between the worker and its children, and their framing on the pipes.

Each message is a small immutable ``NamedTuple``, matched by class. On the pipe it travels as a plain
tuple led by its kind's number (a pickled class costs several times a tuple's time, paid per task):
a frame is a 4-byte length and then that tuple's pickle.
"""

from __future__ import annotations

import os
import pickle
import struct
from collections.abc import Iterator
from typing import Literal, NamedTuple

# -- worker -> child ------------------------------------------------------------------------------


class TaskOrder(NamedTuple):
    """One task to run; ``seq`` is the worker's own number for the job, used in every answer."""

    seq: int
    name: str
    kwargs_json: str
    timeout_seconds: int | None = None
    parent_results_json: str | None = None  # a workflow child's parents' results (``parent_results``)


class Run(NamedTuple):
    """Run these tasks: a sync child queues them and runs them in order, an async child starts them all."""

    tasks: tuple[TaskOrder, ...]


class Recall(NamedTuple):
    """Give back these queued tasks if they have not started (sync children)."""

    seqs: tuple[int, ...]


class Cancel(NamedTuple):
    """Cancel these running tasks (async children)."""

    seqs: tuple[int, ...]


# -- child -> worker ------------------------------------------------------------------------------


class Ready(NamedTuple):
    """The child imported the task modules and takes work."""

    pid: int


class Recalled(NamedTuple):
    """These recalled tasks never started here and never will."""

    seqs: tuple[int, ...]


Status = Literal["ok", "error", "timeout", "cancelled"]


class Finished(NamedTuple):
    """One task ended: ``ok`` with the result as JSON text, ``error`` or ``timeout`` with a traceback,
    ``cancelled`` (async children) with nothing."""

    seq: int
    status: Status
    payload: str


ToChild = Run | Recall | Cancel
FromChild = Ready | Recalled | Finished

# -- framing --------------------------------------------------------------------------------------

_HEADER = struct.Struct("!I")
_KINDS: tuple[type[ToChild | FromChild], ...] = (Run, Recall, Cancel, Ready, Recalled, Finished)
_KIND = {kind: number for number, kind in enumerate(_KINDS)}


def encode(message: ToChild | FromChild) -> bytes:
    if type(message) is Run:
        wire: tuple[object, ...] = (0, tuple(map(tuple, message.tasks)))
    else:
        wire = (_KIND[type(message)], *message)
    body = pickle.dumps(wire, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(body)) + body


def _decode(wire: tuple[object, ...]) -> ToChild | FromChild:
    if wire[0] == 0:
        return Run(tuple(TaskOrder._make(task) for task in wire[1]))  # type: ignore[attr-defined]
    return _KINDS[wire[0]]._make(wire[1:])  # type: ignore[call-overload,index]


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def decode_available(buffer: bytearray) -> list[ToChild | FromChild]:
    """Pop every complete message from the front of ``buffer``."""
    messages = []
    offset = 0
    size = len(buffer)
    while size - offset >= 4:
        (length,) = _HEADER.unpack_from(buffer, offset)
        end = offset + 4 + length
        if end > size:
            break
        messages.append(_decode(pickle.loads(buffer[offset + 4 : end])))
        offset = end
    if offset:
        del buffer[:offset]
    return messages


def read_messages(fd: int) -> Iterator[ToChild | FromChild]:
    """Blocking reads (child side): every message until end of file."""
    buffer = bytearray()
    while chunk := os.read(fd, 1 << 16):
        buffer += chunk
        yield from decode_available(buffer)
