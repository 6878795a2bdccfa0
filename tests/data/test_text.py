"""Text for language models: the tfds corpus builder, byte tokens, and sequences by index."""

import dataclasses
import hashlib
import os
import platform
import random

import numpy as np
import pytest
import tensorflow_datasets as tfds

from bigbatch import data
from bigbatch.data import text
from bigbatch.spec.fields import ConfigError
from bigbatch.spec.task import DataSpec

T = 8  # tokens per sequence in these tests


def held_out(path: str, fraction: float = 0.05) -> bool:
  """The documented rule: the first 8 bytes of sha256(path) under the fraction."""
  return int.from_bytes(hashlib.sha256(path.encode()).digest()[:8], "big") < fraction * 2**64


def names(count: int, validation: bool, prefix: str = "doc") -> list[str]:
  """The first `count` paths `{prefix}{i}.txt` that the rule puts in (or out of) validation."""
  found, i = [], 0
  while len(found) < count:
    name = f"{prefix}{i}.txt"
    if held_out(name) == validation:
      found.append(name)
    i += 1
  return found


def write(root, files: dict[str, bytes]) -> str:
  for path, content in files.items():
    full = os.path.join(root, path)
    os.makedirs(os.path.dirname(full), exist_ok=True)
    with open(full, "wb") as stream:
      stream.write(content)
  return str(root)


def corpus_files() -> dict[str, bytes]:
  """Documents with bytes that text codecs mangle (NUL, 0xff), one empty, in subdirectories."""
  rng = np.random.default_rng(0)
  files = {}
  for name in names(3, True) + names(11, False):
    content = rng.integers(0, 256, rng.integers(20, 200)).astype(np.uint8).tobytes()
    files[name] = content + b"\x00\xff trailing NUL\x00"
  files[names(1, False, "pkg/mod")[0]] = b"def f():\n  return 1\n"
  files[names(1, False, "empty")[0]] = b""
  return files


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, data_dir):
  root = tmp_path_factory.mktemp("corpus")
  files = corpus_files()
  write(root, {**files, ".hidden": b"not text", ".git/config": b"not text either"})
  block = {"name": "text", "text_dir": str(root), "sequence_length": T, "data_dir": data_dir}
  return block, files


def stored(builder, split: str) -> list[tuple[str, bytes]]:
  examples = tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False))
  return [(e["path"].decode(), e["text"]) for e in examples]


def test_the_split_is_by_document_and_stable():
  paths = [f"d{i}/{name}" for i, name in enumerate(f"file{j}.py" for j in range(400))]
  files = [text.CorpusFile(p, p, 10, 0) for p in paths]
  train, validation = text.split_documents(files, 0.05)
  held = {f.path for f in validation}
  assert held == {p for p in paths if held_out(p)} and 5 <= len(held) <= 40
  assert held.isdisjoint(f.path for f in train) and len(train) + len(validation) == 400
  # listed in another order, or with other files added: the same documents held out
  random.Random(0).shuffle(files)
  more = files + [text.CorpusFile(f"new/{i}.txt", "", 1, 0) for i in range(300)]
  for listing in (files, more):
    _, again = text.split_documents(listing, 0.05)
    assert {f.path for f in again} == {f.path for f in listing if held_out(f.path)}
    assert held <= {f.path for f in again}


def test_the_prepared_splits_hold_each_document_once_as_stored(corpus):
  block, files = corpus
  builder = data.get_builder(block)
  train, validation = stored(builder, "train"), stored(builder, "validation")
  assert [p for p, _ in validation] == sorted(p for p in files if held_out(p))
  assert [p for p, _ in train] == sorted(p for p in files if not held_out(p))
  assert dict(train + validation) == files  # every byte, hidden files left out
  assert builder.builder_config.name.startswith("text_")


def test_info_records_the_corpus_hash_and_counts(corpus):
  block, files = corpus
  digest = hashlib.sha256()
  for path in sorted(files):
    for part in (path.encode(), files[path]):
      digest.update(len(part).to_bytes(8, "little") + part)
  metadata = data.get_builder(block).info.metadata
  assert metadata["corpus_sha256"] == digest.hexdigest()
  assert metadata["num_files"] == len(files) == 16
  assert metadata["num_bytes"] == sum(map(len, files.values()))
  held = [p for p in files if held_out(p)]
  assert metadata["splits"]["validation"] == {
    "num_files": len(held),
    "num_bytes": sum(len(files[p]) for p in held),
  }
  assert "python_version" not in metadata and metadata["root"] == block["text_dir"]
  # read back from the prepared copy by a new builder, not the one that wrote it
  again = text.TextCorpus(data_dir=block["data_dir"], config=text.corpus_config(block))
  assert again.info.metadata["corpus_sha256"] == digest.hexdigest()


def test_tokens_are_the_bytes_of_each_document_then_a_separator(corpus):
  block, files = corpus
  builder = data.get_builder(block)
  for split, keep in (("train", False), ("validation", True)):
    expected = b"".join(files[p] + b"\x00" for p in sorted(files) if held_out(p) == keep)
    tokens = text.split_tokens(builder, split, "text")
    assert tokens.dtype == np.uint8 and tokens.tobytes() == expected
    assert isinstance(tokens, np.memmap)


def test_the_token_cache_is_reused(corpus, monkeypatch):
  block, _ = corpus
  builder = data.get_builder(block)
  first = text.split_tokens(builder, "train", "text")
  cache = os.path.join(builder.data_dir, "train.tokens.npy")
  mtime = os.stat(cache).st_mtime_ns
  assert not [f for f in os.listdir(builder.data_dir) if f.endswith(".tmp")]
  monkeypatch.setattr(text, "_TOKENS", {})  # a new process: nothing read yet

  def no_tokenizing(*args):
    raise AssertionError("tokenized again")

  monkeypatch.setattr(text, "_tokenize", no_tokenizing)
  again = data.load_split(block, "train").tokens
  assert again.tobytes() == first.tobytes() and os.stat(cache).st_mtime_ns == mtime


def test_a_changed_directory_gets_another_config(tmp_path):
  block = {"name": "text", "text_dir": write(tmp_path, {"a.txt": b"abc", "b/c.txt": b"de"})}
  name = text.corpus_config(block).name
  assert text.corpus_config(block).name == name  # the same files: the prepared copy is read
  path = tmp_path / "a.txt"
  stat = os.stat(path)
  path.write_bytes(b"abd")  # the same size, other bytes
  os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
  edited = text.corpus_config(block).name
  write(tmp_path, {"d.txt": b"more"})
  added = text.corpus_config(block).name
  assert len({name, edited, added}) == 3
  assert text.corpus_config({"name": "python_stdlib"}).name.startswith("python_stdlib_")


def test_token_source_cuts_sequences_with_next_token_labels():
  tokens = np.arange(21, dtype=np.uint8)  # (21 - 1) // 5 = 4 sequences; the last label is 20
  source = text.TokenSource(tokens, 5)
  assert isinstance(source, data.ArraySource) and len(source) == 4
  inputs, labels = source.gather(np.array([3, 0, 3]))
  expected = np.array([[15, 16, 17, 18, 19], [0, 1, 2, 3, 4], [15, 16, 17, 18, 19]])
  assert inputs.dtype == labels.dtype == np.int32
  np.testing.assert_array_equal(inputs, expected)
  np.testing.assert_array_equal(labels, expected + 1)
  assert len(text.TokenSource(tokens[:20], 5)) == 3  # no label for token 19's successor
  assert len(text.TokenSource(tokens[:3], 5)) == 0
  looked = source.lookup(np.array([[3, 0]]))
  np.testing.assert_array_equal(looked["tokens"].numpy()[0], expected[:2])
  np.testing.assert_array_equal(looked["label"].numpy()[0], expected[:2] + 1)


def test_spec_and_splits_of_a_text_block(corpus):
  block, files = corpus
  spec = data.spec_for(block)
  train, evaluation = data.load_split(block, "train"), data.load_split(block, "eval")
  train_tokens = sum(len(c) + 1 for p, c in files.items() if not held_out(p))
  eval_tokens = sum(len(c) + 1 for p, c in files.items() if held_out(p))
  assert len(train) == spec.num_train_examples == (train_tokens - 1) // T
  assert len(evaluation) == (eval_tokens - 1) // T > 0
  assert (spec.num_classes, spec.input_shape, spec.label_shape) == (256, (T,), (T,))
  assert spec.input_dtype == np.int32 and spec.tokens_per_example == T
  assert spec.bytes_per_token == 1.0 and spec.in_memory
  assert (spec.train_split, spec.eval_split) == ("train", "validation")
  example = data.example_batch(spec)
  assert example["inputs"].shape == example["labels"].shape == (T,)
  assert example["inputs"].dtype == example["labels"].dtype == np.int32
  # the other datasets keep their scalar labels
  assert data.example_batch(data.dataset_spec("mnist1d"))["labels"].shape == ()


def test_train_batches_of_tokens_resume_at_an_exact_position(corpus):
  block, _ = corpus
  spec, source = data.spec_for(block), data.load_split(block, "train")
  tokens = np.asarray(source.tokens, np.int32)

  def batches(start, steps, spec=spec):
    options = {"seed": 3, "batch_size": 4, "with_index": True}
    return list(data.train_batches(source, spec, start_position=start, num_steps=steps, **options))

  run = batches(0, 6)
  order = data.epoch_permutation(3, 0, len(source))
  for step, batch in enumerate(run):
    np.testing.assert_array_equal(batch["index"], order[4 * step : 4 * step + 4])
    assert batch["inputs"].dtype == batch["labels"].dtype == np.int32
    for row, index in enumerate(batch["index"]):
      np.testing.assert_array_equal(batch["inputs"][row], tokens[index * T : index * T + T])
      np.testing.assert_array_equal(batch["labels"][row], tokens[index * T + 1 : index * T + T + 1])
  for resumed, original in zip(batches(12, 3), run[3:], strict=True):
    for key in ("inputs", "labels", "index"):
      np.testing.assert_array_equal(resumed[key], original[key])
  # tf.data (`TokenSource.lookup` and the TensorFlow preprocessing) gives the same batches
  through_tf = dataclasses.replace(spec, host_preprocess=None)
  (tf_batch,) = batches(12, 1, through_tf)
  for key in ("inputs", "labels", "index"):
    np.testing.assert_array_equal(tf_batch[key], run[3][key])
  assert tf_batch["inputs"].dtype == tf_batch["labels"].dtype == np.int32
  evaluation = data.load_split(block, "eval")
  masks = [b["mask"] for b in data.eval_batches(evaluation, spec, batch_size=4)]
  assert np.concatenate(masks).sum() == len(evaluation)


@pytest.mark.parametrize(
  "change, message",
  [
    ({"text_dir": None}, r"^dataset\.text_dir: missing from the config"),
    (
      {"text_dir": "/nonexistent/corpus"},
      r"^dataset\.text_dir: /nonexistent/corpus does not exist$",
    ),
  ],
)
def test_a_missing_text_dir_is_refused(change, message, data_dir):
  block = {"name": "text", "sequence_length": T, "data_dir": data_dir, **change}
  with pytest.raises(data.DataError, match=message):
    data.spec_for({k: v for k, v in block.items() if v is not None})


def test_a_text_dir_that_cannot_be_read_is_refused(tmp_path, data_dir, monkeypatch):
  block = {"name": "text", "sequence_length": T, "data_dir": data_dir}
  write(tmp_path, {"file.txt": b"x"})
  with pytest.raises(data.DataError, match=r"^dataset\.text_dir: \S+file\.txt is not a directory$"):
    data.spec_for({**block, "text_dir": str(tmp_path / "file.txt")})

  def denied(path):
    raise PermissionError(13, "Permission denied", path)

  monkeypatch.setattr(os, "scandir", denied)  # as root, chmod would not stop the listing
  with pytest.raises(
    data.DataError, match=rf"^dataset\.text_dir: cannot read {tmp_path}: Permission denied$"
  ):
    data.spec_for({**block, "text_dir": str(tmp_path)})


def test_a_text_dir_without_text_is_refused(tmp_path, data_dir):
  block = {"name": "text", "sequence_length": T, "data_dir": data_dir}
  write(tmp_path / "a", {"empty.txt": b"", "sub/also_empty": b"", ".hidden": b"text"})
  (tmp_path / "b").mkdir()
  for directory in (tmp_path / "a", tmp_path / "b"):
    with pytest.raises(
      data.DataError,
      match=rf"^dataset\.text_dir: {directory} holds no text \(no non-empty files\)$",
    ):
      data.spec_for({**block, "text_dir": str(directory)})
  write(tmp_path / "c", {"only.txt": b"text"})
  with pytest.raises(data.DataError, match=r"^dataset\.text_dir: \S+ holds one file; "):
    data.spec_for({**block, "text_dir": str(tmp_path / "c")})


def test_a_file_changed_after_listing_is_refused(tmp_path):
  root = write(tmp_path / "corpus", {"a.txt": b"aaaa", "b.txt": b"bbbb"})
  for change, message in (
    (lambda: os.remove(os.path.join(root, "b.txt")), r"b\.txt: No such file or directory$"),
    (lambda: write(root, {"a.txt": b"aaaaa"}), r"a\.txt changed while the corpus was prepared"),
  ):
    config = text.corpus_config({"name": "text", "text_dir": root})
    change()
    builder = text.TextCorpus(data_dir=str(tmp_path / "tfds"), config=config)
    with pytest.raises(data.DataError, match=r"^dataset\.text_dir: .*" + message):
      builder.download_and_prepare()
    write(root, {"a.txt": b"aaaa", "b.txt": b"bbbb"})


def test_a_sequence_longer_than_a_split_is_refused(tmp_path, data_dir):
  small_train = {names(1, True)[0]: b"v" * 500, **{n: b"tiny" for n in names(2, False)}}
  small_validation = {names(1, True)[0]: b"short", names(1, False)[0]: b"t" * 500}
  for files, split, count in ((small_train, "train", 10), (small_validation, "validation", 6)):
    root = write(tmp_path / split, files)
    block = {"name": "text", "text_dir": root, "sequence_length": 100, "data_dir": data_dir}
    with pytest.raises(
      data.DataError,
      match=rf"^dataset\.sequence_length: 100 is too long: the {split} split of text holds "
      rf"{count} tokens, and one sequence with its targets needs 101$",
    ):
      data.spec_for(block)
  assert len(data.load_split({**block, "sequence_length": 5}, "eval")) == 1  # (6 - 1) // 5


def test_the_dataset_block_of_a_text_dataset():
  spec = DataSpec.read({"name": "python_stdlib", "sequence_length": 128})
  assert spec.num_train_examples is None
  assert spec.block() == {"name": "python_stdlib", "generator_seed": 42, "sequence_length": 128}
  block = DataSpec.read({"name": "text", "text_dir": "/corpus", "sequence_length": 64}).block()
  assert block["text_dir"] == "/corpus" and block["sequence_length"] == 64
  assert DataSpec.read({"name": "mnist1d", "num_train_examples": 10}).sequence_length is None
  assert DataSpec.TEXT_DATASETS == data.TEXT_DATASETS
  refused = [
    ({"name": "mnist1d"}, r"^dataset\.num_train_examples: missing from the config$"),
    ({"name": "text", "text_dir": "/c"}, r"^dataset\.sequence_length: missing from the config"),
    ({"name": "text", "sequence_length": 0}, r"^dataset\.sequence_length: must be a whole number"),
    (
      {"name": "mnist1d", "num_train_examples": 10, "sequence_length": 8},
      r"^dataset\.sequence_length: only python_stdlib, text and tokens take one, not 'mnist1d'$",
    ),
    (
      {"name": "python_stdlib", "sequence_length": 8, "text_dir": "/c"},
      r"^dataset\.text_dir: only dataset.name 'text' takes one, not 'python_stdlib'$",
    ),
  ]
  for fields, message in refused:
    with pytest.raises(ConfigError, match=message):
      DataSpec.read(fields)


def test_the_stdlib_listing():
  files = text.stdlib_files()
  paths = [f.path for f in files]
  assert len(paths) > 500 and paths == sorted(paths)
  assert "os.py" in paths and "json/__init__.py" in paths
  assert all(p.endswith(".py") for p in paths)
  assert not [p for p in paths if "site-packages" in p or "dist-packages" in p]
  assert all(f.full_path == os.path.join(text.stdlib_root(), f.path) for f in files[:50])
  config = text.TextCorpusConfig(source="python_stdlib", root=text.stdlib_root(), files=files)
  assert (
    config.name.startswith("python_stdlib_") and config.python_version == platform.python_version()
  )


@pytest.mark.slow
def test_the_stdlib_corpus_prepared(tmp_path):
  block = {"name": "python_stdlib", "sequence_length": 1024, "data_dir": str(tmp_path)}
  spec = data.spec_for(block)
  builder = data.get_builder(block)
  metadata = builder.info.metadata
  assert metadata["python_version"] == platform.python_version()
  assert metadata["num_files"] == len(text.stdlib_files())
  tokens = sum(len(text.split_tokens(builder, s, "python_stdlib")) for s in ("train", "validation"))
  assert 10e6 <= tokens <= 100e6
  assert tokens == metadata["num_bytes"] + metadata["num_files"]
  assert spec.num_train_examples == len(data.load_split(block, "train")) > 1000
