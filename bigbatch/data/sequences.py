"""Token sequences: a split's flat tokens cut into sequences of T by index, and their spec.

Every language-model source ends here, whatever made its tokens (bytes of a
text corpus, a tokenizer, token files): one flat array of ids per split.
Sequence i is tokens[i*T : i*T + T], its targets the next tokens
tokens[i*T + 1 : i*T + T + 1]. Because a sequence is found by its index
alone, the pipeline can put any sequence at any stream position: the exact
data position, and a bitwise resume across batch changes, hold as for every
other dataset.

A sequence may carry where its documents lie (`dataset.features`), in the
packed form of flax's lm1b and MaxText: `inputs_segmentation`, the document
each token belongs to, numbered from 1 within the sequence and counted up
after each separator, and `inputs_position`, the token's position within its
document (0 at the token after a separator, and at the sequence's start,
where a document may have begun earlier).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import tensorflow as tf

from bigbatch.data.spec import ArraySource, DataError, DatasetSpec

# the features a token source can carry (`dataset.features`)
DOCUMENT_FEATURES = ("inputs_segmentation", "inputs_position")


def document_features(inputs: np.ndarray, separator: int) -> dict[str, np.ndarray]:
  """`inputs_segmentation` and `inputs_position` of token sequences `inputs` [B, T]: each
  token's document (from 1) and its position within the document, a new document
  starting after each `separator`."""
  starts = np.zeros(inputs.shape, np.bool_)
  starts[:, 1:] = inputs[:, :-1] == separator
  segmentation = 1 + np.cumsum(starts, axis=1, dtype=np.int32)
  index = np.broadcast_to(np.arange(inputs.shape[1], dtype=np.int32), inputs.shape)
  first = np.maximum.accumulate(np.where(starts, index, 0), axis=1)
  return {"inputs_segmentation": segmentation, "inputs_position": index - first}


class TokenSource(ArraySource):
  """A split's tokens as sequences: sequence i is tokens[i*T : i*T + T], its labels the
  next tokens tokens[i*T + 1 : i*T + T + 1]. The last token of one sequence is the first
  of the next; the tokens after the last whole sequence (fewer than T) are not read.

  It builds no TensorFlow constant unless `lookup` is called: the pipeline
  gathers text on the host (`DatasetSpec.host_preprocess`).
  """

  def __init__(
    self,
    tokens: np.ndarray,
    sequence_length: int,
    *,
    separator: int | None = None,
    extra: tuple[str, ...] = (),
  ):
    if int(sequence_length) < 1:
      raise ValueError(f"sequence_length: must be >= 1, got {sequence_length}")
    unknown = [name for name in extra if name not in DOCUMENT_FEATURES]
    if unknown or (extra and separator is None):
      raise DataError(
        f"dataset.features: a token source carries only {', '.join(DOCUMENT_FEATURES)} "
        f"(from its separator), not {', '.join(unknown) or 'without a separator'}"
      )
    self.separator, self.extra_names = separator, tuple(extra)
    self.tokens = tokens
    self.sequence_length = length = int(sequence_length)
    self.input_key = "tokens"
    self._count = max(0, (len(tokens) - 1) // length)
    step = tokens.strides[0]
    # each sequence with its targets, as rows of one view (no copy of the tokens)
    self._windows = np.lib.stride_tricks.as_strided(
      tokens, shape=(self._count, length + 1), strides=(length * step, step), writeable=False
    )
    self._tensor = None

  def __len__(self) -> int:
    return self._count

  def gather(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The inputs and labels of the sequences at `indices`: int32, [len(indices), T] each."""
    windows = self._windows[np.asarray(indices)].astype(np.int32)
    return np.ascontiguousarray(windows[..., :-1]), np.ascontiguousarray(windows[..., 1:])

  def gather_features(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    """The `dataset.features` of the sequences at `indices` (`document_features`)."""
    if not self.extra_names:
      return {}
    found = document_features(self._windows[np.asarray(indices), :-1], self.separator)
    return {name: found[name] for name in self.extra_names}

  def lookup(self, indices: tf.Tensor) -> dict[str, tf.Tensor]:
    """The sequences at `indices` (any shape), in TensorFlow: `tokens` and `label` (the
    pipeline gathers text on the host, where the document features are)."""
    if self.extra_names:
      raise NotImplementedError("dataset.features of a token source are gathered on the host")
    if self._tensor is None:
      with tf.init_scope():  # eager, shared by every graph tf.data traces
        # int32: TensorFlow gathers no uint16 or uint32 (ids are below 2**31)
        self._tensor = tf.constant(np.asarray(self._windows, np.int32))
    windows = tf.gather(self._tensor, indices)
    return {"tokens": windows[..., :-1], "label": windows[..., 1:]}


def _tokens_tf(example: Mapping[str, tf.Tensor], seed: tf.Tensor) -> tf.Tensor:
  del seed  # no augmentation
  return tf.cast(example["tokens"], tf.int32)


def _tokens_numpy(inputs: np.ndarray) -> np.ndarray:
  return np.asarray(inputs, np.int32)


def sequence_length(block: Mapping[str, Any]) -> int:
  """`dataset.sequence_length`, checked."""
  value = block.get("sequence_length")
  if value is None:
    name = block.get("name")
    raise DataError(f"dataset.sequence_length: missing from the config ({name} needs it)")
  if isinstance(value, bool) or not float(value).is_integer() or value < 1:
    raise DataError(f"dataset.sequence_length: must be a whole number >= 1, got {value!r}")
  return int(value)


def source_of(
  block: Mapping[str, Any], tokens: np.ndarray, split: str, separator: int
) -> TokenSource:
  """`tokens` (the `split` split) as sequences, refused when they hold no whole one; each
  carries the `dataset.features` found from `separator`, the id that ends a document."""
  length = sequence_length(block)
  if len(tokens) < length + 1:
    raise DataError(
      f"dataset.sequence_length: {length:,} is too long: the {split} split of "
      f"{block['name']} holds {len(tokens):,} tokens, and one sequence with its targets "
      f"needs {length + 1:,}"
    )
  return TokenSource(tokens, length, separator=separator, extra=tuple(block.get("features") or ()))


def mean_bytes(table: np.ndarray, tokens: np.ndarray) -> float:
  """The mean of `table` over `tokens`: the text bytes a token of the split stands for."""
  counts = np.zeros(len(table), np.int64)
  for start in range(0, len(tokens), 1 << 24):  # a bounded copy of a memory-mapped split
    counts += np.bincount(tokens[start : start + (1 << 24)], minlength=len(table))[: len(table)]
  return float(counts @ table.astype(np.int64) / max(len(tokens), 1))


def sequence_spec(
  tfds_name: str,
  length: int,
  vocab_size: int,
  num_train_examples: int,
  token_bytes: np.ndarray | None,
  bytes_per_token: float | None,
  features: tuple[str, ...] = (),
) -> DatasetSpec:
  """The spec of a dataset of token sequences of `length`.

  Args:
    tfds_name: what the spec calls the dataset.
    length: T, the tokens of a sequence.
    vocab_size: the vocabulary (the model's classes).
    num_train_examples: the training split's sequences.
    token_bytes: for each id, the text bytes it stands for (bits per byte
      come from them); None: not known (token files without their tokenizer).
    bytes_per_token: the mean of those over the training split (1.0 for bytes).
    features: the document features each sequence carries (`DOCUMENT_FEATURES`).
  """
  return DatasetSpec(
    tfds_name,
    int(vocab_size),
    (length,),
    "train",
    "validation",
    True,
    _tokens_tf,
    _tokens_tf,  # the same function: not augmented, so the pipeline gathers on the host
    host_preprocess=_tokens_numpy,
    input_key="tokens",
    inputs_dtype=np.dtype(np.int32),
    label_shape=(length,),
    tokens_per_example=length,
    bytes_per_token=bytes_per_token,
    num_train_examples=num_train_examples,
    token_bytes=token_bytes,
    features=tuple((name, (length,), np.dtype(np.int32).str) for name in features),
  )


@contextlib.contextmanager
def npy_written_atomically(path: str, dtype: Any, total: int) -> Iterator[np.ndarray]:
  """A `.npy` memmap of `total` elements to fill, which appears at `path` only when the
  block ends without an error: written through a temporary file, so that a killed build
  never leaves a partial one under the name later runs read."""
  temporary = f"{path}.{os.getpid()}.{uuid.uuid4().hex}.tmp.npy"
  try:
    out = np.lib.format.open_memmap(temporary, mode="w+", dtype=dtype, shape=(total,))
    yield out
    out.flush()
    del out
    os.replace(temporary, path)
  finally:
    if os.path.exists(temporary):
      os.remove(temporary)
