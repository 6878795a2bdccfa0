"""What bigbatch knows about a dataset (`DatasetSpec`), and a split held in memory."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import jax
import numpy as np
import tensorflow as tf


class DataError(ValueError):
  """A dataset that cannot be read as configured; the message says why and what to do."""


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """What bigbatch needs to know about a dataset.

  Attributes:
    tfds_name: the tfds builder's name.
    num_classes: label classes.
    input_shape: one example's model input after preprocessing.
    train_split, eval_split: tfds split names.
    in_memory: small enough to hold as arrays; otherwise read through
      `tfds.data_source` (needs the ArrayRecord file format).
    train_preprocess, eval_preprocess: `fn(example, seed) -> input`, in
      TensorFlow; `seed` is a stateless seed pair unique to the example's
      position in the stream.
    device_normalisation: the per-channel (mean, std) the step normalises
      the inputs with on the device, which then arrive as uint8 pixels; None:
      they arrive normalised, as float32.
    host_preprocess: the same preprocessing in NumPy, `fn(inputs) -> inputs`
      on a whole batch, for a split held in memory whose training examples
      are not augmented; the pipeline then gathers each batch in NumPy, with
      no tf.data threads competing with the step for the cores. None: tf.data.
    input_key, label_key: the features holding an example's input and its
      class (in the pipeline the label is always `label`).
    inputs_dtype: the dtype of a batch's `inputs`, where it is neither float32
      nor uint8 pixels (int32 tokens); None: from `device_normalisation`.
    label_shape: one example's label (`()`: a class; `(T,)`: a sequence's
      next tokens).
    tokens_per_example: the tokens an example holds (T for text), by which the
      token clock counts examples; None: not a token dataset.
    bytes_per_token: the text bytes a token stands for (1.0 for bytes; for a
      tokenizer, the mean over the training split); None: not known.
    token_bytes: for each token id, the UTF-8 bytes it stands for (`tokenizers`),
      from which the loss counts each sequence's bytes for bits per byte; None:
      not known (then `bytes_per_token`, if set, stands for every token).
    num_train_examples: the training split's size, where the spec knows it
      (text: derived from the corpus); None: `dataset.num_train_examples` says.
    features: the source's own features each batch carries besides its inputs and
      labels (`dataset.features`), as `(name, one example's shape, dtype)`.
  """

  tfds_name: str
  num_classes: int
  input_shape: tuple[int, ...]
  train_split: str
  eval_split: str
  in_memory: bool
  train_preprocess: Callable[..., tf.Tensor]
  eval_preprocess: Callable[..., tf.Tensor]
  device_normalisation: tuple[tuple[float, ...], tuple[float, ...]] | None = None
  host_preprocess: Callable[[np.ndarray], np.ndarray] | None = None
  input_key: str = "image"
  label_key: str = "label"
  inputs_dtype: np.dtype | None = None
  label_shape: tuple[int, ...] = ()
  tokens_per_example: int | None = None
  bytes_per_token: float | None = None
  num_train_examples: int | None = None
  features: tuple[tuple[str, tuple[int, ...], str], ...] = ()
  # an array: left out of comparisons and the hash (the tokenizer's name is in the config)
  token_bytes: np.ndarray | None = dataclasses.field(default=None, compare=False, repr=False)

  @property
  def feature_names(self) -> tuple[str, ...]:
    """The extra features' names (`features`)."""
    return tuple(name for name, _, _ in self.features)

  @property
  def model_input_dtype(self) -> np.dtype:
    """The dtype the model is called on: int32 tokens, else float32 (uint8 pixels are
    normalised to float32 on the device first)."""
    return np.dtype(self.inputs_dtype) if self.inputs_dtype is not None else np.dtype(np.float32)

  @property
  def input_dtype(self) -> np.dtype:
    """The dtype of a batch's `inputs` as the pipeline yields them."""
    if self.inputs_dtype is not None:
      return np.dtype(self.inputs_dtype)
    return np.dtype(np.uint8 if self.device_normalisation else np.float32)


def narrow(dtype) -> np.dtype:
  """A feature's dtype as a batch carries it: JAX's (64-bit numbers as 32-bit)."""
  return np.dtype(jax.dtypes.canonicalize_dtype(dtype))


class ArraySource:
  """A split held in memory: inputs and labels by index, and the `extra` features a
  batch carries (`dataset.features`)."""

  def __init__(
    self,
    features: Mapping[str, np.ndarray],
    input_key: str,
    label_key: str = "label",
    extra: tuple[str, ...] = (),
  ):
    self.input_key = input_key
    self.inputs = np.asarray(features[input_key])
    self.labels = np.asarray(features[label_key], np.int32)
    arrays = {name: np.asarray(features[name]) for name in extra}
    self.extra = {name: array.astype(narrow(array.dtype)) for name, array in arrays.items()}
    # eager, shared
    self._tensors = (tf.constant(self.inputs), tf.constant(self.labels))
    self._extra_tensors = {name: tf.constant(array) for name, array in self.extra.items()}

  def __len__(self) -> int:
    return len(self.labels)

  def gather(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The inputs and labels at `indices`, in NumPy."""
    return self.inputs[indices], self.labels[indices]

  def lookup(self, indices: tf.Tensor) -> dict[str, tf.Tensor]:
    """The examples at `indices` (any shape), in TensorFlow."""
    inputs, labels = self._tensors
    out = {self.input_key: tf.gather(inputs, indices), "label": tf.gather(labels, indices)}
    return out | {name: tf.gather(t, indices) for name, t in self._extra_tensors.items()}

  def gather_features(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    """The extra features at `indices`, in NumPy."""
    return {name: array[indices] for name, array in self.extra.items()}
