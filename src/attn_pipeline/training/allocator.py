"""Keep freed memory in the process for the next tensor, instead of returning it to the
kernel after every step.

glibc's malloc serves large blocks (a batch's activations, a distance matrix) with fresh
``mmap`` pages and unmaps them when freed, so every training step and evaluation batch
faults its buffers in again, page by page, in the kernel (docs/performance.md has the
share of time that costs). Raising the thresholds below keeps those pages mapped for
reuse; the arithmetic is unchanged. PyTorch's own CPU allocator has no cache to turn on
instead.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

logger = logging.getLogger(__name__)

# mallopt parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3

#: blocks up to this size come from the heap, not their own mmap (glibc's largest allowed)
MMAP_THRESHOLD = 32 << 20
#: freed heap memory kept before any is returned to the kernel
TRIM_THRESHOLD = 1 << 30
#: extra heap asked for each time it grows, so that it grows seldom
TOP_PAD = 256 << 20


def retain_freed_memory() -> bool:
    """Raise glibc malloc's mmap and trim thresholds for this process. Returns whether it
    applied (False where the C library is not glibc: macOS, musl)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    if not hasattr(libc, "gnu_get_libc_version"):
        return False  # another C library's mallopt takes other parameters
    applied = all(
        mallopt(parameter, value) == 1
        for parameter, value in (
            (_M_MMAP_THRESHOLD, MMAP_THRESHOLD),
            (_M_TRIM_THRESHOLD, TRIM_THRESHOLD),
            (_M_TOP_PAD, TOP_PAD),
        )
    )
    if not applied:
        logger.debug("glibc refused the malloc thresholds: left as they were")
    return applied
