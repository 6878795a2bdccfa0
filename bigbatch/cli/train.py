"""`bigbatch train`: a config's plan, trained and evaluated in a workdir."""

from __future__ import annotations

import dataclasses
import os
import pathlib
import shlex
import sys
import threading

from absl import flags

from bigbatch.cli import args


def _define(values) -> None:
  """`bigbatch train`'s own flags, beside --config."""
  flags.DEFINE_string(
    "workdir", None, "checkpoints, metrics and summary (default: workdir/CONFIG)",
    flag_values=values,
  )  # fmt: skip
  flags.DEFINE_bool("progress", True, "show a progress bar", flag_values=values)
  flags.DEFINE_bool(
    "until_phase_end",
    False,
    "stop where the next phase wants more devices than this run has "
    "(elastic.until_phase_end; exit status 75)",
    flag_values=values,
  )


def train(argv: list[str]) -> int:
  from bigbatch import data, sharding
  from bigbatch import workdir as workdir_lib
  from bigbatch.config import ConfigError, read
  from bigbatch.data import progress as data_progress
  from bigbatch.recipe import DEFAULT_RECIPE
  from bigbatch.workdir import checkpoint

  if args.config_path(argv) is None:  # MNIST-1D, increasing batch size, on CPU
    argv = ["--config", DEFAULT_RECIPE, *argv]

  values = args.parse("train", argv, _define)
  if not values.progress:  # tfds draws its own bars while it generates a dataset
    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()
    data_progress.show(False)  # and the corpus tokenizer's
  workdir = values.workdir or os.path.join("workdir", pathlib.Path(args.config_path(argv)).stem)
  known = (
    ConfigError,
    data.DataError,
    sharding.ShardingError,
    checkpoint.CheckpointError,
    workdir_lib.WorkdirError,
  )
  try:
    spec = read(values.config)
    if values.until_phase_end:  # the spec's own field, set from the flag (and checked)
      spec = spec.replace(elastic=dataclasses.replace(spec.elastic, until_phase_end=True))
    path = workdir_lib.prepare(workdir)
    sharding.initialize_distributed(spec.distributed)  # before anything touches a device
  except known as error:
    return args.fail("train", str(error))
  from bigbatch.train import NonFiniteLossError, train_and_evaluate

  with _LibraryLog(path) as library:
    try:
      summary = train_and_evaluate(spec, workdir, progress=values.progress)
    except NonFiniteLossError as error:
      print(f"bigbatch train: stopped: {error}", file=sys.stderr)
      return 1
    except checkpoint.CheckpointSaveError as error:
      print(f"bigbatch train: stopped: {error}", file=sys.stderr)
      library.close()
      _exit_now(EXIT_SAVE_FAILED)
    except known as error:
      library.discard()  # a refused start leaves the workdir as it was
      return args.fail("train", str(error))
  if summary["status"] == "needs_devices":
    print(needs_devices_line(summary, argv), file=sys.stderr)
    return EXIT_NEEDS_DEVICES
  return 0


# Exit statuses of `bigbatch train`: 0 done (or preempted and saved), 1 a
# non-finite loss, 2 bad input (nothing started), 3 a checkpoint save failed, 75 stopped
# at a phase end because the next phase wants more devices (`elastic.until_phase_end`).
EXIT_SAVE_FAILED = 3
EXIT_NEEDS_DEVICES = 75


def needs_devices_line(summary: dict, argv: list[str]) -> str:
  """The one line a run stopped by `elastic.until_phase_end` ends with: what the next
  phase wants, and the command that resumes it."""
  command = shlex.join(["bigbatch", "train", *argv])
  return (
    f"bigbatch train: phase {summary['next_phase']} (batch {summary['next_batch_size']:,}) "
    f"wants {summary['next_devices']} devices, this run has {summary['devices']}: "
    f"checkpointed at step {summary['step']:,}; resume on {summary['next_devices']} "
    f"devices with: {command}"
  )


def _exit_now(status: int) -> None:
  """Ends the process at once, after a failed checkpoint save.

  Orbax's save threads then wait for a signal that never comes, and a normal
  exit joins them forever; a supervisor that restarts a job when it exits
  would wait with it. Everything bigbatch writes is closed by now.
  """
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(status)


class _LibraryLog:
  """The libraries' Python error records (orbax, tfds, absl) and their threads' tracebacks,
  kept in WORKDIR/train.log instead of the terminal.

  The terminal keeps bigbatch's own lines, so that an error is the one line that
  says what went wrong. Records wait in memory and reach the file only when the
  run ends (or their number grows large): a start refused for bad input
  discards them, and so leaves the workdir as it was. Everything is put back
  as it was on exit, so that the command can run again in the same process.
  """

  def __init__(self, workdir: pathlib.Path):
    import logging
    import logging.handlers

    self._logging = logging
    self._file = logging.FileHandler(workdir / "train.log", delay=True)
    self._file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    self._buffer = logging.handlers.MemoryHandler(
      10_000, flushLevel=logging.CRITICAL + 1, target=self._file, flushOnClose=False
    )
    self._buffer.setLevel(logging.ERROR)
    self._closed = False

  def __enter__(self) -> _LibraryLog:
    logging = self._logging
    root = logging.getLogger()
    terminals = (sys.stderr, sys.stdout, sys.__stderr__, sys.__stdout__)
    self._quieted = [
      (handler, handler.level)
      for handler in root.handlers
      if isinstance(handler, logging.StreamHandler) and handler.stream in terminals
    ]
    for handler, _ in self._quieted:
      handler.setLevel(logging.CRITICAL + 1)
    self._root_level = root.level
    root.addHandler(self._buffer)
    if root.level > logging.WARNING or root.level == logging.NOTSET:
      root.setLevel(logging.WARNING)
    library = logging.getLogger("bigbatch.libraries")
    self._hooks = (threading.excepthook, sys.unraisablehook)
    threading.excepthook = lambda hook: library.error(
      "exception in thread %s",
      hook.thread,
      exc_info=(hook.exc_type, hook.exc_value, hook.exc_traceback),
    )
    sys.unraisablehook = lambda hook: library.error(
      "%s: %s", hook.err_msg or "unraisable exception", hook.exc_value
    )
    return self

  def discard(self) -> None:
    self._buffer.buffer.clear()

  def close(self) -> None:
    """Writes what was kept and puts the logging and the hooks back as they were."""
    if self._closed:
      return
    self._closed = True
    threading.excepthook, sys.unraisablehook = self._hooks
    root = self._logging.getLogger()
    root.removeHandler(self._buffer)
    if not root.handlers:
      # A library's background thread (orbax's save, after a full disk) may log after
      # bigbatch's one line: with no handler at all, Python's last resort would print it,
      # traceback and all, on the terminal.
      root.addHandler(self._logging.NullHandler())
    root.setLevel(self._root_level)
    for handler, level in self._quieted:
      handler.setLevel(level)
    self._buffer.flush()
    self._buffer.close()
    self._file.close()

  def __exit__(self, *exc_info) -> None:
    self.close()
