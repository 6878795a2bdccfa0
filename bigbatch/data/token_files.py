"""Token files: a directory of flat token arrays as a language model's corpus.

`dataset.name: tokens` reads every non-hidden `.bin` or `.npy` file under
`dataset.token_dir`, in the order of their relative paths: nanoGPT's `.bin`
files (raw little-endian ids) and OLMo's `.npy` memory maps (raw too, though
named `.npy`) in `dataset.token_dtype` (`uint16` or `uint32`), and `.npy`
files that NumPy wrote (with a header, whose dtype must be one of those and
agree with `dataset.token_dtype` where it is set). `dataset.separator` is the
id that ends each document (GPT-2's `<|endoftext|>` is 50256), and
`dataset.vocab_size` the vocabulary; `dataset.tokenizer` may name the
tokenizer file the tokens were made with instead (its vocabulary and
separator then stand for unset fields, and its tokens' bytes give bits per
byte, which token files alone cannot).

The split: files whose names start with `train` and `val` (nanoGPT's
`train.bin` and `val.bin`) are the splits their author made. Otherwise the
documents are held out by document, as the text corpora are: the files'
tokens are cut after each separator (a file's tokens after its last
separator are a document of their own), and a document is held out for
validation when the sha256 of its ids (as little-endian uint32) falls under
5%, so no held-out document is trained on, and a document's split depends
on it alone (a copy of it falls on the same side). Such splits are written
once to the data dir (`token_files/{directory}_{fingerprint}/`), a split of
one file is read where it is; either is memory-mapped and cut into sequences
by index (`sequences.TokenSource`), so exact positions and the bitwise resume
hold as for every source.

Checked before any training, each in one line: the dtype (and a raw file's
size), an id past the vocabulary, a separator outside it.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from bigbatch.data import sequences, text, tokenizers
from bigbatch.data.spec import DataError, DatasetSpec

TOKEN_FILES = "tokens"
TFDS_NAME = "token_files"
DTYPES = ("uint16", "uint32")
SUFFIXES = (".bin", ".npy")
VALIDATION_FRACTION = 0.05
_FORMAT = 1  # the cached splits' layout: a new one makes new files
_NUMPY_MAGIC = b"\x93NUMPY"

# Each directory's splits, by its cache directory: read (and checked) once a process.
_SPLITS: dict[str, dict[str, Any]] = {}


def _required(block: Mapping[str, Any], field: str, why: str) -> Any:
  if block.get(field) is None:
    raise DataError(f"dataset.{field}: missing from the config ({why})")
  return block[field]


def _listing(block: Mapping[str, Any]) -> tuple[str, list[text.CorpusFile]]:
  directory = str(_required(block, "token_dir", "dataset.name 'tokens' reads it"))
  root = os.path.abspath(os.path.expanduser(directory))
  if not os.path.isdir(root):
    missing = "does not exist" if not os.path.exists(root) else "is not a directory"
    raise DataError(f"dataset.token_dir: {directory} {missing}")
  try:
    files = [f for f in text.directory_files(root) if f.path.endswith(SUFFIXES)]
  except OSError as error:
    raise DataError(f"dataset.token_dir: cannot read {error.filename}: {error.strerror}") from None
  if not files:
    raise DataError(f"dataset.token_dir: {directory} holds no {' or '.join(SUFFIXES)} files")
  return root, files


def _dtype(block: Mapping[str, Any]) -> np.dtype | None:
  name = block.get("token_dtype")
  if name is None:
    return None
  if name not in DTYPES:
    raise DataError(f"dataset.token_dtype: {name!r} is not one of {', '.join(DTYPES)}")
  return np.dtype(name).newbyteorder("<")


def read_array(file: text.CorpusFile, dtype: np.dtype | None) -> np.ndarray:
  """A token file's ids, memory-mapped: by its NumPy header, else raw in `dtype`.

  Raises:
    DataError: naming `dataset.token_dtype`, for a dtype that is not allowed, not
      the configured one, or not given for a raw file, or a size that is not a
      whole number of ids.
  """
  with open(file.full_path, "rb") as stream:
    has_header = stream.read(len(_NUMPY_MAGIC)) == _NUMPY_MAGIC
  if has_header:
    array = np.load(file.full_path, mmap_mode="r")
    found = array.dtype
    if found.name not in DTYPES or array.ndim != 1:
      raise DataError(
        f"dataset.token_dtype: {file.full_path} holds {found.name} of shape {array.shape}; "
        f"token files are flat arrays of {' or '.join(DTYPES)}"
      )
    if dtype is not None and found != dtype:
      raise DataError(
        f"dataset.token_dtype: {dtype.name}, but {file.full_path} holds {found.name} ids"
      )
    return array
  if dtype is None:
    raise DataError(
      f"dataset.token_dtype: missing from the config ({file.full_path} is a raw array: "
      f"say {' or '.join(DTYPES)})"
    )
  if file.size % dtype.itemsize:
    raise DataError(
      f"dataset.token_dtype: {file.full_path} holds {file.size:,} bytes, not a whole number "
      f"of {dtype.name} ids ({dtype.itemsize} bytes each)"
    )
  if not file.size:
    return np.zeros(0, dtype)
  return np.memmap(file.full_path, dtype, mode="r")


def _named_splits(files: Sequence[text.CorpusFile]) -> dict[str, list[int]] | None:
  """The files of each split where their names say it (`train*`, `val*`), else None."""
  names = [os.path.basename(f.path).lower() for f in files]
  train = [i for i, n in enumerate(names) if n.startswith("train")]
  validation = [i for i, n in enumerate(names) if n.startswith("val")]
  if not train and not validation:
    return None
  if not (train and validation) or len(train) + len(validation) != len(files):
    others = [f.path for i, f in enumerate(files) if i not in train + validation]
    raise DataError(
      "dataset.token_dir: files named train* and val* are the splits as made, so every "
      f"file needs one of those names, and each split a file (others: {others or 'none'})"
    )
  return {"train": train, "validation": validation}


def _document_hash(ids: np.ndarray) -> float:
  """Where a document falls in [0, 1): the first 8 bytes of the sha256 of its ids."""
  digest = hashlib.sha256(np.asarray(ids, "<u4").tobytes()).digest()
  return int.from_bytes(digest[:8], "big") / 2.0**64


def _documents(array: np.ndarray, separator: int) -> list[tuple[int, int]]:
  """`(start, end)` of each document of a file, its separator included."""
  ends = []
  for start in range(0, len(array), 1 << 24):  # a bounded comparison of a memory map
    ends.extend(np.flatnonzero(array[start : start + (1 << 24)] == separator) + start + 1)
  bounds = [0, *map(int, ends)]
  if bounds[-1] != len(array):  # the tail after the last separator: a document too
    bounds.append(len(array))
  return list(itertools.pairwise(bounds))


def held_out_documents(arrays: Sequence[np.ndarray], separator: int, where: str):
  """`{split: [(file, start, end), ...]}`: each document by its hash, in file order.

  A corpus so small that one split would be empty gives it the document whose
  hash is nearest that split's side, as `text.split_documents` does.
  """
  documents = [(i, *span) for i, a in enumerate(arrays) for span in _documents(a, separator)]
  if len(documents) < 2:
    raise DataError(
      f"dataset.token_dir: {where} holds one document (no separator {separator} inside "
      "it); holding out validation by document needs two or more"
    )
  hashes = []
  for i, start, end in documents:
    stop = end - 1 if arrays[i][end - 1] == separator else end  # its ids, not its separator
    hashes.append(_document_hash(arrays[i][start:stop]))
  held = [h < VALIDATION_FRACTION for h in hashes]
  if not any(held):
    held[int(np.argmin(hashes))] = True
  if all(held):
    held[int(np.argmax(hashes))] = False
  return {
    "train": [d for d, out in zip(documents, held) if not out],
    "validation": [d for d, out in zip(documents, held) if out],
  }


def _write(path: str, arrays: Sequence[np.ndarray], spans, dtype: np.dtype) -> None:
  """The spans of `arrays`, one after the other, as a `.npy` file (through a temporary one)."""
  total = sum(end - start for _, start, end in spans)
  with sequences.npy_written_atomically(path, dtype, total) as out:
    at = 0
    for i, start, end in spans:
      out[at : at + end - start] = arrays[i][start:end]
      at += end - start


def _fingerprint(files: Sequence[text.CorpusFile], arrays, separator: int) -> str:
  """A hash of the listing (paths, sizes, modification times, dtypes) and the split's settings:
  a changed file, or another separator, makes new splits."""
  digest = hashlib.sha256(repr((_FORMAT, separator, VALIDATION_FRACTION)).encode())
  for f, array in zip(files, arrays):
    digest.update(f"{f.path}\0{f.size}:{f.mtime_ns}:{array.dtype.name}\n".encode())
  return digest.hexdigest()[:16]


def _splits(block: Mapping[str, Any], data_dir: str, separator: int) -> dict[str, Any]:
  """The train and validation ids of `dataset.token_dir`, the largest id in them and the
  separator."""
  root, files = _listing(block)
  arrays = [read_array(f, _dtype(block)) for f in files]
  cache = os.path.join(
    data_dir, TFDS_NAME, f"{os.path.basename(root)}_{_fingerprint(files, arrays, separator)}"
  )
  if cache in _SPLITS:
    return _SPLITS[cache]
  named = _named_splits(files)
  if named is None:
    spans = held_out_documents(arrays, separator, block["token_dir"])
  else:
    spans = {split: [(i, 0, len(arrays[i])) for i in chosen] for split, chosen in named.items()}
  dtype = np.dtype(max((a.dtype for a in arrays), key=lambda d: d.itemsize)).newbyteorder("<")
  try:
    os.makedirs(cache, exist_ok=True)
    splits = {split: _split(cache, split, arrays, parts, dtype) for split, parts in spans.items()}
    largest = _largest(cache, splits)
  except OSError as error:
    reason = error.strerror or str(error).splitlines()[0]
    raise DataError(f"dataset.data_dir: cannot write {cache}: {reason}") from None
  _SPLITS[cache] = {
    **splits,
    "largest": largest,
    "where": block["token_dir"],
    "separator": separator,
  }
  return _SPLITS[cache]


def _split(cache: str, split: str, arrays, spans, dtype: np.dtype) -> np.ndarray:
  """A split's ids: one whole file where it is, else written to the cache once."""
  if len(spans) == 1 and spans[0][1:] == (0, len(arrays[spans[0][0]])):
    return arrays[spans[0][0]]
  path = os.path.join(cache, f"{split}.npy")
  if not os.path.exists(path):
    _write(path, arrays, spans, dtype)
  return np.load(path, mmap_mode="r")


def _largest(cache: str, splits: Mapping[str, np.ndarray]) -> int:
  """The largest id of the splits: found once (a pass over every token), then kept."""
  path = os.path.join(cache, "largest_id.json")
  if os.path.exists(path):
    with open(path) as stream:
      return int(json.load(stream)["largest_id"])
  largest = max(int(a.max()) if len(a) else 0 for a in splits.values())
  temporary = f"{path}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
  with open(temporary, "w") as stream:
    json.dump({"largest_id": largest}, stream)
  os.replace(temporary, path)
  return largest


def _tokenizer(block: Mapping[str, Any]) -> tokenizers.Tokenizer | None:
  kind, argument = tokenizers.parse(block.get("tokenizer"))
  if kind == tokenizers.BYTES and block.get("tokenizer") is None:
    return None
  if kind == "bpe":
    raise DataError(
      f"dataset.tokenizer: bpe:{argument} trains on a text corpus, and token files are tokens "
      "already: name the tokenizer file they were made with, or leave it unset"
    )
  if kind == tokenizers.BYTES:
    return tokenizers.ByteTokenizer()
  return tokenizers.load_file(kind, argument, block.get("separator"))


def _vocabulary(block: Mapping[str, Any], tokenizer) -> tuple[int, int, np.ndarray | None]:
  """`(vocab_size, separator, token_bytes)`: the fields, else the tokenizer's."""
  why = "token files need it, or dataset.tokenizer the file they were made with"
  vocab = block.get("vocab_size") or (tokenizer and tokenizer.vocab_size)
  vocab = int(_required({"vocab_size": vocab}, "vocab_size", why))
  separator = block.get("separator")
  if separator is None and tokenizer is not None:
    separator = tokenizer.separator
  separator = int(
    _required({"separator": separator}, "separator", f"the id that ends a document; {why}")
  )
  if not 0 <= separator < vocab:
    raise DataError(
      f"dataset.separator: {separator:,} is not an id of the vocabulary (0 to {vocab - 1:,})"
    )
  if tokenizer is None:
    return vocab, separator, None
  if vocab < tokenizer.vocab_size:
    raise DataError(
      f"dataset.vocab_size: {vocab:,} is smaller than {tokenizer.name}'s {tokenizer.vocab_size:,} ids"
    )
  table = np.zeros(vocab, np.int32)  # ids past the tokenizer's (padding) stand for no text
  table[: tokenizer.vocab_size] = tokenizer.token_bytes()
  return vocab, separator, table


def _checked(block: Mapping[str, Any], data_dir: str):
  """The splits, vocabulary and bytes table of a `tokens` block, every id checked."""
  tokenizer = _tokenizer(block)
  vocab, separator, table = _vocabulary(block, tokenizer)
  splits = _splits(block, data_dir, separator)
  if splits["largest"] >= vocab:
    if block.get("vocab_size") is None:
      raise DataError(
        f"dataset.tokenizer: {tokenizer.name} has {vocab:,} ids, but the files in "
        f"{splits['where']} hold id {splits['largest']:,}: they were not made with it"
      )
    raise DataError(
      f"dataset.vocab_size: {vocab:,}, but the files in {splits['where']} hold id "
      f"{splits['largest']:,} (every id must be below it; is dataset.token_dtype right?)"
    )
  return splits, vocab, table


def token_split(block: Mapping[str, Any], data_dir: str, split: str) -> sequences.TokenSource:
  """The train or eval split (`split`: "train" or "eval") of a `tokens` block, as sequences."""
  splits, _, _ = _checked(block, data_dir)
  name = "train" if split == "train" else "validation"
  return sequences.source_of(block, splits[name], name, splits["separator"])


def token_spec(block: Mapping[str, Any], data_dir: str) -> DatasetSpec:
  """The spec of a `tokens` block: both splits read and checked, so that bad files, or a
  sequence too long for either split, are refused before anything is compiled."""
  splits, vocab, table = _checked(block, data_dir)
  train = sequences.source_of(block, splits["train"], "train", splits["separator"])
  sequences.source_of(block, splits["validation"], "validation", splits["separator"])
  mean = None if table is None else sequences.mean_bytes(table, train.tokens)
  length = sequences.sequence_length(block)
  return sequences.sequence_spec(
    TFDS_NAME, length, vocab, len(train), table, mean, train.extra_names
  )
