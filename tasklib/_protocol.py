"""Framing between the worker and its child processes: 4-byte length, then a pickle."""

from __future__ import annotations

import os
import pickle
import struct
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


def read_message(fd: int, buffer: bytearray) -> Any | None:
    """Blocking read of one message (child side). None at end of file."""
    while True:
        messages = decode_available_one(buffer)
        if messages is not None:
            return messages
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return None
        buffer += chunk


def decode_available_one(buffer: bytearray) -> Any | None:
    if len(buffer) < 4:
        return None
    (length,) = _HEADER.unpack_from(buffer, 0)
    if len(buffer) < 4 + length:
        return None
    message = pickle.loads(buffer[4 : 4 + length])
    del buffer[: 4 + length]
    return message
