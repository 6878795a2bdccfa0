"""Token files (nanoGPT's .bin, OLMo's raw .npy, NumPy's .npy): the same batches as the same
tokens through the text path, validation held out by document, and bad input as one line."""

import hashlib
import os

import numpy as np
import pytest

from bigbatch import data
from bigbatch.data import token_files
from bigbatch.spec.fields import ConfigError
from bigbatch.spec.task import DataSpec

T = 8
SEPARATOR = 7


@pytest.fixture(scope="module")
def text_block(tmp_path_factory, data_dir):
  """A small byte corpus through the text path."""
  root = tmp_path_factory.mktemp("text")
  rng = np.random.default_rng(1)
  for i in range(30):
    (root / f"doc{i:02d}.txt").write_bytes(bytes(rng.integers(1, 256, rng.integers(40, 300))))
  return {"name": "text", "text_dir": str(root), "sequence_length": T, "data_dir": data_dir}


def tokens_block(directory, data_dir, **fields):
  return {"name": "tokens", "token_dir": str(directory), "sequence_length": T,
          "data_dir": data_dir, "separator": 0, "vocab_size": 256, **fields}  # fmt: skip


def write_as(kind: str, path, ids: np.ndarray, dtype: str) -> None:
  """`ids` as nanoGPT (`bin`: raw), OLMo (`raw`: a raw memmap named .npy) or NumPy writes them."""
  if kind == "npy":
    np.save(path, ids.astype(dtype))
  else:
    ids.astype(np.dtype(dtype).newbyteorder("<")).tofile(path)


@pytest.mark.parametrize(
  ("kind", "dtype"), [("bin", "uint16"), ("raw", "uint32"), ("npy", "uint16"), ("npy", "uint32")]
)
def test_token_files_give_the_batches_of_the_text_path(text_block, data_dir, tmp_path, kind, dtype):
  suffix = ".bin" if kind == "bin" else ".npy"
  text_train, text_eval = (data.load_split(text_block, s) for s in ("train", "eval"))
  write_as(kind, tmp_path / f"train{suffix}", np.asarray(text_train.tokens), dtype)
  write_as(kind, tmp_path / f"val{suffix}", np.asarray(text_eval.tokens), dtype)
  block = tokens_block(tmp_path, data_dir, token_dtype=None if kind == "npy" else dtype)
  spec, text_spec = data.spec_for(block), data.spec_for(text_block)
  train, evaluation = data.load_split(block, "train"), data.load_split(block, "eval")
  assert (len(train), len(evaluation)) == (len(text_train), len(text_eval))
  assert spec.num_train_examples == text_spec.num_train_examples
  assert (spec.num_classes, spec.input_shape, spec.token_bytes) == (256, (T,), None)
  assert train.tokens.dtype == np.dtype(dtype)  # one file a split: read where it is
  options = {"seed": 5, "batch_size": 4, "start_position": 10, "num_steps": 5, "with_index": True}
  ours = list(data.train_batches(train, spec, **options))
  theirs = list(data.train_batches(text_train, text_spec, **options))
  for mine, other in zip(ours, theirs, strict=True):
    for key in ("inputs", "labels", "index"):
      np.testing.assert_array_equal(mine[key], other[key])
      assert mine[key].dtype == other[key].dtype
  for mine, other in zip(
    data.eval_batches(evaluation, spec, batch_size=8),
    data.eval_batches(text_eval, text_spec, batch_size=8),
    strict=True,
  ):
    for key in ("inputs", "labels", "mask"):
      np.testing.assert_array_equal(mine[key], other[key])


def document_hash(ids) -> float:
  """The documented rule: the first 8 bytes of the sha256 of the ids as little-endian uint32."""
  digest = hashlib.sha256(np.asarray(ids, "<u4").tobytes()).digest()
  return int.from_bytes(digest[:8], "big") / 2.0**64


def test_unsplit_files_hold_out_validation_by_document(tmp_path, data_dir, monkeypatch):
  rng = np.random.default_rng(2)
  documents = [rng.integers(8, 1000, rng.integers(5, 40)) for _ in range(120)]
  held = [document_hash(d) < 0.05 for d in documents]
  assert 1 <= sum(held) < 20
  with_separator = [np.append(d, SEPARATOR) for d in documents]
  # documents across three files (the last file's last document with no separator after it)
  flat = np.concatenate(with_separator)[:-1]
  cuts = [0, len(np.concatenate(with_separator[:50])), len(np.concatenate(with_separator[:90]))]
  directory = tmp_path / "shards"
  (directory / "part").mkdir(parents=True)
  for i, (start, end) in enumerate(zip(cuts, [*cuts[1:], len(flat)])):
    write_as("bin", directory / ("part" if i else "") / f"shard_{i}.bin", flat[start:end], "uint16")
  block = tokens_block(directory, data_dir, separator=SEPARATOR, vocab_size=1000,
                       token_dtype="uint16")  # fmt: skip
  # file order is path order: part/shard_1.bin, part/shard_2.bin, shard_0.bin
  order = [*range(50, 120), *range(50)]
  last = 119

  def expected(validation: bool):
    parts = [
      documents[i] if i == last else with_separator[i] for i in order if held[i] == validation
    ]
    return np.concatenate(parts)

  spec = data.spec_for(block)
  train, evaluation = (data.load_split(block, s).tokens for s in ("train", "eval"))
  np.testing.assert_array_equal(train, expected(False))
  np.testing.assert_array_equal(evaluation, expected(True))
  assert spec.num_train_examples == (len(train) - 1) // T and spec.num_classes == 1000
  cache = os.path.dirname(train.filename)
  assert sorted(os.listdir(cache)) == ["largest_id.json", "train.npy", "validation.npy"]
  # a new process reads the cached splits: nothing cut or written again
  monkeypatch.setattr(token_files, "_SPLITS", {})

  def refused(*args):
    raise AssertionError("written again")

  monkeypatch.setattr(token_files, "_write", refused)
  np.testing.assert_array_equal(data.load_split(block, "train").tokens, train)


def test_the_dataset_block_of_token_files():
  block = DataSpec.read({"name": "tokens", "token_dir": "/t", "sequence_length": 16,
                         "separator": 50256, "vocab_size": 50304, "token_dtype": "uint16"})  # fmt: skip
  assert block.block()["token_dir"] == "/t" and block.num_train_examples is None
  for fields, message in [
    ({"token_dtype": "int8"}, r"^dataset\.token_dtype: 'int8' is not one of uint16, uint32$"),
    ({"separator": -1}, r"^dataset\.separator: must be a whole number >= 0"),
  ]:
    with pytest.raises(ConfigError, match=message):
      DataSpec.read({"name": "tokens", "token_dir": "/t", "sequence_length": 16, **fields})
  for field in ("token_dir", "token_dtype", "vocab_size"):
    value = {"token_dir": "/t", "token_dtype": "uint16", "vocab_size": 9}[field]
    with pytest.raises(ConfigError, match=rf"^dataset\.{field}: only dataset\.name 'tokens' "):
      DataSpec.read({"name": "text", "text_dir": "/c", "sequence_length": 8, field: value})
  with pytest.raises(ConfigError, match=r"^dataset\.tokenizer: only python_stdlib, text and "):
    DataSpec.read({"name": "mnist1d", "num_train_examples": 10, "tokenizer": "bpe:300"})


def bad_files(tmp_path) -> dict:
  """Directories of token files, each wrong in one way."""
  ids = np.arange(1, 200) % 50

  def directory(name, files: dict) -> str:
    root = tmp_path / name
    root.mkdir()
    for file, write in files.items():
      write(root / file)
    return str(root)

  return {
    "header": directory("header", {"a.npy": lambda p: np.save(p, ids.astype(np.uint32))}),
    "int64": directory("int64", {"a.npy": lambda p: np.save(p, ids)}),
    "odd": directory("odd", {"a.bin": lambda p: p.write_bytes(b"\x01\x00\x02")}),
    "raw": directory("raw", {"a.bin": lambda p: ids.astype("<u2").tofile(p)}),
    "large": directory("large", {"a.bin": lambda p: np.append(ids, [0, 999]).astype("<u2").tofile(p)}),
    "empty": directory("empty", {"notes.txt": lambda p: p.write_text("no tokens")}),
    "mixed": directory("mixed", {n: lambda p: ids.astype("<u2").tofile(p) for n in ("train.bin", "extra.bin")}),
  }  # fmt: skip


@pytest.mark.parametrize(
  ("which", "fields", "message"),
  [
    ("header", {"token_dtype": "uint16"}, r"dataset\.token_dtype: uint16, but \S+a\.npy holds uint32 ids"),
    ("int64", {}, r"dataset\.token_dtype: \S+a\.npy holds int64 of shape \(199,\); token files are flat arrays of uint16 or uint32"),
    ("odd", {"token_dtype": "uint16"}, r"dataset\.token_dtype: \S+a\.bin holds 3 bytes, not a whole number of uint16 ids \(2 bytes each\)"),
    ("raw", {}, r"dataset\.token_dtype: missing from the config \(\S+a\.bin is a raw array: say uint16 or uint32\)"),
    ("large", {"token_dtype": "uint16"}, r"dataset\.vocab_size: 256, but the files in \S+ hold id 999 \(every id must be below it; is dataset\.token_dtype right\?\)"),
    ("raw", {"token_dtype": "uint16", "separator": 300}, r"dataset\.separator: 300 is not an id of the vocabulary \(0 to 255\)"),
    ("raw", {"token_dtype": "uint16", "separator": None}, r"dataset\.separator: missing from the config \(the id that ends a document; "),
    ("raw", {"token_dtype": "uint16", "vocab_size": None}, r"dataset\.vocab_size: missing from the config \(token files need it, "),
    ("raw", {"token_dtype": "uint16", "tokenizer": "bpe:300"}, r"dataset\.tokenizer: bpe:300 trains on a text corpus, and token files are tokens already"),
    ("raw", {"token_dtype": "uint16", "separator": 255}, r"dataset\.token_dir: \S+ holds one document"),
    ("empty", {}, r"dataset\.token_dir: \S+ holds no \.bin or \.npy files"),
    ("mixed", {"token_dtype": "uint16"}, r"dataset\.token_dir: files named train\* and val\* are the splits as made"),
    (None, {}, r"dataset\.token_dir: /nonexistent/tokens does not exist"),
  ],
)  # fmt: skip
def test_bad_token_files_are_one_line(tmp_path, data_dir, which, fields, message):
  directory = bad_files(tmp_path)[which] if which else "/nonexistent/tokens"
  block = {k: v for k, v in tokens_block(directory, data_dir, **fields).items() if v is not None}
  with pytest.raises(data.DataError, match="^" + message) as caught:
    data.spec_for(block)
  assert "\n" not in str(caught.value)


def test_the_tokenizer_the_files_were_made_with_gives_their_vocabulary_and_bytes(
  tmp_path, data_dir
):
  from bigbatch.data import bpe

  trained = bpe.train(["def f(self):\n  return self\n" * 8, "naïve café\n" * 4], 270)
  path = str(tmp_path / "tokenizer.json")
  trained.save(path)
  texts = [b"def f(self):\n  return 1\n", "naïve\n".encode(), b"return self\n" * 3]
  ids = np.concatenate([np.append(i, 0) for i in trained.encode(texts * 4)])
  (tmp_path / "files").mkdir()
  write_as("npy", tmp_path / "files" / "all.npy", ids, "uint16")
  block = tokens_block(
    tmp_path / "files", data_dir, separator=None, vocab_size=None, tokenizer=path
  )
  spec = data.spec_for({k: v for k, v in block.items() if v is not None})
  assert spec.num_classes == trained.vocab_size and spec.token_bytes[0] == 1
  # the bytes a training token stands for: each document's text, and one for its separator
  train = data.load_split({k: v for k, v in block.items() if v is not None}, "train").tokens
  ends = np.flatnonzero(np.asarray(train) == 0)
  documents = np.split(np.asarray(train), ends + 1)[:-1]
  text_bytes = sum(len(trained.decode(d[:-1])) + 1 for d in documents)
  assert len(documents) >= 8 and spec.bytes_per_token == pytest.approx(text_bytes / len(train))
  smaller = tokens_block(tmp_path / "files", data_dir, vocab_size=None, separator=None,
                         tokenizer=str(tmp_path / "small.json"))  # fmt: skip
  bpe.train(["ab"], 257).save(smaller["tokenizer"])
  with pytest.raises(data.DataError, match=(
    r"^dataset\.tokenizer: \S+small\.json has 257 ids, but the files in \S+ hold id \d[\d,]*: "
    r"they were not made with it$"
  )):  # fmt: skip
    data.spec_for(smaller)
