"""Steps compiled ahead of time, once per batch size, on explicit shardings.

`CompiledSteps` jits a step with explicit input and output shardings and a
donated state, and compiles it once for each batch size a plan uses; the
next phase's can compile in the background while the current one trains
(the trainer does that on accelerators, where it pays). A batch of any
other shape is refused by the executable, never silently recompiled.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
from jax.sharding import Mesh

from bigbatch import sharding as shd


def abstract_state(shardings: Any, like: Any) -> Any:
  """`like`'s shapes and dtypes (arrays or `ShapeDtypeStruct`s) placed by `shardings`."""
  return jax.tree.map(
    lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
    like,
    shardings,
  )


@dataclasses.dataclass(frozen=True)
class CompileRecord:
  """One compiled executable: its batch size and what compiling it took."""

  batch_size: int
  seconds: float
  background: bool


class CompiledSteps:
  """A function compiled ahead of time once per batch size, on explicit shardings.

  `jax.jit(fn, in_shardings=(state, batch), out_shardings=(state, replicated),
  donate_argnums=0)` is lowered with the abstract batch of each batch size and
  compiled. Per-example shapes, dtypes and the batch sharding are fixed
  here, so the executables are cached by batch size; a batch that differs
  in anything else is refused by the executable, never silently recompiled.
  Calling with a batch size the cache does not hold compiles it (and counts
  it); `prefetch` compiles one in a background thread so that a phase
  switch does not wait for the compiler.

  Args:
    fn: `fn(state, batch)`; the train step, or the eval step with
      `returns_state=False`.
    state: the train state, placed on `mesh` (`create_train_state`, or a
      restored one) or abstract (`jax.ShapeDtypeStruct`s with shardings); its
      shardings become the step's input and output shardings.
    example_batch: per-example shapes and dtypes, e.g.
      `{"inputs": jax.ShapeDtypeStruct((40,), jnp.float32),
        "labels": jax.ShapeDtypeStruct((), jnp.int32)}`.
    mesh: the device mesh; the batch is split over all its devices.
    returns_state: `fn` returns `(state, metrics)` (donating the state) rather
      than only metrics.
    ghost_batch_size: checked against each batch size before compiling.
    max_in_flight: steps dispatched but not finished before the next waits.
      Two keep the device busy while the host prepares the next step; a bound
      at all matters on CPU, where every device's share of a step takes a
      thread from one pool and overlapping many multi-device steps can
      starve a collective (XLA aborts after 40 s).
  """

  def __init__(
    self,
    fn: Callable,
    state: Any,
    example_batch: Mapping[str, jax.ShapeDtypeStruct],
    mesh: Mesh,
    *,
    returns_state: bool = True,
    ghost_batch_size: int | None = None,
    max_in_flight: int = 2,
  ):
    self._mesh = mesh
    self._in_flight: collections.deque = collections.deque()
    self._max_in_flight = max_in_flight
    self.state_shardings = jax.tree.map(lambda leaf: leaf.sharding, state)
    self._abstract_state = abstract_state(self.state_shardings, state)
    self._example_batch = dict(example_batch)
    self._ghost = ghost_batch_size
    self._batch_sharding = shd.batch_sharding(mesh)
    out = shd.replicated(mesh)
    self._jitted = jax.jit(
      fn,
      in_shardings=(self.state_shardings, self._batch_sharding),
      out_shardings=(self.state_shardings, out) if returns_state else out,
      donate_argnums=(0,) if returns_state else (),
    )
    # by batch size: shapes, dtypes and shardings of a batch follow from it here
    self._compiled: dict[int, Any] = {}
    self._pending: dict[int, concurrent.futures.Future] = {}
    self._lock = threading.Lock()
    self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="bigbatch-compile")
    self.records: list[CompileRecord] = []

  def abstract_batch(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    """The global batch of `batch_size` examples as shapes, dtypes and shardings."""
    return {
      key: jax.ShapeDtypeStruct(
        (batch_size,) + tuple(spec.shape), spec.dtype, sharding=self._batch_sharding
      )
      for key, spec in self._example_batch.items()
    }

  def _compile(self, batch_size: int, background: bool):
    shd.check_batch_size(batch_size, self._mesh, ghost_batch_size=self._ghost)
    start = time.perf_counter()
    compiled = self._jitted.lower(self._abstract_state, self.abstract_batch(batch_size)).compile()
    self.records.append(CompileRecord(batch_size, time.perf_counter() - start, background))
    return compiled

  def prefetch(self, batch_size: int) -> None:
    """Starts compiling for `batch_size` in the background (no-op if cached)."""
    with self._lock:
      if batch_size in self._compiled or batch_size in self._pending:
        return
      self._pending[batch_size] = self._pool.submit(self._compile, batch_size, True)

  def compiled(self, batch_size: int):
    """The executable for `batch_size`: cached, awaited from `prefetch`, or compiled now."""
    executable = self._compiled.get(batch_size)  # the hot path: one dict lookup
    if executable is not None:
      return executable
    with self._lock:
      future = self._pending.pop(batch_size, None)
    executable = future.result() if future else self._compile(batch_size, False)
    with self._lock:
      self._compiled[batch_size] = executable
    return executable

  def __call__(self, state: Any, batch: Mapping[str, Any]):
    """Runs the compiled step on a global batch: `jax.Array`s (`sharding.global_batch`), or
    with one process the NumPy arrays themselves (`sharding.step_batch`)."""
    executable = self.compiled(len(batch["labels"]))
    while len(self._in_flight) >= self._max_in_flight:
      jax.block_until_ready(self._in_flight.popleft())
    outputs = executable(state, batch)
    # the metrics (never donated) mark when a step has finished
    self._in_flight.append(outputs[1] if isinstance(outputs, tuple) else outputs)
    return outputs

  @property
  def compile_count(self) -> int:
    """Executables compiled so far (foreground and background)."""
    return len(self.records)

  def close(self) -> None:
    """Waits for background compiles and stops the worker thread."""
    self._pool.shutdown(wait=True)


def enable_compilation_cache(path: str, *, min_compile_seconds: float = 0.0) -> None:
  """Turns on JAX's persistent compilation cache in `path`.

  A restarted (or resumed) run then loads each phase's executable from disk
  instead of compiling it again. Executables that compile faster than
  `min_compile_seconds` are not stored.
  """
  jax.config.update("jax_compilation_cache_dir", str(path))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_seconds)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
