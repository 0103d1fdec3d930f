"""Time-ordered 64-bit IDs (snowflake layout).

    | 41 bits: ms since 2024-01-01 | 10 bits: generator | 12 bits: sequence |

Only the Host mints IDs, so one generator per process is enough; the
generator bits still let a second minting process (a migration tool, a
future HA host) avoid collisions. IDs sort by creation time, so "ORDER BY id"
is submission order. If the clock steps backwards the generator keeps
counting from the last timestamp it used rather than reissuing old IDs.
"""

from __future__ import annotations

import threading
import time

from .errors import ValidationError

EPOCH_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z
_SEQ_BITS = 12
_GEN_BITS = 10
_SEQ_MASK = (1 << _SEQ_BITS) - 1


class IdGenerator:
    def __init__(self, generator: int = 0, clock=time.time):
        if not 0 <= generator < (1 << _GEN_BITS):
            raise ValueError("generator id out of range")
        self._generator = generator
        self._clock = clock
        self._lock = threading.Lock()
        self._last_ms = -1
        self._seq = 0

    def next(self) -> int:
        with self._lock:
            now_ms = int(self._clock() * 1000) - EPOCH_MS
            if now_ms <= self._last_ms:
                now_ms = self._last_ms
                self._seq = (self._seq + 1) & _SEQ_MASK
                if self._seq == 0:
                    # 4096 IDs in one millisecond: borrow the next millisecond.
                    now_ms += 1
            else:
                self._seq = 0
            self._last_ms = now_ms
            return (now_ms << (_GEN_BITS + _SEQ_BITS)) | (self._generator << _SEQ_BITS) | self._seq

    def next_many(self, n: int) -> list[int]:
        """`n` IDs, increasing, as `n` calls of `next` would give them (one
        lock, one clock read: an array's thousands of tasks)."""
        with self._lock:
            now_ms = max(int(self._clock() * 1000) - EPOCH_MS, self._last_ms)
            seq = self._seq + 1 if now_ms == self._last_ms else 0
            out = []
            gen = self._generator << _SEQ_BITS
            for _ in range(n):
                if seq > _SEQ_MASK:
                    # 4096 IDs in one millisecond: borrow the next millisecond.
                    now_ms, seq = now_ms + 1, 0
                out.append((now_ms << (_GEN_BITS + _SEQ_BITS)) | gen | seq)
                seq += 1
            if out:
                self._last_ms, self._seq = now_ms, seq - 1
            return out


def parse_id(text: object) -> int:
    """Accept an ID as JSON gives it (a decimal string, or an int) and range-check it."""
    if isinstance(text, bool):
        raise ValidationError(f"invalid task id {text!r}")
    if isinstance(text, int):
        value = text
    elif isinstance(text, str) and text.isascii() and text.isdigit() and len(text) <= 20:
        value = int(text)
    else:
        raise ValidationError(f"invalid task id {text!r}: expected a decimal number")
    if not 0 < value < (1 << 63):
        raise ValidationError(f"invalid task id {text!r}: out of range")
    return value
