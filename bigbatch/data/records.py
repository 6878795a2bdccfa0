"""Splits read by index from ArrayRecord files (ImageNet): per batch, off the trainer's GIL.

A training host must keep its cores decoding JPEGs, and Python in the training
process must not be what limits it: whatever holds the GIL there caps one
process at 1 / (GIL time per example) examples/s, however many cores the host
has. So the training process does O(1) Python work per *batch*:

1. For each batch, the pipeline sends the batch's indices (in stream order) to
   a reader process (`record_reader.py`, round robin), one request per batch,
   a few batches ahead. The reader reads the records, finds each one's encoded
   image and label, and writes the images to files in a scratch directory of
   their own (under /dev/shm where it has room), then answers with the labels.
2. tf.data reads each image file (one copy, in C++, without the GIL) and
   preprocesses it (decoding only its crop) in its threads.
3. Once the batch has been delivered, the next request tells a reader to
   delete its directory.

Reader processes rather than threads, because reading records in Python holds
the GIL (about 0.45 ms an example when every example went through one
`tf.numpy_function` that also decoded it); files rather than a pipe, because
bytes that arrive through a pipe arrive in Python; one file per image, because
cutting a batch's file into records (`tf.strings.substr`) and parsing them
(`tf.io.parse_example`) copied every image twice more in the training process.
tf.data itself cannot read ArrayRecord, and TFRecord files cannot be read by index.
"""

from __future__ import annotations

import collections
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from bigbatch.data import allocator

READER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "record_reader.py")


def default_readers() -> int:
  """One reader process per 12 cores this process may use (at least one).

  Measured on one core: a reader reads a ~110 KB record and writes its image
  in about 0.13 ms, while decoding and preprocessing it takes about 1.7 ms, so
  one reader keeps up with about 12 cores decoding (docs/BENCHMARKS.md).
  """
  return max(1, -(-len(os.sched_getaffinity(0)) // 12))


def _scratch_root(need: int = 2 << 30) -> str:
  """/dev/shm (memory) when it has `need` bytes free, else the temporary directory."""
  try:
    stat = os.statvfs("/dev/shm")
    if os.access("/dev/shm", os.W_OK) and stat.f_bavail * stat.f_frsize >= need:
      return "/dev/shm"
  except OSError:
    pass
  return tempfile.gettempdir()


class Readers:
  """Reader processes, each answering its requests in order; request `key` goes to
  reader `key % count`, so replies are collected in the order the keys were sent."""

  # a pipeline left unfinished is closed while the interpreter exits, when this
  # module's globals may already be gone
  _rmtree = staticmethod(shutil.rmtree)

  def __init__(self, shards: Sequence[tuple[str, int, int]], image_key: str, count: int):
    self.directory = tempfile.mkdtemp(prefix="bigbatch-records-", dir=_scratch_root())
    self.processes: list[subprocess.Popen] = []
    self.delivered: collections.deque[int] = collections.deque()
    try:
      for _ in range(count):
        process = subprocess.Popen(
          [sys.executable, READER],
          stdin=subprocess.PIPE,
          stdout=subprocess.PIPE,
          start_new_session=True,  # the trainer, not a terminal's Ctrl-C, stops it
        )
        self.processes.append(process)
        self._send(process, (list(shards), image_key))
    except BaseException:
      self.close()
      raise

  def __enter__(self) -> Readers:
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def path(self, key: int) -> str:
    """Request `key`'s directory: its i-th image is the file `i` in it."""
    return os.path.join(self.directory, str(key))

  def _send(self, process: subprocess.Popen, message: Any) -> None:
    try:
      pickle.dump(message, process.stdin, protocol=pickle.HIGHEST_PROTOCOL)
      process.stdin.flush()
    except BrokenPipeError:
      raise self._died(process) from None

  def _died(self, process: subprocess.Popen) -> RuntimeError:
    return RuntimeError(f"record reader process {process.pid} exited ({process.poll()})")

  def submit(self, key: int, indices: np.ndarray) -> None:
    """Asks for the images at `indices` in `path(key)`; the delivered batches' go."""
    done = []
    while self.delivered:
      done.append(self.path(self.delivered.popleft()))
    self._send(self.processes[key % len(self.processes)], (self.path(key), indices, done))

  def receive(self, key: int) -> np.ndarray:
    """The labels of request `key` (the next reply of its reader)."""
    process = self.processes[key % len(self.processes)]
    try:
      reply = pickle.load(process.stdout)
    except EOFError:
      raise self._died(process) from None
    if isinstance(reply, tuple):
      raise RuntimeError(f"record reader process {process.pid} failed:\n{reply[1]}")
    return reply

  def release(self, key: int) -> None:
    """Request `key`'s batch has been delivered: a later request deletes its files."""
    self.delivered.append(key)

  def close(self) -> None:
    for process in self.processes:
      if process.stdin and not process.stdin.closed:
        try:
          process.stdin.close()  # a reader ends at the end of its input
        except BrokenPipeError:
          pass
    for process in self.processes:
      try:
        process.wait(timeout=10)
      except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
      if process.stdout:
        process.stdout.close()
    self.processes = []
    self._rmtree(self.directory, ignore_errors=True)


class RecordSource:
  """A split in ArrayRecord files, read by index one batch at a time.

  Args:
    shards: `(filename, skip, take)` for each file, in the split's order.
    input_key: the feature holding the encoded image.
    readers: reader processes per pipeline (default: `default_readers()`).
  """

  def __init__(
    self, shards: Sequence[tuple[str, int, int]], input_key: str, readers: int | None = None
  ):
    self.shards = [(os.fspath(name), int(skip), int(take)) for name, skip, take in shards]
    self.input_key = input_key
    self.readers = readers or default_readers()
    self._size = sum(take for _, _, take in self.shards)

  @classmethod
  def from_tfds(cls, data_source: Any, input_key: str) -> RecordSource:
    """The files behind a `tfds.data_source` (its split's file instructions)."""
    instructions = data_source.dataset_info.splits[data_source.split].file_instructions
    return cls([(i.filename, i.skip, i.take) for i in instructions], input_key)

  def __len__(self) -> int:
    return self._size

  def batches(
    self,
    requests: Iterator[tuple[np.ndarray, ...]],
    signature: Sequence[tf.TensorSpec],
    example: Callable[..., dict[str, tf.Tensor]],
    *,
    options: tf.data.Options,
    prefetch: int,
  ) -> Iterator[dict[str, np.ndarray]]:
    """`example(features, *columns)` over each batch `(indices, *columns)` of `requests`.

    `signature` describes one batch's `(indices, *columns)`; every batch has
    the same size. Yields the batches as NumPy arrays, in order.
    """
    size = signature[0].shape[0]
    with Readers(self.shards, self.input_key, self.readers) as readers:
      ahead = len(readers.processes) + 1  # requests in flight: no reader waits for work

      def files():
        pending = collections.deque()
        for key, (indices, *columns) in enumerate(requests):
          readers.submit(key, indices)
          pending.append((key, indices, columns))
          while len(pending) > ahead:
            yield collect(pending.popleft())
        while pending:
          yield collect(pending.popleft())

      def collect(item):
        key, indices, columns = item
        return (readers.path(key), readers.receive(key), indices, *columns)

      def read(directory, label, index, *columns):
        # the batch's directory, and the example's place in the batch: its file
        path = tf.strings.join([directory, tf.strings.as_string(index[0])], "/")
        features = {self.input_key: tf.io.read_file(path), "label": label}
        return example(features, index[1], *columns)

      head = (tf.TensorSpec([], tf.string), tf.TensorSpec([size], tf.int64))
      ds = tf.data.Dataset.from_generator(files, output_signature=(*head, *signature))
      slots = tf.range(size, dtype=tf.int64)
      ds = ds.map(
        lambda d, labels, indices, *c: (
          tf.fill([size], d),
          labels,
          tf.stack([slots, indices], 1),
          *c,
        )
      )
      ds = ds.unbatch().map(read, num_parallel_calls=tf.data.AUTOTUNE)
      ds = ds.batch(size, drop_remainder=True).with_options(options).prefetch(prefetch)
      iterator = allocator.numpy_iterator(ds)
      try:
        for key, batch in enumerate(iterator):
          readers.release(key)
          yield batch
      finally:
        del iterator  # stop tf.data before its readers go
