"""Keeps the C allocator from handing freed block-sized memory back to the system after every block.

Streaming allocates and frees numpy temporaries of a few hundred KiB per block. glibc serves such sizes
with mmap, or trims them off its heap when freed, so every block pays for fresh pages again (page
faults and zeroing): the compute then runs two to three times slower. Raising both thresholds keeps
that memory for reuse; at most TRIM_THRESHOLD of free memory is held. Other C libraries are left as
they are.
"""
import ctypes
import functools
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # from glibc's malloc.h
MMAP_THRESHOLD = 16 << 20  # allocations below this come from the reusable heap
TRIM_THRESHOLD = 64 << 20  # free memory held for reuse before any is returned

@functools.cache
def keep_freed_memory() -> bool:
    """Sets the thresholds once per process; False where the C library is not glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the interpreter runs on
    except (OSError, AttributeError):  # no mallopt: not glibc
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
