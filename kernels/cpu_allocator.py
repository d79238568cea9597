"""Keep freed CPU memory in the process: page faults dominate the torch reference on CPU.

glibc returns big blocks (>= 128 KiB .. 32 MiB, adaptively) to the OS with `munmap` as soon as
they are freed, so every step's large temporaries (gathered K/V, MLP activations, logits) are
page-faulted in again, a few microseconds per 4 KiB page; on a VM that is often more than the
arithmetic (a 39 MB logits buffer: ~30 ms of faults vs ~2 ms of work). Serving processes call
`tune_cpu_allocator()` once at start-up, before the model is built; peak memory then stays
with the process, which a server wants anyway. No-op (False) where libc is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_NEVER_TRIM = 2**31 - 1  # bytes of free heap top kept before returning it to the OS


@functools.cache
def tune_cpu_allocator() -> bool:
    """Serve every allocation from the malloc heap and never trim it; True when applied."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    # NOTE: order matters: with mmap disabled, freed blocks go back to the heap, and the huge
    # trim threshold keeps the heap from shrinking, so the next step reuses mapped pages.
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM))
