"""Task ids: UUID version 7 (RFC 9562), time-ordered, monotonic within a process.

Why not ``uuid4``: the primary key index is written for every row version and read by every
statement that names tasks by id (finishing a batch, heartbeats, cancels). Random ids spread a
batch of 256 recent tasks over 256 leaf pages of an index that grows with the whole history;
time-ordered ids keep recent tasks on the index's last few pages, which stay in cache however large
the table grows. Monotonic ids also make the id tie-break of FIFO order (same priority, same
``scheduled_at``, as every item of one ``submit_many`` has) follow submission order.

Layout: 48 bits of Unix milliseconds, the version (7), a 12-bit counter that orders ids made in the
same millisecond, the variant, 62 random bits. When the counter runs out within a millisecond (more
than 4,096 ids), the next ids borrow the following millisecond, so order is kept.
"""

from __future__ import annotations

import os
import threading
import time
import uuid

_lock = threading.Lock()
_last_ms = 0
_counter = 0


def new_ids(count: int) -> list[uuid.UUID]:
    """``count`` new ids, each greater than every id this process made before."""
    global _last_ms, _counter
    out: list[uuid.UUID] = []
    with _lock:
        for _ in range(count):
            now_ms = time.time_ns() // 1_000_000
            if now_ms > _last_ms:
                _last_ms, _counter = now_ms, 0
            else:
                _counter += 1
                if _counter > 0xFFF:  # this millisecond is used up: borrow the next one
                    _last_ms, _counter = _last_ms + 1, 0
            out.append(_pack(_last_ms, _counter, int.from_bytes(os.urandom(8)) >> 2))
    return out


def new_id() -> uuid.UUID:
    """One new id (see ``new_ids``)."""
    return new_ids(1)[0]


def _pack(ms: int, counter: int, random62: int) -> uuid.UUID:
    value = (ms & (1 << 48) - 1) << 80 | 0x7 << 76 | counter << 64 | 0b10 << 62 | random62
    return uuid.UUID(int=value)
