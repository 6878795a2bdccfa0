"""Keeps glibc's large allocations reusable after tf.data has pinned its mmap threshold.

The first `tf.data.Dataset.from_generator` iterator of a process makes
TensorFlow call `mallopt(M_MMAP_THRESHOLD, 128 KiB)` (its
`ApplyPython311MemoryPatch`, once per process). Setting the threshold turns
off glibc's dynamic one, which otherwise rises to the size of the blocks a
program frees. From then on every block of 128 KiB or more is a fresh
`mmap` and `munmap`, and XLA's CPU runtime allocates blocks of that size
at every step: on the default MNIST-1D run each step of batch 128 then
took about 500 page faults, and the step time doubled (2.9 to 5.5 ms,
measured on 2 cores with a minimal jit+optax step; docs/BENCHMARKS.md).

`restore()` puts back what the dynamic threshold reaches at most on a
64-bit glibc (32 MiB), and the trim threshold it keeps beside it (twice
that), so that the blocks a step frees are reused by the next step. It is
called once a generator iterator exists (`numpy_iterator`); elsewhere (no
glibc) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Iterator
from typing import Any

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # DEFAULT_MMAP_THRESHOLD_MAX on 64-bit glibc
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD  # what glibc's dynamic rule keeps it at


@functools.cache
def _mallopt():
  name = ctypes.util.find_library("c")
  try:
    libc = ctypes.CDLL(name)
    return libc.mallopt if hasattr(libc, "mallopt") else None
  except OSError:
    return None


def restore() -> bool:
  """Sets glibc's mmap and trim thresholds as its dynamic rule would leave them.

  Returns:
    Whether they were set (False where the C library has no `mallopt`).
  """
  mallopt = _mallopt()
  if mallopt is None:
    return False
  return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
    mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
  )


def numpy_iterator(dataset: Any) -> Iterator[Any]:
  """`dataset.as_numpy_iterator()`, with the thresholds restored once it exists."""
  iterator = dataset.as_numpy_iterator()
  restore()
  return iterator
