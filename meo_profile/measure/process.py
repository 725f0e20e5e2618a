"""Process-level settings a measurement runs under: the CPU allocator (applied once per
process and recorded), and the native stderr the profiler writes to.

The CPU allocator:

glibc's malloc maps every block above its mmap threshold (at most 32 MiB) afresh and unmaps it
on free, so each new large tensor pays one page fault per 4 KiB page; on a virtual machine that
can cost more than the arithmetic (a fresh 75 MB merged weight: ~20 ms to fault in, ~2 ms to
fill). CPU serving setups avoid it with jemalloc or tcmalloc, as PyTorch's CPU tuning guide
recommends. `retain` gets the same effect without a preload: large blocks come from the heap and
freed memory is kept. MEO materialises B merged matrices per layer per call, so it pays the
most under `system`; every variant is timed under the same setting.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from collections.abc import Iterator

CPU_ALLOCATORS = ("retain", "system")
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters (malloc.h)
_state = {"retain": False}


def apply(mode: str) -> str:
    """Apply `mode` (once; glibc cannot go back to its dynamic thresholds) and return the
    setting in force, as recorded in `cpu_allocator`."""
    if mode == "retain" and not _state["retain"]:
        try:
            libc = ctypes.CDLL(None)
            big = 2**31 - 1
            _state["retain"] = bool(libc.mallopt(_M_MMAP_THRESHOLD, big)
                                    and libc.mallopt(_M_TRIM_THRESHOLD, big))
        except (OSError, AttributeError):  # not glibc: leave the allocator as it is
            _state["retain"] = False
    return in_force()


def in_force() -> str:
    return "glibc-retain" if _state["retain"] else "system"


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """Silence the C-level stderr around torch.profiler's start and stop: its kineto backend
    prints "USDT ... profiler_start/stop" lines there at every log level. Python exceptions
    still propagate (they are printed later, by whoever handles them)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
