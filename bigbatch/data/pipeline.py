"""The input pipeline: batches of any size from a position in the example stream.

Training reads one endless stream of examples: epoch after epoch, each in
the order `epoch_permutation(seed, epoch, N)`. A batch of B examples at
position p (counted in examples since the start of training) holds stream
positions p, ..., p + B - 1. Because the position, not the step, is what
the pipeline follows, the batch size can change at a phase boundary and a
resumed run can start anywhere without skipping or repeating an example.

With several processes, each reads only its own block of every global
batch (`sharding.process_batch_slice`), and the trainer assembles the global
batch from the blocks.

Both sources get one request per batch: an in-memory split gathers the
batch's indices in the graph, a split in ArrayRecord files (ImageNet) reads
the batch's raw records in a reader process (`records.RecordSource`). Each
example's preprocessing then runs in tf.data's threads, seeded by its position.
An in-memory split that is not augmented and has a NumPy twin of its
preprocessing (MNIST-1D) skips tf.data: a batch is one NumPy gather in the
trainer's thread, which costs microseconds, where tf.data's threads took a
core from the step (about 3 ms of a 3 ms step at batch 128 on 2 cores).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import tensorflow as tf

from bigbatch.data import allocator
from bigbatch.data.datasets import ArraySource, DatasetSpec
from bigbatch.data.records import RecordSource

Source = ArraySource | RecordSource


def epoch_permutation(seed: int, epoch: int, size: int) -> np.ndarray:
  """The order of the `size` examples in `epoch`: a function of (seed, epoch) only."""
  return np.random.default_rng([seed, epoch]).permutation(size)


class _StreamIndex:
  """Maps stream positions to example indices, keeping the last epochs' orders."""

  def __init__(self, seed: int, size: int):
    self.seed, self.size = seed, size
    self._orders: dict[int, np.ndarray] = {}

  def _order(self, epoch: int) -> np.ndarray:
    if epoch not in self._orders:
      self._orders = {e: o for e, o in self._orders.items() if e >= epoch - 1}
      self._orders[epoch] = epoch_permutation(self.seed, int(epoch), self.size)
    return self._orders[epoch]

  def __call__(self, positions: np.ndarray) -> np.ndarray:
    epochs, offsets = np.divmod(positions, self.size)
    indices = np.empty_like(positions)
    for epoch in np.unique(epochs):
      chosen = epochs == epoch
      indices[chosen] = self._order(int(epoch))[offsets[chosen]]
    return indices

  def block(self, start: int, count: int) -> np.ndarray:
    """The indices at stream positions start, ..., start + count - 1: slices of at most
    a few epochs' orders (what `__call__` gives for those positions, with far less work
    per batch, which the trainer's thread pays at every step)."""
    parts = []
    while count > 0:
      epoch, offset = divmod(start, self.size)
      take = min(count, self.size - offset)
      parts.append(self._order(epoch)[offset : offset + take])
      start, count = start + take, count - take
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _options() -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True
  options.threading.private_threadpool_size = 0  # tf.data's shared pool
  return options


def _on_host(source: Source, spec: DatasetSpec, preprocess) -> bool:
  """Whether batches are gathered in NumPy: a split in memory, not augmented, with a
  NumPy twin of its preprocessing (`DatasetSpec.host_preprocess`)."""
  return (
    isinstance(source, ArraySource)
    and spec.host_preprocess is not None
    and preprocess is spec.eval_preprocess
  )


def _host_batch(source: ArraySource, spec: DatasetSpec, index: np.ndarray, *, with_index=False):
  """The examples at `index`, preprocessed in NumPy."""
  inputs, labels = source.gather(index)
  batch = {"inputs": spec.host_preprocess(inputs), "labels": labels}
  if spec.features:
    batch |= source.gather_features(index)
  return {**batch, "index": index} if with_index else batch


def train_batches(
  source: Source,
  spec: DatasetSpec,
  *,
  seed: int,
  batch_size: int,
  start_position: int,
  num_steps: int,
  local: slice | None = None,
  prefetch: int = 2,
  with_index: bool = False,
) -> Iterator[dict[str, np.ndarray]]:
  """This process's part of `num_steps` training batches of `batch_size`.

  Args:
    source: the train split.
    spec: the dataset's spec (its training preprocessing).
    seed: the run's data seed (order of each epoch, augmentation).
    batch_size: the global batch size.
    start_position: stream position of the first batch's first example.
    num_steps: batches to yield.
    local: this process's examples of each batch (default: all).
    prefetch: batches prepared ahead.
    with_index: also yield each example's `index` in the split (for tests).

  Yields:
    `{"inputs", "labels"[, "index"]}` NumPy arrays of the local examples, and the
    dataset's `features`.
  """
  local = local or slice(0, batch_size)
  offsets = np.arange(local.start, local.stop, dtype=np.int64)
  stream = _StreamIndex(seed, len(source))

  def positions():
    for step in range(num_steps):
      where = start_position + step * batch_size + offsets
      yield stream(where), where

  signature = (tf.TensorSpec([len(offsets)], tf.int64), tf.TensorSpec([len(offsets)], tf.int64))

  def example(features, index, position):
    # one stateless seed pair per example: (run seed, stream position)
    seed_pair = tf.stack([tf.fill(tf.shape(position), tf.constant(seed, tf.int64)), position], -1)
    inputs = spec.train_preprocess(features, seed_pair)
    out = {"inputs": inputs, "labels": tf.cast(features["label"], tf.int32)}
    out |= {name: features[name] for name in spec.feature_names}
    if with_index:
      out["index"] = index
    return out

  if isinstance(source, RecordSource):
    yield from source.batches(
      positions(), signature, example, options=_options(), prefetch=prefetch
    )
    return
  if _on_host(source, spec, spec.train_preprocess):  # this process's examples are contiguous
    for step in range(num_steps):
      index = stream.block(start_position + step * batch_size + local.start, len(offsets))
      yield _host_batch(source, spec, index, with_index=with_index)
    return
  ds = tf.data.Dataset.from_generator(positions, output_signature=signature)

  def lookup(index, position):
    return example(source.lookup(index), index, position)

  if spec.train_preprocess is not spec.eval_preprocess:  # augments: per example
    ds = ds.unbatch().map(lookup, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(len(offsets), drop_remainder=True)
  else:  # no augmentation: gather whole batches
    ds = ds.map(lookup, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.with_options(_options()).prefetch(prefetch)
  yield from allocator.numpy_iterator(ds)


def eval_batches(
  source: Source,
  spec: DatasetSpec,
  *,
  batch_size: int,
  local: slice | None = None,
  prefetch: int = 2,
  num_examples: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
  """The whole eval split in order, in global batches of `batch_size`.

  The last batch is padded and `mask` marks the real examples (1) from the
  padding (0), so nothing is dropped and sums over `mask` are exact.
  `num_examples` keeps only the first that many examples of `source` (e.g. a
  fixed subset of the training split, evaluated without augmentation).

  Yields:
    `{"inputs", "labels", "mask"}` NumPy arrays of this process's examples, and the
    dataset's `features`.
  """
  local = local or slice(0, batch_size)
  size = len(source) if num_examples is None else min(len(source), num_examples)
  steps = -(-size // batch_size)
  offsets = np.arange(local.start, local.stop, dtype=np.int64)

  def positions():
    for step in range(steps):
      where = step * batch_size + offsets
      yield np.minimum(where, size - 1), (where < size).astype(np.int32)

  signature = (tf.TensorSpec([len(offsets)], tf.int64), tf.TensorSpec([len(offsets)], tf.int32))

  def example(features, index, mask):
    del index
    inputs = spec.eval_preprocess(features, tf.zeros([2], tf.int64))
    out = {"inputs": inputs, "labels": tf.cast(features["label"], tf.int32), "mask": mask}
    return out | {name: features[name] for name in spec.feature_names}

  if isinstance(source, RecordSource):
    yield from source.batches(
      positions(), signature, example, options=_options(), prefetch=prefetch
    )
    return
  if _on_host(source, spec, spec.eval_preprocess):
    for index, mask in positions():
      yield {**_host_batch(source, spec, index), "mask": mask}
    return
  ds = tf.data.Dataset.from_generator(positions, output_signature=signature)
  ds = ds.unbatch().map(
    lambda index, mask: example(source.lookup(index), index, mask),
    num_parallel_calls=tf.data.AUTOTUNE,
  )
  ds = ds.batch(len(offsets), drop_remainder=True).with_options(_options()).prefetch(prefetch)
  yield from allocator.numpy_iterator(ds)


def example_batch(spec: DatasetSpec) -> Mapping[str, Any]:
  """Per-example shapes and dtypes of a training batch (for compiling the step).

  ImageNet's inputs are uint8 (`DatasetSpec.device_normalisation`), text's int32
  tokens with a label per position (`DatasetSpec.label_shape`): the executables
  compiled from this take the batches the pipeline yields as they are.
  """
  import jax
  import jax.numpy as jnp

  return {
    "inputs": jax.ShapeDtypeStruct(spec.input_shape, spec.input_dtype),
    "labels": jax.ShapeDtypeStruct(spec.label_shape, jnp.int32),
    **{name: jax.ShapeDtypeStruct(shape, dtype) for name, shape, dtype in spec.features},
  }
