"""Tokenizers for text corpora: bpe:N trained and cached, tokenizer.json and sentencepiece
files, the bytes each token stands for, bits per byte, and bad input as one line."""

import math
import os

import numpy as np
import pytest

from bigbatch import data
from bigbatch.data import bpe, text, tokenized, tokenizers
from bigbatch.step import losses

T = 8
WORDS = ["def", "return", "self", "naïve", "café", "→", "x", "(", ")", ":", "import", "für"]
SAMPLE = "def café(x):\n  return x → 'naïve'  für\tself\n"


def generated(count: int, seed: int = 0) -> dict[str, bytes]:
  """`count` documents of code-like text with non-ASCII words (about 1 KB each)."""
  rng = np.random.default_rng(seed)
  docs = {}
  for i in range(count):
    lines = [" ".join(rng.choice(WORDS, size=6)) for _ in range(30)]
    docs[f"doc{i:02d}.py"] = ("\n".join(lines) + "\n").encode()
  return docs


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, data_dir):
  root = tmp_path_factory.mktemp("bpe_corpus")
  files = generated(24)
  for name, content in files.items():
    (root / name).write_bytes(content)
  block = {"name": "text", "text_dir": str(root), "sequence_length": T, "data_dir": data_dir}
  return block, files


def documents_of(tokens: np.ndarray, separator: int) -> list[list[int]]:
  ends = np.flatnonzero(np.asarray(tokens) == separator)
  starts = np.concatenate([[0], ends[:-1] + 1])
  return [list(map(int, tokens[s:e])) for s, e in zip(starts, ends)]


def training_paths(block) -> set[str]:
  train, _ = text.split_documents(text.corpus_config(block).files, text.VALIDATION_FRACTION)
  return {f.path for f in train}


def test_bpe_trains_caches_and_reloads_the_same_ids(corpus, monkeypatch):
  block, files = corpus
  block = {**block, "tokenizer": "bpe:300"}
  spec = data.spec_for(block)
  assert spec.num_classes == 300 and spec.tokens_per_example == T
  builder = data.get_builder(block)
  path = bpe.cache_path(builder, 300)
  assert os.path.isfile(path) and os.path.dirname(path) == os.path.join(builder.data_dir, "bpe")
  first = {s: np.array(data.load_split(block, s).tokens) for s in ("train", "eval")}
  assert first["train"].dtype == np.uint16
  tokenizer = text.tokenizer_of(block, builder)
  assert tokenizer.separator == 0 and tokenizer.vocab_size == 300
  # the training split's documents, encoded and each ended by the separator, in path order
  training = sorted(training_paths(block))
  decoded = [tokenizer.decode(ids) for ids in documents_of(first["train"], 0)]
  assert decoded == [files[p] for p in training]
  # merges were learnt: fewer tokens than bytes; each token's bytes add up to the text's
  assert len(first["train"]) < 0.6 * sum(len(files[p]) + 1 for p in training)
  table = tokenizer.token_bytes()
  assert table[first["train"]].sum() == sum(len(files[p]) + 1 for p in training)
  assert spec.bytes_per_token == pytest.approx(table[first["train"]].mean())
  mtime = os.stat(path).st_mtime_ns
  # a new process: nothing read yet, and neither trained nor encoded again
  monkeypatch.setattr(tokenizers, "_LOADED", {})
  monkeypatch.setattr(tokenized, "_TOKENS", {})

  def refused(*args, **kwargs):
    raise AssertionError("trained or encoded again")

  monkeypatch.setattr(bpe, "train", refused)
  monkeypatch.setattr(tokenized, "_encode", refused)
  again = {s: np.array(data.load_split(block, s).tokens) for s in ("train", "eval")}
  for split in first:
    np.testing.assert_array_equal(again[split], first[split])
  assert os.stat(path).st_mtime_ns == mtime


def test_a_tokenizer_json_round_trips_text(tmp_path):
  trained = bpe.train([SAMPLE * 3, "def f(self):\n  return self\n" * 5], 280)
  path = str(tmp_path / "tokenizer.json")
  trained.save(path)
  loaded = tokenizers.load_file("huggingface", path)
  assert (loaded.vocab_size, loaded.separator) == (trained.vocab_size, 0)
  texts = [SAMPLE.encode(), "naïve → für café\n\n".encode(), b"", "unseen: \u00e9\u4e2d".encode()]
  encoded = loaded.encode(texts)
  assert [loaded.decode(ids) for ids in encoded] == texts
  np.testing.assert_array_equal(encoded[0], trained.encode([texts[0]])[0])
  table = loaded.token_bytes()
  # the bytes each token stands for add up to each text's UTF-8 bytes
  assert [int(table[ids].sum()) for ids in encoded] == [len(t) for t in texts]
  assert table[0] == 1 and len(encoded[0]) < len(texts[0])
  assert tokenizers.load_file("huggingface", path) is loaded  # read once a process


def sentencepiece_model(tmp_path, **options) -> str:
  spm = pytest.importorskip("sentencepiece")
  lines = [
    SAMPLE,
    "def f(self):\n  return self",
    *(" ".join(WORDS[i:] + WORDS[:i]) for i in range(12)),
  ]
  prefix = str(tmp_path / "sp")
  settings = {"vocab_size": 320, "model_type": "bpe", "byte_fallback": True,
              "normalization_rule_name": "identity", "remove_extra_whitespaces": False,
              "add_dummy_prefix": False, "minloglevel": 2, **options}  # fmt: skip
  spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_prefix=prefix, **settings)
  return prefix + ".model"


def test_a_sentencepiece_model_round_trips_text(tmp_path):
  path = sentencepiece_model(tmp_path)
  loaded = tokenizers.load_file("sentencepiece", path)
  assert loaded.vocab_size == 320 and loaded.separator == 2  # its </s>
  texts = [SAMPLE.encode(), "naïve → für café\n\n".encode(), "unseen: \u4e2d\u6587".encode()]
  encoded = loaded.encode(texts)
  assert [loaded.decode(ids) for ids in encoded] == texts  # byte fallback: nothing unknown
  table = loaded.token_bytes()
  assert [int(table[ids].sum()) for ids in encoded] == [len(t) for t in texts]
  assert table[2] == 1 and table[0] == 0  # the separator stands for one byte, <unk> for none


def test_a_sentencepiece_model_tokenizes_a_corpus(corpus, tmp_path):
  block, files = corpus
  block = {**block, "tokenizer": sentencepiece_model(tmp_path)}
  spec = data.spec_for(block)
  tokens = data.load_split(block, "train").tokens
  assert spec.num_classes == 320 and tokens.dtype == np.uint16
  tokenizer = text.tokenizer_of(block, data.get_builder(block))
  decoded = [tokenizer.decode(ids) for ids in documents_of(tokens, 2)]
  assert decoded == [files[p] for p in sorted(training_paths(block))]


def test_bits_per_byte_with_bytes_are_the_byte_models():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(3, T, 256)).astype(np.float32)
  labels = rng.integers(0, 256, (3, T))
  batch = {"labels": labels}
  table = tokenizers.ByteTokenizer().token_bytes()
  per_example, metrics = losses.classification(token_bytes=table)(logits, batch)
  _, old = losses.classification(bytes_per_token=1.0)(logits, batch)
  np.testing.assert_allclose(metrics["bits_per_byte"], per_example / math.log(2), rtol=1e-6)
  np.testing.assert_allclose(metrics["bits_per_byte"], old["bits_per_byte"], rtol=1e-6)
  np.testing.assert_array_equal(metrics["bytes_per_token"], 1.0)
  # another tokenizer's: each sequence's loss in bits over the bytes its targets stand for
  other = np.arange(256) % 4
  per_example, metrics = losses.classification(token_bytes=other)(logits, batch)
  nats = per_example * T
  np.testing.assert_allclose(
    metrics["bits_per_byte"], nats / math.log(2) / other[labels].sum(1), rtol=1e-5
  )
  np.testing.assert_allclose(metrics["bytes_per_token"], other[labels].mean(1), rtol=1e-6)


def test_the_byte_corpus_spec_keeps_one_byte_a_token(corpus):
  block, _ = corpus
  spec = data.spec_for(block)
  assert spec.num_classes == 256 and spec.bytes_per_token == 1.0
  np.testing.assert_array_equal(spec.token_bytes, np.ones(256))
  assert data.load_split(block, "train").tokens.dtype == np.uint8


@pytest.mark.parametrize(
  ("tokenizer", "message"),
  [
    ("words", r"'words' is not bytes, bpe:N, a Hugging Face tokenizers \.json file or a "),
    ("bpe:100", r"'bpe:100': bpe:N needs a whole number N >= 257$"),
    ("bpe:x", r"'bpe:x': bpe:N needs a whole number N >= 257$"),
    ("/nonexistent/tokenizer.json", r"/nonexistent/tokenizer\.json does not exist$"),
    ("/nonexistent/sp.model", r"/nonexistent/sp\.model does not exist$"),
  ],
)
def test_a_bad_tokenizer_is_one_line_before_the_corpus_is_prepared(
  tokenizer, message, tmp_path, monkeypatch
):
  def prepared(*args):
    raise AssertionError("the corpus was prepared")

  monkeypatch.setattr(text.TextCorpus, "download_and_prepare", prepared)
  block = {"name": "python_stdlib", "sequence_length": T, "data_dir": str(tmp_path)}
  with pytest.raises(data.DataError, match=r"^dataset\.tokenizer: " + message) as caught:
    data.spec_for({**block, "tokenizer": tokenizer})
  assert "\n" not in str(caught.value)


def test_a_tokenizer_file_that_does_not_load_is_one_line(tmp_path):
  broken = tmp_path / "tokenizer.json"
  broken.write_text('{"not": "a tokenizer"}')
  garbage = tmp_path / "sp.model"
  garbage.write_bytes(b"\x00not a model")
  for path, what in ((broken, "a tokenizers .json file"), (garbage, "a sentencepiece .model")):
    kind = "huggingface" if path.suffix == ".json" else "sentencepiece"
    with pytest.raises(data.DataError) as caught:
      tokenizers.load_file(kind, str(path))
    assert str(caught.value).startswith(f"dataset.tokenizer: {path} does not load as {what}")
    assert "\n" not in str(caught.value)


def test_a_missing_package_says_what_to_install(monkeypatch):
  real = tokenizers.importlib.import_module

  def missing(name, *args):
    if name in ("tokenizers", "sentencepiece"):
      raise ImportError(name)
    return real(name, *args)

  monkeypatch.setattr(tokenizers.importlib, "import_module", missing)
  with pytest.raises(data.DataError, match=(
    r"^dataset\.tokenizer: bpe:512 needs the tokenizers package, which is not installed; "
    r"install it with `pip install tokenizers` \(or `pip install 'bigbatch\[text\]'`\)$"
  )):  # fmt: skip
    tokenizers.check_early({"tokenizer": "bpe:512"})
  with pytest.raises(data.DataError, match=r"^dataset\.tokenizer: a sentencepiece \.model "):
    tokenizers.check_early({"tokenizer": "/some/sp.model"})


def test_a_separator_that_is_missing_or_outside_the_vocabulary_is_one_line(tmp_path):
  hf = pytest.importorskip("tokenizers")
  plain = hf.Tokenizer(hf.models.WordLevel({"a": 0, "b": 1, "[UNK]": 2}, unk_token="[UNK]"))
  path = str(tmp_path / "plain.json")
  plain.save(path)
  with pytest.raises(data.DataError, match=(
    r"^dataset\.separator: \S+plain\.json has no end-of-document token \(<\|endoftext\|>, "
  )):  # fmt: skip
    tokenizers.load_file("huggingface", path)
  assert tokenizers.load_file("huggingface", path, separator=2).separator == 2
  with pytest.raises(
    data.DataError,
    match=r"^dataset\.separator: 3 is not an id of \S+plain\.json's vocabulary \(0 to 2\)$",
  ):
    tokenizers.load_file("huggingface", path, separator=3)


def test_cached_tokens_that_do_not_match_the_tokenizer_are_one_line(corpus, monkeypatch):
  block, _ = corpus
  block = {**block, "tokenizer": "bpe:300"}
  data.spec_for(block)
  builder = data.get_builder(block)
  tokenizer = text.tokenizer_of(block, builder)
  path = os.path.join(builder.data_dir, f"validation.tokens.{tokenizer.fingerprint}.npy")
  stale = np.load(path)
  monkeypatch.setattr(tokenized, "_TOKENS", {})
  try:
    np.save(path, np.where(np.arange(len(stale)) == 3, 4000, stale).astype(np.uint16))
    with pytest.raises(data.DataError, match=(
      rf"^dataset\.tokenizer: {path} holds id 4,000, past the 300 ids of bpe:300: those "
      r"tokens are not this tokenizer's; delete the file to tokenize again$"
    )):  # fmt: skip
      data.load_split(block, "eval")
  finally:
    np.save(path, stale)


def test_bigbatch_train_refuses_a_bad_tokenizer_in_one_line(tmp_path, capsys, monkeypatch):
  from bigbatch.cli import main

  def prepared(*args):
    raise AssertionError("the corpus was prepared")

  monkeypatch.setattr(text.TextCorpus, "download_and_prepare", prepared)
  args = ["train", "--config", "lm_tiny_base", "--workdir", str(tmp_path / "w"), "--noprogress",
          f"--config.dataset.data_dir={tmp_path}", "--config.dataset.tokenizer=bpe:12"]  # fmt: skip
  assert main(args) == 2
  err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
  assert err == [
    "bigbatch train: error: dataset.tokenizer: 'bpe:12': bpe:N needs a whole number N >= 257"
  ]
