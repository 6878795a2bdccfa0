"""Checkpoints in the workdir, with orbax-checkpoint, verified on restore.

A checkpoint holds the train state (parameters, optimizer state, batch-norm
statistics, step) and a JSON record: the step, the data position in
examples, the seed, the config, the plan, the run's time so far and a
fingerprint of every array of the state. Saves are asynchronous; the last
`keep` are kept. Restoring takes explicit target shardings, so a run saved on
8 devices resumes on 4.

Orbax's format does not check what it reads: a flipped byte in an array's
chunk can restore without complaint, and the damage is then blamed on
training. So every save records a fingerprint of each array, computed on the
devices from its bits (see `fingerprint`), and every restore recomputes it:
a mismatch is reported as corruption, naming the array.

A save that fails (disk full, directory gone or read-only) leaves orbax's
background threads waiting forever, so `Checkpoints` turns the failure into a
`CheckpointSaveError`, stops waiting on them, and the command line exits at
once (see `bigbatch.cli`); the checkpoints saved before are left as they were.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import pathlib
import re
import sys
import traceback
import types
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from bigbatch.step.compiled import abstract_state  # re-exported: restore targets are built with it
from bigbatch.step.finite import path_name
from bigbatch.workdir import faults

# Config fields that a checkpoint is tied to: a run that changes one of them
# cannot continue from it.
BINDING_FIELDS = (
  "model",
  "dataset.name",
  "dataset.source",
  "dataset.num_train_examples",
  "dataset.sequence_length",
  "dataset.text_dir",
  "dataset.tokenizer",
  "dataset.token_dir",
  "optimizer.name",  # a built-in's name, or a factory's import path
  "optimizer.options",  # a factory's keyword arguments (a built-in's fields are flat)
  "optimizer.clip_norm",  # clipping keeps counts in the optimizer's state
  "optimizer.decay_mask",  # which parameters the run decayed
  "plan.adam_rule",
  "ghost_batch_size",
  "loss",
)
# What a field reads as in a checkpoint written before it existed: such a run used it.
BINDING_DEFAULTS = {
  "loss": "cross_entropy",
  "dataset.tokenizer": "bytes",
  "optimizer.decay_mask": "all",  # before the field, every parameter was decayed
}


__all__ = [
  "BINDING_DEFAULTS",
  "BINDING_FIELDS",
  "CheckpointError",
  "CheckpointSaveError",
  "Checkpoints",
  "CorruptCheckpointError",
  "NonFiniteCheckpointError",
  "abstract_state",
  "fingerprint",
]


class CheckpointError(ValueError):
  """A checkpoint that this run cannot continue from; the message says why."""


class CorruptCheckpointError(CheckpointError):
  """A checkpoint that cannot be read back as it was written."""


class NonFiniteCheckpointError(CheckpointError):
  """A checkpoint read back as written, but holding NaNs or infinities: saved by a run
  from before every state was checked finite, which went on past its divergence."""


class CheckpointSaveError(CheckpointError):
  """A save that failed; the run cannot go on without losing its progress."""


def _field(config: Mapping[str, Any], path: str) -> Any:
  node: Any = config
  for part in path.split("."):
    if not hasattr(node, "keys") or part not in node:  # a dict or a ConfigDict
      return None
    node = node[part]
  return node.to_dict() if hasattr(node, "to_dict") else node


def _binding(config: Mapping[str, Any], path: str) -> Any:
  """A binding field's value, or what it meant before the field existed."""
  value = _field(config, path)
  return BINDING_DEFAULTS.get(path) if value is None else value


def _normalise(value: Any) -> Any:
  return json.loads(json.dumps(value, sort_keys=True, default=str))


def _cause(error: BaseException) -> str:
  """The innermost reason of an orbax or tensorstore error, on one line."""
  while error.__cause__ is not None or error.__context__ is not None:
    error = error.__cause__ or error.__context__
  text = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
  code = re.search(r"os_error_code='(\d+)'", text)  # tensorstore's wrapped OSError
  if code:
    return f"OSError: [Errno {code.group(1)}] {os.strerror(int(code.group(1)))}"
  text = text.split(" [tensorstore_spec=")[0]
  return f"{type(error).__name__}: {text[:300]}"


def _bits(leaf: jax.Array) -> jax.Array:
  """The bits of every element of `leaf` as uint32 (wider elements give two)."""
  if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
    leaf = jax.random.key_data(leaf)
  if leaf.dtype == jnp.bool_:
    return leaf.astype(jnp.uint32)
  unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[leaf.dtype.itemsize]
  return jax.lax.bitcast_convert_type(leaf, unsigned).astype(jnp.uint32)


def _leaf_fingerprint(leaf: jax.Array) -> jax.Array:
  """sum_i mix(bits_i) * w_i mod 2^32, with odd weights w_i that depend on the position i.

  Integer sums are exact in any order, so the value does not depend on how the
  array is sharded or on how many devices hold it. `mix` (a multiply by an
  odd constant, then an xor-shift) is a bijection of uint32 that spreads the
  bits of a float's mantissa, and an odd weight is invertible mod 2^32, so a
  change of any one element always changes the sum; several changes escape
  with probability about 2^-32.
  """
  bits = _bits(leaf) * jnp.uint32(0x9E3779B1)
  bits = bits ^ (bits >> 15)
  index = jnp.zeros(bits.shape, jnp.uint32)
  stride = 1
  for axis in reversed(range(bits.ndim)):
    iota = jax.lax.broadcasted_iota(jnp.uint32, bits.shape, axis)
    index = index + iota * jnp.uint32(stride % 2**32)
    stride *= bits.shape[axis]
  weights = (index * jnp.uint32(2654435761)) | jnp.uint32(1)
  return jnp.sum(bits * weights, dtype=jnp.uint32)


_fingerprints = jax.jit(lambda tree: jax.tree.map(_leaf_fingerprint, tree))


def fingerprint(state: Any) -> dict[str, str]:
  """A fingerprint of every array of `state`, by its path (e.g. `params/Conv_0/kernel`)."""
  values = jax.device_get(_fingerprints(state))
  flat, _ = jax.tree_util.tree_flatten_with_path(values)
  return {path_name(path): f"{int(value):08x}" for path, value in flat}


def _abandoned_read(unraisable: Any) -> bool:
  """Whether an unraisable error is the end of a read that orbax abandoned.

  Orbax reads a checkpoint's arrays concurrently, in an event loop that it
  closes as soon as one read fails. The reads still in flight are left
  behind, and end later, each in one of two ways that Python reports as an
  unraisable error with a long traceback, after bigbatch's one line and often
  at exit: the garbage collector closes the suspended read, which raises from
  its own `except BaseException` ("Exception ignored in: <coroutine ...>"), or
  TensorStore completes it and its callback finds the loop closed
  ("RuntimeError: Event loop is closed"). (A third way: `_AbandonedTasks`.)
  """
  code = getattr(unraisable.object, "cr_code", None)
  if isinstance(unraisable.object, types.CoroutineType) and "orbax" in code.co_filename:
    return True
  error = unraisable.exc_value
  if not (isinstance(error, RuntimeError) and str(error) == "Event loop is closed"):
    return False
  frames = traceback.extract_tb(unraisable.exc_traceback)
  return bool(frames) and frames[0].name == "call_soon_threadsafe"


def _quiet_abandoned_reads(hook: Callable[[Any], None]) -> Callable[[Any], None]:
  """`hook`, with the ends of abandoned reads (`_abandoned_read`) sent to the libraries'
  log instead: a broken checkpoint is one line on the terminal, whenever they end."""

  def quiet(unraisable: Any) -> None:
    if _abandoned_read(unraisable):
      logging.getLogger("bigbatch.libraries").debug(
        "an abandoned checkpoint read ended: %r", unraisable.exc_value
      )
    else:
      hook(unraisable)

  quiet.quiets_abandoned_reads = True
  return quiet


class _AbandonedTasks(logging.Filter):
  """The third way an abandoned read ends: a read that failed too, whose task asyncio
  finds unretrieved when it is collected ("Task exception was never retrieved", an
  error record of the `asyncio` logger). Sent to the libraries' log as the others."""

  def filter(self, record: logging.LogRecord) -> bool:
    message = record.getMessage()
    if "exception was never retrieved" in message and "orbax" in message:
      logging.getLogger("bigbatch.libraries").debug("%s", message.splitlines()[0])
      return False
    return True


if not getattr(sys.unraisablehook, "quiets_abandoned_reads", False):
  sys.unraisablehook = _quiet_abandoned_reads(sys.unraisablehook)
if not any(isinstance(f, _AbandonedTasks) for f in logging.getLogger("asyncio").filters):
  logging.getLogger("asyncio").addFilter(_AbandonedTasks())


class Checkpoints:
  """The checkpoints of one workdir.

  Args:
    directory: where checkpoints live (`WORKDIR/checkpoints`).
    keep: how many of the latest to keep.
    async_save: write in a background thread (the step loop only waits for
      the device-to-host copy).
  """

  def __init__(self, directory: str | pathlib.Path, *, keep: int = 3, async_save: bool = True):
    self.directory = pathlib.Path(directory).absolute()
    self._failed = False
    self._in_flight: int | None = None
    try:
      self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
          max_to_keep=keep, create=True, enable_async_checkpointing=async_save
        ),
        item_names=("state", "record"),
      )
    except OSError as error:
      raise CheckpointError(f"{self.directory}: cannot be used: {_cause(error)}") from None

  def all_steps(self) -> list[int]:
    """The steps of the complete checkpoints, oldest first."""
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    """The step of the newest complete checkpoint, or None."""
    return self._manager.latest_step()

  def path(self, step: int) -> pathlib.Path:
    return self.directory / str(step)

  def save(self, step: int, state: Any, record: Mapping[str, Any], *, fault: str = "save") -> None:
    """Saves `state` and the JSON `record` as checkpoint `step` (no-op if it exists).

    `fault` names the `bigbatch.workdir.faults` point reached once the save is issued.

    Raises:
      CheckpointSaveError: naming the directory and the cause, if this save
        (or the previous one, still in flight) failed.
    """
    if step in self._manager.all_steps():
      return
    record = {**_normalise(record), "fingerprint": fingerprint(state)}
    previous, self._in_flight = self._in_flight, step
    try:
      self._manager.save(
        step,
        args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), record=ocp.args.JsonSave(record)
        ),
        force=True,
      )
    except Exception as error:  # whatever orbax raised, the save is lost
      # a failure of the save still in flight surfaces here, at the next one
      unfinished = previous is not None and previous not in self._manager.all_steps()
      raise self._save_failed(previous if unfinished else step, error) from None
    faults.point(fault, step)

  def _save_failed(self, step: int | None, error: BaseException) -> CheckpointSaveError:
    self._failed = True
    kept = [s for s in self.all_steps() if s != step]
    where = f"the checkpoints at steps {kept} are kept" if kept else "no checkpoint was saved yet"
    return CheckpointSaveError(
      f"saving the checkpoint at step {step} in {self.directory} failed: {_cause(error)}; {where}"
    )

  def record(self, step: int) -> dict[str, Any]:
    """The JSON record of checkpoint `step`.

    Raises:
      CorruptCheckpointError: if it cannot be read.
    """
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(record=ocp.args.JsonRestore()))
      record = restored["record"]
      if not isinstance(record, Mapping) or record.get("step") != step:
        raise ValueError(f"the record does not describe step {step}")
    except Exception as error:  # any failure to read is a broken checkpoint
      raise CorruptCheckpointError(
        f"{self.path(step)}: its record cannot be read ({_cause(error)})"
      ) from None
    return dict(record)

  def restore(self, step: int, target: Any) -> Any:
    """The state of checkpoint `step`, placed like `target`, checked against its fingerprint.

    Args:
      step: which checkpoint.
      target: the state's abstract form (`jax.ShapeDtypeStruct`s with the
        shardings wanted now, which may be on another number of devices).

    Raises:
      CorruptCheckpointError: naming the checkpoint (and the array), if it
        cannot be read or does not match what was written.
    """
    expected = self.record(step).get("fingerprint")
    failure = None
    try:
      restored = self._manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
      )
      state = restored["state"]
    except Exception as error:  # any failure to read is a broken checkpoint
      # made here, raised below: raised in this block it would keep orbax's error, and
      # through its traceback the reads still pending, alive as its context
      failure = CorruptCheckpointError(
        f"{self.path(step)}: its state cannot be read ({_cause(error)})"
      )
    if failure is not None:
      gc.collect()  # the reads it abandoned that are garbage already end now (quietly)
      raise failure
    if expected is not None:
      actual = fingerprint(state)
      for name, value in expected.items():
        if actual.get(name) != value:
          raise CorruptCheckpointError(
            f"{self.path(step)}: {name} does not match the checksum saved with it "
            f"({actual.get(name)} != {value}); the checkpoint is corrupt"
          )
    return state

  def check_compatible(
    self, step: int, config: Mapping[str, Any], *, skip: tuple[str, ...] = ()
  ) -> dict[str, Any]:
    """The record of checkpoint `step`, if `config` may continue from it.

    `skip`: binding fields not compared (those a config leaves to be filled in
    from the data, before they are known).

    Raises:
      CheckpointError: naming the first binding field the config changed.
    """
    record = self.record(step)
    saved = record.get("config", {})
    for path in (p for p in BINDING_FIELDS if p not in skip):
      before, now = (_normalise(_binding(c, path)) for c in (saved, config))
      if before != now:
        raise CheckpointError(
          f"{path}: the checkpoint at step {step} in {self.directory} was written with "
          f"{before!r}, the config now has {now!r}; use another --workdir, or set it back"
        )
    return record

  def wait(self) -> None:
    """Blocks until every save has reached the disk.

    Raises:
      CheckpointSaveError: if a save in flight failed.
    """
    if self._failed:
      return
    try:
      self._manager.wait_until_finished()
    except Exception as error:
      raise self._save_failed(self._in_flight, error) from None

  def close(self) -> None:
    """Waits for the saves in flight and closes; after a failed save, only lets go.

    Raises:
      CheckpointSaveError: if a save in flight failed.
    """
    if self._failed:  # orbax's threads wait on a signal that never comes: leave them
      return
    self.wait()
    self._manager.close()
