"""A text corpus's splits in a tokenizer's ids: encoded once, cached beside the split.

The byte corpus's tokens are its bytes (`text.split_tokens`). Any other
tokenizer encodes each document of a prepared split, in the listing's order,
and ends it with the tokenizer's separator; the ids are written once, as
uint16 where the vocabulary fits (else uint32), to
`{split}.tokens.{fingerprint}.npy` in the corpus's tfds directory, which later
runs memory-map. The fingerprint is the tokenizer's (a hash of its file's
bytes and the separator), so a changed tokenizer file is encoded anew rather
than read from tokens another one made, and the tokens a run trained on are
the tokens it resumes on. Tokens read back are checked against the tokenizer:
an id past its vocabulary (a cache that is not this tokenizer's) is one line.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds
from tqdm import tqdm

from bigbatch.data import progress as progress_bars
from bigbatch.data.spec import DataError
from bigbatch.data.tokenizers import Tokenizer

_CHUNK_BYTES = 4 << 20  # documents encoded together: the tokenizers batch across threads

# Each split's ids, by cache file: read (and checked) once a process.
_TOKENS: dict[str, np.ndarray] = {}


def documents(builder: tfds.core.DatasetBuilder, split: str) -> Iterator[bytes]:
  """The documents of a prepared split, in the listing's order, as stored."""
  examples = tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False))
  for example in examples:
    yield bytes(example["text"])


def id_dtype(vocab_size: int) -> np.dtype:
  return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def _chunks(builder, split: str) -> Iterator[list[bytes]]:
  chunk, size = [], 0
  for document in documents(builder, split):
    chunk.append(document)
    size += len(document)
    if size >= _CHUNK_BYTES:
      yield chunk
      chunk, size = [], 0
  if chunk:
    yield chunk


def _encode(builder, split: str, name: str, tokenizer: Tokenizer, path: str) -> None:
  """Writes a split's ids to `path`: first as raw ids (their count is not known until the
  last document), then as a `.npy`, each through a temporary file, so that a killed run
  never leaves a partial file under the name later runs read."""
  raw = f"{path}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
  npy = f"{raw}.npy"
  dtype = id_dtype(tokenizer.vocab_size)
  separator = np.array([tokenizer.separator], dtype)
  total_bytes = builder.info.metadata["splits"][split]["num_bytes"]
  progress = {"desc": f"tokenizing {name} {split} ({tokenizer.name})", "unit": "B"}
  try:
    count = 0
    with open(raw, "wb") as out, tqdm(total=total_bytes, file=sys.stderr, unit_scale=True,
                                       disable=progress_bars.hidden(), **progress) as bar:  # fmt: skip
      for chunk in _chunks(builder, split):
        for ids in tokenizer.encode(chunk):
          out.write(ids.astype(dtype).tobytes())
          out.write(separator.tobytes())
          count += len(ids) + 1
        bar.update(sum(map(len, chunk)))
    ids = np.memmap(raw, dtype, mode="r", shape=(count,)) if count else np.zeros(0, dtype)
    array = np.lib.format.open_memmap(npy, mode="w+", dtype=dtype, shape=(count,))
    array[:] = ids
    array.flush()
    del array, ids
    os.replace(npy, path)
  finally:
    for temporary in (raw, npy):
      if os.path.exists(temporary):
        os.remove(temporary)


def split_tokens(builder, split: str, name: str, tokenizer: Tokenizer) -> np.ndarray:
  """A prepared split's ids under `tokenizer` (memory-mapped): encoded and cached the
  first time.

  Args:
    builder: a prepared `text.TextCorpus`.
    split: `train` or `validation`.
    name: the dataset's name, for the progress bar.
    tokenizer: what encodes the documents.

  Raises:
    DataError: naming `dataset.tokenizer`, for cached ids the tokenizer cannot have made.
  """
  path = os.path.join(builder.data_dir, f"{split}.tokens.{tokenizer.fingerprint}.npy")
  if path in _TOKENS:
    return _TOKENS[path]
  dtype = id_dtype(tokenizer.vocab_size)
  tokens = np.load(path, mmap_mode="r") if os.path.exists(path) else None
  if tokens is None or tokens.dtype != dtype or tokens.ndim != 1:
    try:
      _encode(builder, split, name, tokenizer, path)
    except OSError as error:
      reason = error.strerror or str(error).splitlines()[0]
      raise DataError(f"dataset.data_dir: cannot write {path}: {reason}") from None
    tokens = np.load(path, mmap_mode="r")
  largest = int(tokens.max()) if len(tokens) else 0
  if largest >= tokenizer.vocab_size:
    raise DataError(
      f"dataset.tokenizer: {path} holds id {largest:,}, past the {tokenizer.vocab_size:,} "
      f"ids of {tokenizer.name}: those tokens are not this tokenizer's; delete the file to "
      "tokenize again"
    )
  _TOKENS[path] = tokens
  return tokens
