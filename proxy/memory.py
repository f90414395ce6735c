"""Give memory back to the OS after a crowd of calls is gone (glibc's `malloc_trim`)."""

from __future__ import annotations

import asyncio
import ctypes
from collections.abc import Callable
from typing import Protocol

# Sample the calls in flight this often; trim once this many calls' state (~20-50 KiB each)
# has been released since the highest sample.
TRIM_SAMPLE_SECONDS = 1.0
TRIM_AFTER_RELEASED_CALLS = 200


class CallCounts(Protocol):
    """What the trim loop reads from the forwarding handler."""

    @property
    def calls(self) -> int: ...  # in flight now

    @property
    def abandoned(self) -> int: ...  # ended before their request arrived, ever


def malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None where there is none (musl, macOS)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


async def trim_loop(handler: CallCounts) -> None:
    """Held streams, rapid resets and bursts of long polls leave their freed call state in
    glibc's arenas, and RSS would stay at the peak for good (a pod near its memory limit stays
    there). `malloc_trim` returns the free pages; it runs in a thread, only after at least
    TRIM_AFTER_RELEASED_CALLS calls ended, never per call."""
    trim = malloc_trim()
    if trim is None:
        return
    high = done = 0
    while True:
        await asyncio.sleep(TRIM_SAMPLE_SECONDS)
        calls, ended = handler.calls, handler.abandoned
        high = max(high, calls)
        if high - calls + ended - done >= TRIM_AFTER_RELEASED_CALLS:
            await asyncio.to_thread(trim, 0)
            high, done = calls, ended
