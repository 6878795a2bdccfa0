"""`dataset.features`: what a source gives besides inputs and labels reaches every batch,
at each example's exact position: documents in packed text (lm1b's and MaxText's
`inputs_segmentation` and `inputs_position`), a Python source's or a tfds dataset's own
features; and what cannot be carried is one line."""

import dataclasses

import numpy as np
import pytest
import tensorflow_datasets as tfds

from bigbatch import data
from bigbatch.data import sequences
from bigbatch.data.spec import DataError
from bigbatch.spec.fields import ConfigError
from bigbatch.spec.task import DataSpec

T = 16
DOCUMENTS = ("inputs_segmentation", "inputs_position")
WEIGHTED = {"source": "plugin_data:weighted", "num_classes": 10}


def by_hand(row, separator):
  """Each token's document (from 1) and its place in it, one token at a time."""
  segment, position, segments, positions = 1, 0, [], []
  for t in range(len(row)):
    if t and row[t - 1] == separator:
      segment, position = segment + 1, 0
    segments.append(segment)
    positions.append(position)
    position += 1
  return segments, positions


def test_documents_are_numbered_from_one_and_counted_within():
  inputs = np.array([[5, 0, 7, 8, 0, 9], [0, 0, 3, 4, 5, 6]])
  found = sequences.document_features(inputs, separator=0)
  np.testing.assert_array_equal(
    found["inputs_segmentation"], [[1, 1, 2, 2, 2, 3], [1, 2, 3, 3, 3, 3]]
  )
  np.testing.assert_array_equal(found["inputs_position"], [[0, 1, 0, 1, 2, 0], [0, 0, 0, 1, 2, 3]])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, data_dir):
  """Short documents, so that most sequences hold several (bytes 1..255; NUL ends each)."""
  root = tmp_path_factory.mktemp("short")
  rng = np.random.default_rng(2)
  for i in range(60):
    (root / f"d{i:02d}.txt").write_bytes(bytes(rng.integers(1, 256, rng.integers(3, 30))))
  return {"name": "text", "text_dir": str(root), "sequence_length": T, "data_dir": data_dir}


def test_packed_text_carries_each_tokens_document_and_position(corpus):
  block = {**corpus, "features": DOCUMENTS}
  spec = data.spec_for(block)
  assert spec.features == (("inputs_segmentation", (T,), "<i4"), ("inputs_position", (T,), "<i4"))
  example = data.example_batch(spec)
  assert {k: (v.shape, str(v.dtype)) for k, v in example.items() if k in DOCUMENTS} == {
    "inputs_segmentation": ((T,), "int32"),
    "inputs_position": ((T,), "int32"),
  }
  source = data.load_split(block, "train")
  batches = data.train_batches(
    source, spec, seed=1, batch_size=8, start_position=5, num_steps=3, with_index=True
  )
  several = 0
  for batch in batches:
    for row, segments, positions, index in zip(
      batch["inputs"], batch["inputs_segmentation"], batch["inputs_position"], batch["index"]
    ):
      np.testing.assert_array_equal(row, source.tokens[index * T : index * T + T])
      expected = by_hand(list(row), separator=0)
      np.testing.assert_array_equal(segments, expected[0])
      np.testing.assert_array_equal(positions, expected[1])
      several += segments[-1] > 1
  assert several > 10  # most sequences hold more than one document
  (evaluated, *_) = data.eval_batches(data.load_split(block, "eval"), spec, batch_size=4)
  assert set(evaluated) == {"inputs", "labels", "mask", *DOCUMENTS}
  # without the field, batches are as they were
  plain = next(data.train_batches(source, data.spec_for(corpus), seed=1, batch_size=8,
                                  start_position=5, num_steps=1))  # fmt: skip
  assert set(plain) == {"inputs", "labels"}


def test_a_python_sources_own_features_reach_the_batch_at_each_examples_position():
  import plugin_data

  block = {**WEIGHTED, "features": ("weight", "group")}
  spec = data.spec_for(block)
  assert spec.features == (("weight", (), "<f4"), ("group", (), "<i4"))  # 64-bit narrowed
  source = data.load_split(block, "train")
  stored = plugin_data.weighted("train")
  on_host = list(data.train_batches(
    source, spec, seed=3, batch_size=32, start_position=1000, num_steps=2, with_index=True
  ))  # fmt: skip
  in_tf = data.train_batches(
    source, dataclasses.replace(spec, host_preprocess=None), seed=3, batch_size=32,
    start_position=1000, num_steps=2, with_index=True,
  )  # fmt: skip
  for host, graph in zip(on_host, in_tf, strict=True):
    np.testing.assert_array_equal(
      host["weight"], stored["weight"][host["index"]].astype(np.float32)
    )
    np.testing.assert_array_equal(host["group"], host["index"] % 3)
    for key in ("weight", "group", "index"):
      np.testing.assert_array_equal(host[key], graph[key])
  assert on_host[0]["weight"].dtype == np.float32 and on_host[0]["group"].dtype == np.int32
  evaluated = list(data.eval_batches(data.load_split(block, "eval"), spec, batch_size=100))
  last = evaluated[-1]  # 256 examples: the last batch holds 56 and 44 of padding
  assert last["mask"].sum() == 56 and last["weight"].shape == (100,)
  np.testing.assert_array_equal(
    np.concatenate([b["group"][b["mask"] > 0] for b in evaluated]), np.arange(256) % 3
  )


def test_a_tfds_datasets_own_feature_is_carried(tmp_path):
  block = {"name": "cifar100", "data_dir": str(tmp_path), "features": ("coarse_label",)}
  with tfds.testing.mock_data(num_examples=64):
    spec = data.spec_for(block)
    source = data.load_split(block, "train")
  assert spec.features == (("coarse_label", (), "<i4"),)
  (batch,) = data.train_batches(
    source, spec, seed=0, batch_size=16, start_position=0, num_steps=1, with_index=True
  )
  np.testing.assert_array_equal(batch["coarse_label"], source.extra["coarse_label"][batch["index"]])


@pytest.mark.parametrize(
  "block,message",
  [
    ({"name": "mnist1d", "features": ("x",)}, "dataset.features: mnist1d carries only its inputs and labels"),
    ({**WEIGHTED, "features": ("nope",)}, "dataset.features: 'nope' is not a key of dataset.source: plugin_data:weighted('train')'s examples"),
    ({**WEIGHTED, "features": ("name",)}, "dataset.features: 'name' of dataset.source is <U1 of shape ()"),
  ],
  ids=["builtin", "missing", "strings"],
)  # fmt: skip
def test_what_cannot_be_carried_is_one_line(block, message):
  with pytest.raises(DataError) as raised:
    data.spec_for(block)
  assert str(raised.value).startswith(message) and "\n" not in str(raised.value)


def test_a_token_source_carries_only_its_documents(corpus):
  with pytest.raises(DataError, match=r"^dataset\.features: a token source carries only "
                     r"inputs_segmentation, inputs_position \(from its separator\), not weight$"):  # fmt: skip
    data.spec_for({**corpus, "features": ("weight",)})


@pytest.mark.parametrize(
  "features,message",
  [
    (("labels",), "dataset.features: 'labels' is a batch's own key"),
    (("a", "a"), "dataset.features: names a, a more than once"),
    ((3,), "dataset.features: must be a list of names, got (3,)"),
  ],
)
def test_the_features_field_names_new_keys_once(features, message):
  with pytest.raises(ConfigError) as raised:
    DataSpec.read({**WEIGHTED, "num_train_examples": 1024, "features": features})
  assert str(raised.value).startswith(message)
  assert DataSpec.read({**WEIGHTED, "num_train_examples": 1024, "features": "weight"}).features == (
    "weight",
  )
