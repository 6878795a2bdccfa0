"""`bpe:N`: a byte-level BPE of N tokens, trained on a corpus's training split and cached.

It is trained offline with Hugging Face `tokenizers`, from the documents of the
training split only (no held-out text shapes the merges), with GPT-2's
byte-level pre-tokenizer: every byte has a token, so any text has an encoding
and no token is unknown. The N tokens are the separator `<|endoftext|>` (id 0),
the 256 bytes, and N - 257 merges of pairs seen at least twice (a corpus too
small for that many leaves the last ids unused: the vocabulary is N still).

The trained tokenizer is a `tokenizer.json` in the corpus's tfds directory,
`bpe/{hash}.json`, the hash over the corpus's sha256 and these settings (N,
the minimum count, the separator, the pre-tokenizer): a later run or another
process reads the same file and gets the same ids, and its fingerprint names
the cached tokens (`tokenized`). On the Python 3.11.7 standard library (1,704
training files, 30 MB), `bpe:4096` trains in 7 to 9 s on 2 shared CPU cores,
and encoding both splits then takes about 33 s, once.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import sys
import time
import uuid
from collections.abc import Iterable

from bigbatch.data import tokenized
from bigbatch.data.spec import DataError
from bigbatch.data.tokenizers import HuggingFaceTokenizer, load_file, require

SEPARATOR_TOKEN = "<|endoftext|>"
MIN_FREQUENCY = 2  # a pair seen once is no pattern: it would spend the vocabulary on noise
# The settings the cache's hash covers; a new field or value makes a new file.
SETTINGS = {
  "model": "bpe",
  "pre_tokenizer": "byte_level",
  "min_frequency": MIN_FREQUENCY,
  "separator": SEPARATOR_TOKEN,
  "format": 1,
}


def train(texts: Iterable[str], vocab_size: int, length: int | None = None) -> HuggingFaceTokenizer:
  """A byte-level BPE of `vocab_size` tokens trained on `texts` (its settings: `SETTINGS`).

  Args:
    texts: the documents, as text.
    vocab_size: N, every token counted (>= 257).
    length: how many texts there are, where known (for the trainer's progress).
  """
  hf = require("tokenizers", f"bpe:{vocab_size}")
  tokenizer = hf.Tokenizer(hf.models.BPE())
  tokenizer.pre_tokenizer = hf.pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = hf.decoders.ByteLevel()
  trainer = hf.trainers.BpeTrainer(
    vocab_size=vocab_size,
    min_frequency=MIN_FREQUENCY,
    special_tokens=[SEPARATOR_TOKEN],
    initial_alphabet=hf.pre_tokenizers.ByteLevel.alphabet(),
    show_progress=False,
  )
  tokenizer.train_from_iterator(texts, trainer, length=length)
  fingerprint = hashlib.sha256(tokenizer.to_str().encode()).hexdigest()
  return HuggingFaceTokenizer(tokenizer, f"bpe:{vocab_size}", fingerprint)


def cache_path(builder, vocab_size: int) -> str:
  """Where `bpe:N` of a prepared corpus is kept: under a hash of the corpus and settings."""
  key = {"corpus_sha256": builder.info.metadata["corpus_sha256"], "vocab_size": vocab_size,
         **SETTINGS}  # fmt: skip
  digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
  return os.path.join(builder.data_dir, "bpe", f"{vocab_size}_{digest}.json")


def cached(builder, vocab_size: int, separator: int | None = None) -> HuggingFaceTokenizer:
  """`bpe:N` of a prepared corpus: read from its cache, else trained (once) and cached.

  Raises:
    DataError: naming `dataset.tokenizer` (the package is missing, the cached
      file does not load) or `dataset.data_dir` (the cache cannot be written).
  """
  name = f"bpe:{vocab_size}"
  path = cache_path(builder, vocab_size)
  if not os.path.exists(path):
    splits = builder.info.metadata["splits"]["train"]
    start = time.perf_counter()
    print(f"training {name} on {splits['num_bytes']:,} bytes of {splits['num_files']:,} "
          "training documents", file=sys.stderr)  # fmt: skip
    texts = (d.decode("utf-8", errors="replace") for d in tokenized.documents(builder, "train"))
    tokenizer = train(texts, vocab_size, length=splits["num_files"])
    found = tokenizer.vocab_size
    short = f" ({found:,} tokens: no other pair is seen twice)" if found < vocab_size else ""
    print(f"trained {name} in {time.perf_counter() - start:.1f} s{short}", file=sys.stderr)
    _write(path, tokenizer)
  tokenizer = copy.copy(load_file("huggingface", path, separator))
  # a corpus with fewer pairs than N asks for gives fewer tokens: the vocabulary (and so
  # the model) stays the N the config says, the ids past the merges never seen
  tokenizer.name, tokenizer.vocab_size = name, max(tokenizer.vocab_size, vocab_size)
  return tokenizer


def _write(path: str, tokenizer: HuggingFaceTokenizer) -> None:
  """Saves the tokenizer's file through a temporary one: a killed run leaves no partial file,
  and of two processes training at once, the file is one of theirs, whole."""
  temporary = f"{path}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tokenizer.save(temporary)
    os.replace(temporary, path)
  except OSError as error:
    reason = error.strerror or str(error).splitlines()[0]
    raise DataError(f"dataset.data_dir: cannot write {path}: {reason}") from None
  finally:
    if os.path.exists(temporary):
      os.remove(temporary)
