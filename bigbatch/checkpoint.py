"""Checkpoints in the workdir, with orbax-checkpoint.

A checkpoint holds the train state (parameters, optimizer state, batch-norm
statistics, step) and a JSON record: the step, the data position in
examples, the seed, the config and the plan. Saves are asynchronous; the
last `keep` are kept. Restoring takes explicit target shardings, so a run
saved on 8 devices resumes on 4.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Mapping
from typing import Any

import orbax.checkpoint as ocp

from bigbatch.step import abstract_state  # re-exported: restore targets are built with it

# Config fields that a checkpoint is tied to: a run that changes one of them
# cannot continue from it.
BINDING_FIELDS = (
  "model",
  "dataset.name",
  "dataset.num_train_examples",
  "optimizer.name",
  "ghost_batch_size",
)


__all__ = ["BINDING_FIELDS", "CheckpointError", "Checkpoints", "abstract_state"]


class CheckpointError(ValueError):
  """A checkpoint that this run cannot continue from; the message says why."""


def _field(config: Mapping[str, Any], path: str) -> Any:
  node: Any = config
  for part in path.split("."):
    if not hasattr(node, "keys") or part not in node:  # a dict or a ConfigDict
      return None
    node = node[part]
  return node.to_dict() if hasattr(node, "to_dict") else node


def _normalise(value: Any) -> Any:
  return json.loads(json.dumps(value, sort_keys=True, default=str))


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
    self._manager = ocp.CheckpointManager(
      self.directory,
      options=ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=async_save
      ),
      item_names=("state", "record"),
    )

  def latest_step(self) -> int | None:
    """The step of the newest complete checkpoint, or None."""
    return self._manager.latest_step()

  def save(self, step: int, state: Any, record: Mapping[str, Any]) -> None:
    """Saves `state` and the JSON `record` as checkpoint `step` (no-op if it exists)."""
    if step in self._manager.all_steps():
      return
    self._manager.save(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), record=ocp.args.JsonSave(_normalise(record))
      ),
      force=True,
    )

  def record(self, step: int) -> dict[str, Any]:
    """The JSON record of checkpoint `step`."""
    restored = self._manager.restore(step, args=ocp.args.Composite(record=ocp.args.JsonRestore()))
    return dict(restored["record"])

  def restore(self, step: int, target: Any) -> Any:
    """The state of checkpoint `step`, placed like `target`.

    Args:
      step: which checkpoint.
      target: the state's abstract form (`jax.ShapeDtypeStruct`s with the
        shardings wanted now, which may be on another number of devices).
    """
    restored = self._manager.restore(
      step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
    )
    return restored["state"]

  def check_compatible(self, step: int, config: Mapping[str, Any]) -> dict[str, Any]:
    """The record of checkpoint `step`, if `config` may continue from it.

    Raises:
      CheckpointError: naming the first binding field the config changed.
    """
    record = self.record(step)
    saved = record.get("config", {})
    for path in BINDING_FIELDS:
      before, now = _normalise(_field(saved, path)), _normalise(_field(config, path))
      if before != now:
        raise CheckpointError(
          f"{path}: the checkpoint at step {step} in {self.directory} was written with "
          f"{before!r}, the config now has {now!r}; use another --workdir, or set it back"
        )
    return record

  def wait(self) -> None:
    """Blocks until every save has reached the disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
