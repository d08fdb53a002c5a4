"""Framing between the worker and its child processes: 4-byte length, then a pickle."""

from __future__ import annotations

import os
import pickle
import struct
from collections.abc import Iterator
from typing import Any

_HEADER = struct.Struct("!I")


def encode(message: Any) -> bytes:
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(body)) + body


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def decode_available(buffer: bytearray) -> list[Any]:
    """Pop every complete message from the front of ``buffer``."""
    messages = []
    offset = 0
    size = len(buffer)
    while size - offset >= 4:
        (length,) = _HEADER.unpack_from(buffer, offset)
        end = offset + 4 + length
        if end > size:
            break
        messages.append(pickle.loads(buffer[offset + 4 : end]))
        offset = end
    if offset:
        del buffer[:offset]
    return messages


def read_messages(fd: int) -> Iterator[Any]:
    """Blocking reads (child side): every message until end of file."""
    buffer = bytearray()
    while chunk := os.read(fd, 1 << 16):
        buffer += chunk
        yield from decode_available(buffer)
