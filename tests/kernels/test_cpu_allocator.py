"""tune_cpu_allocator: repeated big temporaries stop page-faulting (checked in a subprocess)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import kernels.cpu_allocator

MODULE = Path(kernels.cpu_allocator.__file__)
SIZE = 40_000_000
# plain malloc/memset/free through ctypes: no torch import, so the subprocess starts fast
SCRIPT = textwrap.dedent(
    """
    import ctypes, importlib.util, resource, sys

    spec = importlib.util.spec_from_file_location("cpu_allocator", sys.argv[2])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if sys.argv[1] == "tuned":
        assert module.tune_cpu_allocator() and module.tune_cpu_allocator()
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]

    def temporary():
        buffer = libc.malloc(SIZE)
        ctypes.memset(buffer, 1, SIZE)
        libc.free(buffer)

    for _ in range(4):  # first touches fault either way, and the heap layout settles
        temporary()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        temporary()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """
).replace("SIZE", str(SIZE))


def minor_faults(mode: str) -> int:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode, str(MODULE)],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(result.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
def test_tuned_allocator_reuses_pages():
    pages = SIZE // 4096
    assert minor_faults("default") > 3 * pages  # each temporary is faulted in again
    assert minor_faults("tuned") < pages // 2  # the heap keeps the pages mapped
