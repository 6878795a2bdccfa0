"""Offline text for language models: a tfds builder, byte tokens, and fixed-length sequences.

Two corpora are generated into the tfds data dir the first time they are
asked for, as MNIST-1D is (`TextCorpus`): `python_stdlib`, the `.py` files of
the running Python's standard library (about 30 MB; nothing under a
`site-packages` or `dist-packages` directory), and `text`, every regular,
non-hidden file under `dataset.text_dir`. Documents are listed in the order
of their relative paths and stored byte for byte.

The split is by document, not by position: a document is held out for
`validation` when the sha256 of its relative path falls under a fixed
fraction (5%), so no text of a validation document is trained on, and a
document's split does not depend on the other files or on the order they are
listed in. The config's name is a fingerprint of the listing (paths, sizes,
modification times and, for the standard library, the Python version), so a
changed corpus is prepared anew rather than read from a stale copy.

Tokens are bytes by default (vocabulary 256, no tokenizer to install): a
split is every document's bytes followed by one separator, NUL (0), which
Python source cannot contain (the interpreter refuses it), as one uint8
array. It is made once from the prepared split and cached beside it as a
`.npy` file, which later runs memory-map. `dataset.tokenizer` may name another
tokenizer (`tokenizers`: a `tokenizer.json`, a sentencepiece model, or `bpe:N`
trained on the training split, `bpe`), whose ids are cached beside the split
the same way (`tokenized`). `sequences.TokenSource` cuts a split into
sequences of T tokens by index, each with its next-token targets, so the
pipeline can put any sequence at any stream position: the exact data
position, and a bitwise resume across batch changes, hold as for the other
datasets.
"""

from __future__ import annotations

import hashlib
import os
import platform
import sys
import sysconfig
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import tensorflow_datasets as tfds
from tqdm import tqdm

from bigbatch.data import bpe, sequences, tokenized, tokenizers
from bigbatch.data import progress as progress_bars
from bigbatch.data.sequences import TokenSource, sequence_length  # noqa: F401  (re-exported)
from bigbatch.data.spec import DataError, DatasetSpec

TEXT_DATASETS = ("python_stdlib", "text")
TFDS_NAME = "text_corpus"
VOCAB_SIZE = 256  # one token per byte value
SEPARATOR = 0  # NUL ends each document
VALIDATION_FRACTION = 0.05
_SKIPPED_DIRS = frozenset({"site-packages", "dist-packages"})  # installed packages, not stdlib

# Each split's token array, by its cache file: read once per process.
_TOKENS: dict[str, np.ndarray] = {}


class CorpusFile(NamedTuple):
  """One document: its relative path ("/"-separated), where it is, and what `stat` says."""

  path: str
  full_path: str
  size: int
  mtime_ns: int


def _walk(root: str, keep: Callable[[str], bool], skip_dir: Callable[[str], bool]):
  """The regular files under `root` whose names `keep`, sorted by relative path.

  Symbolic links are not followed: a corpus is the files it holds, and a link
  to a parent directory would never end.
  """
  files = []
  pending = [(root, "")]
  while pending:
    directory, prefix = pending.pop()
    with os.scandir(directory) as entries:
      for entry in entries:
        if entry.is_dir(follow_symlinks=False):
          if not skip_dir(entry.name):
            pending.append((entry.path, f"{prefix}{entry.name}/"))
        elif entry.is_file(follow_symlinks=False) and keep(entry.name):
          stat = entry.stat(follow_symlinks=False)
          files.append(CorpusFile(prefix + entry.name, entry.path, stat.st_size, stat.st_mtime_ns))
  return sorted(files)


def stdlib_root() -> str:
  return sysconfig.get_paths()["stdlib"]


def stdlib_files() -> list[CorpusFile]:
  """The `.py` files of this Python's standard library, without installed packages."""
  return _walk(stdlib_root(), lambda name: name.endswith(".py"), _SKIPPED_DIRS.__contains__)


def directory_files(root: str) -> list[CorpusFile]:
  """Every regular file under `root` whose path has no hidden (dot) part."""

  def hidden(name: str) -> bool:
    return name.startswith(".")

  return _walk(root, lambda name: not hidden(name), hidden)


def _path_hash(path: str) -> float:
  """Where a relative path falls in [0, 1): the first 8 bytes of its sha256."""
  return int.from_bytes(hashlib.sha256(os.fsencode(path)).digest()[:8], "big") / 2.0**64


def split_documents(files: Sequence[CorpusFile], fraction: float):
  """`(train, validation)`: each document by its path's hash, validation under `fraction`.

  A corpus so small that one split would be empty (tfds refuses an empty
  split) gives it the document whose hash is nearest that split's side.
  """
  hashes = [_path_hash(f.path) for f in files]
  held_out = [h < fraction for h in hashes]
  if not any(held_out):
    held_out[int(np.argmin(hashes))] = True
  if all(held_out):
    held_out[int(np.argmax(hashes))] = False
  train = [f for f, out in zip(files, held_out) if not out]
  return train, [f for f, out in zip(files, held_out) if out]


def _fingerprint(*parts: Any, files: Sequence[CorpusFile]) -> str:
  """A short hash of the listing: a changed file (even at the same size) changes it."""
  digest = hashlib.sha256(repr(parts).encode())
  for f in files:
    digest.update(os.fsencode(f.path) + b"\0" + f"{f.size}:{f.mtime_ns}\n".encode())
  return digest.hexdigest()[:16]


class TextCorpusConfig(tfds.core.BuilderConfig):
  """A corpus as listed now: its source, its root directory, and its documents.

  Attributes:
    source: `python_stdlib` or `text`.
    root: the directory the documents' paths are relative to.
    files: the documents, sorted by relative path.
    validation_fraction: the share of documents (by path hash) held out.
    python_version: the Python whose standard library this is (None for `text`).
    field: the config field an error about the corpus names.
  """

  def __init__(
    self,
    *,
    source: str,
    root: str,
    files: Sequence[CorpusFile],
    validation_fraction: float = VALIDATION_FRACTION,
  ):
    if not 0.0 < validation_fraction < 1.0:
      raise ValueError(f"validation_fraction: must be in (0, 1), got {validation_fraction}")
    python = platform.python_version() if source == "python_stdlib" else None
    fingerprint = _fingerprint(source, python, validation_fraction, files=files)
    what = f"the Python {python} standard library" if python else f"the files under {root}"
    super().__init__(
      name=f"{source}_{fingerprint}",
      version=tfds.core.Version("1.0.0"),
      description=f"{what}: {len(files):,} files, {sum(f.size for f in files):,} bytes",
    )
    self.source, self.root, self.files = source, root, tuple(files)
    self.validation_fraction = validation_fraction
    self.python_version = python
    self.field = "dataset.name" if python else "dataset.text_dir"

  @classmethod
  def for_stdlib(cls, validation_fraction: float = VALIDATION_FRACTION) -> TextCorpusConfig:
    root = stdlib_root()
    try:
      files = stdlib_files()
    except OSError as error:
      raise DataError(
        f"dataset.name: cannot read {error.filename or root}: {_reason(error)}"
      ) from None
    return cls(
      source="python_stdlib", root=root, files=files, validation_fraction=validation_fraction
    )

  @classmethod
  def for_directory(
    cls, directory: str, validation_fraction: float = VALIDATION_FRACTION
  ) -> TextCorpusConfig:
    """The corpus of `dataset.text_dir`.

    Raises:
      DataError: for a directory that is missing, not a directory, unreadable,
        or without two documents and some text.
    """
    root = os.path.abspath(os.path.expanduser(directory))
    if not os.path.exists(root):
      raise DataError(f"dataset.text_dir: {directory} does not exist")
    if not os.path.isdir(root):
      raise DataError(f"dataset.text_dir: {directory} is not a directory")
    try:
      files = directory_files(root)
    except OSError as error:
      raise DataError(
        f"dataset.text_dir: cannot read {error.filename or directory}: {_reason(error)}"
      ) from None
    if not any(f.size for f in files):
      raise DataError(f"dataset.text_dir: {directory} holds no text (no non-empty files)")
    if len(files) < 2:
      raise DataError(
        f"dataset.text_dir: {directory} holds one file; splitting train from validation "
        "by document needs two or more"
      )
    return cls(source="text", root=root, files=files, validation_fraction=validation_fraction)


def _reason(error: OSError) -> str:
  return error.strerror or str(error).splitlines()[0]


def _read(file: CorpusFile, field: str) -> bytes:
  """A document's bytes, checked against its listing (the config's name was made from it)."""
  try:
    with open(file.full_path, "rb") as stream:
      data = stream.read()
  except OSError as error:
    raise DataError(f"{field}: cannot read {file.full_path}: {_reason(error)}") from None
  if len(data) != file.size:
    raise DataError(
      f"{field}: {file.full_path} changed while the corpus was prepared "
      f"({len(data):,} bytes, listed at {file.size:,}); prepare it again"
    )
  return data


def corpus_hash(documents) -> str:
  """The sha256 of (path, bytes) pairs in order: for each, the path's length (8 bytes,
  little-endian), the path (its file-system bytes), the bytes' length, the bytes."""
  digest = hashlib.sha256()
  for path, data in documents:
    path = os.fsencode(path)
    for part in (path, data):
      digest.update(len(part).to_bytes(8, "little"))
      digest.update(part)
  return digest.hexdigest()


def _describe(config: TextCorpusConfig, train, validation) -> dict[str, Any]:
  """What `builder.info.metadata` records of a corpus (reads every document once)."""
  documents = ((f.path, _read(f, config.field)) for f in config.files)
  about = {
    "source": config.source,
    "root": config.root,
    "corpus_sha256": corpus_hash(documents),
    "num_files": len(config.files),
    "num_bytes": sum(f.size for f in config.files),
    "validation_fraction": config.validation_fraction,
    "separator": SEPARATOR,
    "splits": {
      name: {"num_files": len(files), "num_bytes": sum(f.size for f in files)}
      for name, files in (("train", train), ("validation", validation))
    },
  }
  if config.python_version:
    about["python_version"] = config.python_version
  return about


class TextCorpus(tfds.core.GeneratorBasedBuilder):
  """Documents of text: `text` (the bytes as stored) and `path` (relative, as bytes)."""

  VERSION = tfds.core.Version("1.0.0")
  # none predefined: a config is made from the files at hand (`TextCorpusConfig.for_*`)
  BUILDER_CONFIGS = []  # noqa: RUF012 (tfds reads a class attribute)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
      description="Documents of text for byte-level language models, split by document.",
      features=tfds.features.FeaturesDict(
        {
          # a string Tensor holds any bytes (a NUL, invalid UTF-8) unchanged
          "text": tfds.features.Tensor(shape=(), dtype=np.object_),
          "path": tfds.features.Tensor(shape=(), dtype=np.object_),
        }
      ),
      metadata=tfds.core.MetadataDict(),
      # in path order: the token arrays follow the listing, and a package's files stay together
      disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # read from the file system, not downloaded
    config = self.builder_config
    train, validation = split_documents(config.files, config.validation_fraction)
    self.info.metadata.update(_describe(config, train, validation))
    return {
      "train": self._generate_examples(train),
      "validation": self._generate_examples(validation),
    }

  def _generate_examples(self, files):
    field = self.builder_config.field
    for index, file in enumerate(files):
      yield index, {"text": _read(file, field), "path": os.fsencode(file.path)}


def _tokenize(builder: tfds.core.DatasetBuilder, split: str, name: str, path: str, total: int):
  """Writes a split's tokens to `path`: through a temporary file, so that a killed build
  never leaves a partial one under the name later runs read."""
  with sequences.npy_written_atomically(path, np.uint8, total) as out:
    at = 0
    examples = tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False))
    progress = {"desc": f"tokenizing {name} {split}", "unit": "B", "unit_scale": True}
    with tqdm(total=total, file=sys.stderr, disable=progress_bars.hidden(), **progress) as bar:
      for example in examples:
        data = np.frombuffer(example["text"], np.uint8)
        if at + len(data) + 1 > total:
          break
        out[at : at + len(data)] = data
        out[at + len(data)] = SEPARATOR
        at += len(data) + 1
        bar.update(len(data) + 1)
    if at != total:
      raise DataError(
        f"dataset.data_dir: the {split} split in {builder.data_dir} does not match its "
        "metadata; delete that directory to prepare it again"
      )


def split_tokens(builder: tfds.core.DatasetBuilder, split: str, name: str) -> np.ndarray:
  """A prepared split's tokens (uint8, memory-mapped): tokenized and cached the first time.

  Args:
    builder: a prepared `TextCorpus`.
    split: `train` or `validation`.
    name: the dataset's name, for the progress bar.
  """
  path = os.path.join(builder.data_dir, f"{split}.tokens.npy")
  if path in _TOKENS:
    return _TOKENS[path]
  counts = builder.info.metadata["splits"][split]
  total = counts["num_bytes"] + counts["num_files"]  # a separator after each document
  tokens = np.load(path, mmap_mode="r") if os.path.exists(path) else None
  if tokens is None or tokens.shape != (total,) or tokens.dtype != np.uint8:
    _tokenize(builder, split, name, path, total)
    tokens = np.load(path, mmap_mode="r")
  _TOKENS[path] = tokens
  return tokens


def corpus_config(block: Mapping[str, Any]) -> TextCorpusConfig:
  """The corpus a `dataset` block names (`python_stdlib`, or `text` with `text_dir`)."""
  if block.get("name") == "python_stdlib":
    return TextCorpusConfig.for_stdlib()
  if not block.get("text_dir"):
    raise DataError("dataset.text_dir: missing from the config (dataset.name 'text' reads it)")
  return TextCorpusConfig.for_directory(str(block["text_dir"]))


def tokenizer_of(block: Mapping[str, Any], builder) -> tokenizers.Tokenizer:
  """The tokenizer `dataset.tokenizer` names for a prepared corpus (`bpe:N`: trained on it)."""
  kind, argument = tokenizers.parse(block.get("tokenizer"))
  if kind == tokenizers.BYTES:
    if block.get("separator") not in (None, SEPARATOR):
      raise DataError(
        f"dataset.separator: {block['separator']}, but bytes end each document with NUL (0); "
        "only another tokenizer takes a separator"
      )
    return tokenizers.ByteTokenizer()
  if kind == "bpe":
    return bpe.cached(builder, argument, block.get("separator"))
  return tokenizers.load_file(kind, argument, block.get("separator"))


def _split_of(block: Mapping[str, Any], builder, split: str, tokenizer) -> TokenSource:
  """`split` (train or validation) in `tokenizer`'s ids, as sequences."""
  if isinstance(tokenizer, tokenizers.ByteTokenizer):
    tokens = split_tokens(builder, split, block["name"])
  else:
    tokens = tokenized.split_tokens(builder, split, block["name"], tokenizer)
  return sequences.source_of(block, tokens, split, tokenizer.separator)


def token_source(block: Mapping[str, Any], builder, split: str) -> TokenSource:
  """The train or eval split (`split`: "train" or "eval") of a prepared text corpus."""
  name = "train" if split == "train" else "validation"
  return _split_of(block, builder, name, tokenizer_of(block, builder))


def text_spec(block: Mapping[str, Any], builder) -> DatasetSpec:
  """The spec of a text dataset: `dataset.tokenizer`'s tokens (bytes by default) in
  sequences of `dataset.sequence_length`.

  Both splits are tokenized (once) here, so that a sequence too long for
  either is refused before anything is compiled.
  """
  tokenizer = tokenizer_of(block, builder)
  train = _split_of(block, builder, "train", tokenizer)
  _split_of(block, builder, "validation", tokenizer)
  table = tokenizer.token_bytes()
  return sequences.sequence_spec(
    TFDS_NAME,
    sequences.sequence_length(block),
    tokenizer.vocab_size,
    len(train),
    table,
    sequences.mean_bytes(table, train.tokens),
    train.extra_names,
  )
