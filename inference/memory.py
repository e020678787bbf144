"""Give memory back to the operating system once a burst of requests is over.

glibc keeps the memory a thread frees in that thread's arena for reuse. Gradio runs handlers in a pool of
worker threads, so after a burst of large uploads (decoded images, the processor's arrays) an idle server
holds on to gigabytes that no request uses: 12 concurrent 36 MP uploads left one at 3.7 GB. Work that
allocates a lot runs inside `in_use()`; when the last such block in the process ends, `release_memory`
returns the free pages (`malloc_trim`, a few milliseconds), and once more LATE_RELEASE_S later if the
process is still idle then: the decoded image outlives the prediction until the handler returns, so it is
freed just after the first trim. Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from collections.abc import Iterator
from contextlib import contextmanager

LATE_RELEASE_S = 1.0


class _Work:
    """How much memory-hungry work is in flight, and whether a late release is due; guarded by `lock`."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.in_flight = 0
        self.late: threading.Timer | None = None


_work = _Work()


def _find_malloc_trim():
    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


_MALLOC_TRIM = _find_malloc_trim()


def release_memory() -> bool:
    """Return free heap memory to the operating system now; False where there is no malloc_trim."""
    if _MALLOC_TRIM is None:
        return False
    _MALLOC_TRIM(0)
    return True


@contextmanager
def in_use() -> Iterator[None]:
    """Mark memory-hungry work in flight; the last block to end releases what the burst freed."""
    with _work.lock:
        _work.in_flight += 1
    try:
        yield
    finally:
        with _work.lock:
            _work.in_flight -= 1
            idle = _work.in_flight == 0
        if idle:
            release_memory()
            _release_later()


def pending_release() -> threading.Timer | None:
    """The late release that is due, if any (tests wait for it)."""
    return _work.late


def _release_later() -> None:
    """One more release LATE_RELEASE_S from now, unless one is already due (a burst schedules one)."""
    with _work.lock:
        if _work.late is not None:
            return
        _work.late = threading.Timer(LATE_RELEASE_S, _late_release)
        _work.late.daemon = True
        _work.late.start()


def _late_release() -> None:
    with _work.lock:
        _work.late, idle = None, _work.in_flight == 0
    if idle:
        release_memory()
