"""Tokenizers for language models: what `dataset.tokenizer` names, and what a token stands for.

`dataset.tokenizer` is one of:

- `bytes` (the default): one token per byte, vocabulary 256; nothing to install.
- the path of a Hugging Face `tokenizers` file (`.json`, e.g. a `tokenizer.json`):
  needs the `tokenizers` package.
- the path of a sentencepiece model (`.model`): needs the `sentencepiece` package.
- `bpe:N`: a byte-level BPE of N tokens trained on the corpus's training split
  (`bigbatch.data.bpe`): needs `tokenizers`.

Both packages are optional (`pip install 'bigbatch[text]'`): nothing imports
them until a config names a tokenizer that needs one, and a missing one is a
one-line error that says what to install. A file is loaded, and checked,
before the corpus is prepared or anything is tokenized.

A tokenizer reads each document as UTF-8 text (a byte that is not UTF-8
becomes U+FFFD, as `bytes.decode(errors="replace")` has it); the corpus ends
each document with the tokenizer's separator, as the byte corpus ends it with
NUL. `token_bytes()` gives, for each id, the UTF-8 bytes the token stands for,
so that bits per byte (a sequence's loss in bits over the bytes its targets
stand for) compare across tokenizers. The separator stands for one byte, as
the byte corpus's NUL does; any other special token for none.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from bigbatch.data.spec import DataError

FIELD = "dataset.tokenizer"
BYTES = "bytes"
MIN_BPE = 257  # the 256 bytes and the separator
# Tokens that end a document, by the names tokenizers give them, in the order looked for.
END_OF_DOCUMENT = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<|eos|>")
_BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")  # a byte-fallback token stands for one byte
_META_SPACE = "\u2581"  # sentencepiece's word boundary: a space

# Tokenizers already read, by what they were read from: `spec_for` is called more than once.
_LOADED: dict[tuple, Tokenizer] = {}


def parse(value: Any) -> tuple[str, Any]:
  """`(kind, argument)` of a `dataset.tokenizer` value: `("bytes", None)`, `("bpe", N)`,
  `("huggingface", path)` or `("sentencepiece", path)`.

  Raises:
    DataError: naming `dataset.tokenizer` and what it may be.
  """
  if value is None or value == BYTES:
    return BYTES, None
  text = str(value)
  if text.startswith("bpe:"):
    count = text[4:].replace("_", "")
    if not count.isdigit() or int(count) < MIN_BPE:
      raise DataError(f"{FIELD}: {text!r}: bpe:N needs a whole number N >= {MIN_BPE}")
    return "bpe", int(count)
  if text.endswith(".json"):
    return "huggingface", text
  if text.endswith(".model"):
    return "sentencepiece", text
  raise DataError(
    f"{FIELD}: {text!r} is not bytes, bpe:N, a Hugging Face tokenizers .json file or a "
    "sentencepiece .model file"
  )


def require(package: str, what: str) -> Any:
  """The module `package`, or a one-line `DataError` saying that `what` needs it installed."""
  try:
    return importlib.import_module(package)
  except ImportError:
    raise DataError(
      f"{FIELD}: {what} needs the {package} package, which is not installed; install it "
      f"with `pip install {package}` (or `pip install 'bigbatch[text]'`)"
    ) from None


class Tokenizer:
  """A tokenizer as the corpus uses it.

  Attributes:
    name: the `dataset.tokenizer` value it was made from.
    vocab_size: the ids it gives are below this.
    separator: the id that ends each document.
    fingerprint: a short hash of what it encodes with (the file's bytes, the
      separator): tokens cached under it were made by this tokenizer.
  """

  name: str
  vocab_size: int
  separator: int
  fingerprint: str

  def encode(self, documents: Sequence[bytes]) -> list[np.ndarray]:
    """Each document's ids (int64, no separator)."""
    raise NotImplementedError

  def decode(self, ids: Sequence[int]) -> bytes:
    """The UTF-8 text `ids` stand for."""
    raise NotImplementedError

  def token_bytes(self) -> np.ndarray:
    """For each id, the UTF-8 bytes it stands for (int32, [vocab_size])."""
    raise NotImplementedError


class ByteTokenizer(Tokenizer):
  """One token per byte: any file, nothing lost, vocabulary 256; NUL (0) ends a document."""

  name, vocab_size, separator, fingerprint = BYTES, 256, 0, BYTES

  def encode(self, documents: Sequence[bytes]) -> list[np.ndarray]:
    return [np.frombuffer(d, np.uint8).astype(np.int64) for d in documents]

  def decode(self, ids: Sequence[int]) -> bytes:
    return np.asarray(ids, np.uint8).tobytes()

  def token_bytes(self) -> np.ndarray:
    return np.ones(256, np.int32)


def _texts(documents: Sequence[bytes]) -> list[str]:
  return [bytes(d).decode("utf-8", errors="replace") for d in documents]


class HuggingFaceTokenizer(Tokenizer):
  """A Hugging Face `tokenizers.Tokenizer` (from a `.json` file, or trained: `bpe:N`)."""

  def __init__(self, tokenizer: Any, name: str, fingerprint: str, separator: int | None = None):
    self._tokenizer = tokenizer
    self.name, self.vocab_size = name, tokenizer.get_vocab_size(with_added_tokens=True)
    self.separator = _separator(name, self.vocab_size, separator, tokenizer.token_to_id)
    self.fingerprint = _digest(fingerprint, self.separator)

  def encode(self, documents: Sequence[bytes]) -> list[np.ndarray]:
    # no special tokens of the tokenizer's own (a BOS, an EOS): the corpus adds the separator
    encoded = self._tokenizer.encode_batch(_texts(documents), add_special_tokens=False)
    return [np.asarray(e.ids, np.int64) for e in encoded]

  def decode(self, ids: Sequence[int]) -> bytes:
    return self._tokenizer.decode([int(i) for i in ids], skip_special_tokens=False).encode()

  def save(self, path: str) -> None:
    """Writes the tokenizer as a `tokenizer.json` file."""
    self._tokenizer.save(path)

  @functools.cache  # noqa: B019 (one tokenizer a process, kept in `_LOADED` anyway)
  def token_bytes(self) -> np.ndarray:
    tokenizer = self._tokenizer
    byte_level = '"ByteLevel"' in json.dumps(json.loads(tokenizer.to_str()).get("decoder"))
    alphabet = set(require("tokenizers", self.name).pre_tokenizers.ByteLevel.alphabet())
    special = {i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special}
    out = np.zeros(self.vocab_size, np.int32)
    for i in range(self.vocab_size):
      piece = tokenizer.id_to_token(i)
      if i in special or piece is None:
        continue
      if byte_level and set(piece) <= alphabet:  # one character for each byte
        out[i] = len(piece)
      elif _BYTE_PIECE.fullmatch(piece):
        out[i] = 1
      elif _META_SPACE in piece:
        out[i] = len(piece.replace(_META_SPACE, " ").encode())
      else:
        out[i] = len(tokenizer.decode([i], skip_special_tokens=False).encode())
    out[self.separator] = 1
    return out


class SentencePieceTokenizer(Tokenizer):
  """A sentencepiece model (`.model`)."""

  def __init__(self, processor: Any, name: str, fingerprint: str, separator: int | None = None):
    self._sp = processor
    self.name, self.vocab_size = name, processor.get_piece_size()
    eos = processor.eos_id()

    def lookup(token: str) -> int | None:
      return eos if token == "</s>" and eos >= 0 else None

    self.separator = _separator(name, self.vocab_size, separator, lookup)
    self.fingerprint = _digest(fingerprint, self.separator)

  def encode(self, documents: Sequence[bytes]) -> list[np.ndarray]:
    return [np.asarray(ids, np.int64) for ids in self._sp.encode(_texts(documents), out_type=int)]

  def decode(self, ids: Sequence[int]) -> bytes:
    return self._sp.decode([int(i) for i in ids]).encode()

  @functools.cache  # noqa: B019 (as above)
  def token_bytes(self) -> np.ndarray:
    sp = self._sp
    out = np.zeros(self.vocab_size, np.int32)
    for i in range(self.vocab_size):
      if sp.is_byte(i):
        out[i] = 1
      elif not (sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i)):
        out[i] = len(sp.id_to_piece(i).replace(_META_SPACE, " ").encode())
    out[self.separator] = 1
    return out


def _separator(name: str, vocab_size: int, chosen: int | None, lookup) -> int:
  """`dataset.separator` where set (checked against the vocabulary), else the tokenizer's
  own end-of-document token."""
  if chosen is not None:
    if not 0 <= int(chosen) < vocab_size:
      raise DataError(
        f"dataset.separator: {chosen} is not an id of {name}'s vocabulary (0 to {vocab_size - 1:,})"
      )
    return int(chosen)
  for token in END_OF_DOCUMENT:
    found = lookup(token)
    if found is not None:
      return int(found)
  raise DataError(
    f"dataset.separator: {name} has no end-of-document token ({', '.join(END_OF_DOCUMENT)}); "
    "set dataset.separator to the id that ends a document"
  )


def _digest(*parts: Any) -> str:
  return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


def _file_digest(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as stream:
    for chunk in iter(lambda: stream.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def load_file(kind: str, path: str, separator: int | None = None) -> Tokenizer:
  """The tokenizer in a `.json` (`kind` huggingface) or `.model` (sentencepiece) file.

  Raises:
    DataError: one line naming `dataset.tokenizer`: a missing package, or a
      file that does not exist or does not load.
  """
  what = "a tokenizers .json file" if kind == "huggingface" else "a sentencepiece .model file"
  module = require("tokenizers" if kind == "huggingface" else "sentencepiece", what)
  full = os.path.abspath(os.path.expanduser(path))
  try:
    stat = os.stat(full)
    key = (kind, full, stat.st_size, stat.st_mtime_ns, separator)
    if key in _LOADED:
      return _LOADED[key]
    fingerprint = _digest(kind, _file_digest(full))
    if kind == "huggingface":
      loaded = module.Tokenizer.from_file(full)
      tokenizer = HuggingFaceTokenizer(loaded, path, fingerprint, separator)
    else:
      processor = module.SentencePieceProcessor(model_file=full)
      tokenizer = SentencePieceTokenizer(processor, path, fingerprint, separator)
  except FileNotFoundError:
    raise DataError(f"{FIELD}: {path} does not exist") from None
  except DataError:
    raise
  except Exception as error:  # whatever the package raises on a file it cannot read
    reason = " ".join(str(error).split())[:200] or type(error).__name__
    raise DataError(f"{FIELD}: {path} does not load as {what}: {reason}") from None
  _LOADED[key] = tokenizer
  return tokenizer


def check_early(block: Mapping[str, Any]) -> None:
  """Reads `dataset.tokenizer` before the corpus is prepared: a bad value, a missing
  package, or a tokenizer file that does not load fails now, in one line."""
  kind, argument = parse(block.get("tokenizer"))
  if kind == "bpe":
    require("tokenizers", f"bpe:{argument}")
  elif kind != BYTES:
    load_file(kind, argument, block.get("separator"))
