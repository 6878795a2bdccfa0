"""Datasets of a user's own: any tfds dataset by name (on tfds's mock data), and Python
sources (arrays and random-access objects), each trained and resumed at its exact position."""

import dataclasses

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from small_run import small_config

from bigbatch import config as bbconfig
from bigbatch import data
from bigbatch import train as bbtrain
from bigbatch.workdir import checkpoint as ckpt

SOURCE = {"source": "plugin_data:arrays", "num_classes": 10}


def batches(source, spec):
  return list(
    data.train_batches(source, spec, seed=3, batch_size=32, start_position=40, num_steps=3)
  )


def test_any_tfds_dataset_is_described_by_its_builder_info_and_read_in_memory(tmp_path):
  block = {"name": "fashion_mnist", "data_dir": str(tmp_path)}
  with tfds.testing.mock_data(num_examples=96):
    spec = data.spec_for(block)
    source = data.load_split(block, "train")
  assert (spec.num_classes, spec.input_shape, spec.eval_split) == (10, (28, 28, 1), "test")
  assert len(source) == 96 and source.inputs.dtype == np.uint8
  on_host = batches(source, spec)  # the NumPy gather
  in_tf = batches(source, dataclasses.replace(spec, host_preprocess=None))  # tf.data
  for a, b in zip(on_host, in_tf):
    np.testing.assert_array_equal(a["inputs"], b["inputs"])
    np.testing.assert_array_equal(a["labels"], b["labels"])
  first = on_host[0]["inputs"]
  assert first.dtype == np.float32 and 0.0 <= first.min() and first.max() <= 1.0
  np.testing.assert_array_equal(first * 255.0, np.round(first * 255.0))  # pixels scaled by 255


def test_a_python_source_as_arrays_or_items_gives_the_same_examples():
  spec = data.spec_for(SOURCE)
  assert (spec.num_classes, spec.input_shape, spec.tfds_name) == (10, (40,), "plugin_data:arrays")
  arrays = data.load_split(SOURCE, "train")
  items = data.load_split({**SOURCE, "source": "plugin_data:Items"}, "eval")
  assert (len(arrays), len(items)) == (1024, 256)
  import plugin_data

  expected = plugin_data.arrays("test")
  np.testing.assert_array_equal(items.inputs, expected["image"])
  np.testing.assert_array_equal(items.labels, expected["label"])
  doubled = data.spec_for({**SOURCE, "preprocess": "plugin_data:double"})
  assert doubled.host_preprocess is None  # a TensorFlow function runs in tf.data
  (batch,) = data.train_batches(
    arrays, doubled, seed=0, batch_size=8, start_position=0, num_steps=1
  )
  (plain,) = data.train_batches(arrays, spec, seed=0, batch_size=8, start_position=0, num_steps=1)
  np.testing.assert_array_equal(batch["inputs"], 2.0 * plain["inputs"])


BAD = [
  (
    {"name": "no_such_dataset"},
    "dataset.name: 'no_such_dataset' is not one of mnist1d, cifar10, imagenet2012, nor a tfds dataset",
  ),
  (
    {"name": "fashion_mnist", "input_key": "pixels"},
    "dataset.input_key: 'pixels' is not a feature of fashion_mnist; it has: image, label",
  ),
  (
    {"name": "fashion_mnist", "label_key": "image"},
    "dataset.label_key: 'image' of fashion_mnist is not a tfds ClassLabel",
  ),
  (
    {"name": "fashion_mnist", "preprocess": "blur"},
    "dataset.preprocess: 'blur' is not one of scale, identity, nor an import path",
  ),
  (
    {**SOURCE, "source": "plugin_data:empty"},
    "dataset.source: plugin_data:empty('train') has no examples (length 0)",
  ),
  (
    {**SOURCE, "source": "plugin_data:other_keys"},
    "dataset.input_key: 'image' is not a key of dataset.source: plugin_data:other_keys('train')'s examples",
  ),
  (
    {**SOURCE, "source": "plugin_data:not_random_access"},
    "dataset.source: plugin_data:not_random_access('train') is a range_iterator, not random access",
  ),
  ({**SOURCE, "source": "no_such_module:load"}, "dataset.source: cannot import 'no_such_module'"),
  (
    {"source": "plugin_data:arrays"},
    "dataset.num_classes: a Python source needs its number of classes (>= 2), got None",
  ),
  (
    {**SOURCE, "num_classes": 5},
    "dataset.num_classes: 5, but dataset.source's labels run from 0 to 9",
  ),
]


@pytest.mark.parametrize(
  "block,message", BAD, ids=[m.split(":")[0] + str(i) for i, (_, m) in enumerate(BAD)]
)
def test_bad_data_is_one_line_naming_the_field(tmp_path, block, message):
  with tfds.testing.mock_data(num_examples=8), pytest.raises(data.DataError) as raised:
    data.spec_for({"data_dir": str(tmp_path), **block})
  assert str(raised.value).startswith(message) and "\n" not in str(raised.value)


def final_state(config, workdir):
  checkpoints = ckpt.Checkpoints(workdir / "checkpoints")
  step = checkpoints.latest_step()
  state = checkpoints.restore(step, bbconfig.experiment_from_config(config).abstract_state())
  checkpoints.close()
  return step, state


def test_a_python_source_trains_and_resumes_bitwise_across_a_batch_change(tmp_path):
  config = small_config(str(tmp_path / "tfds"))
  config.dataset.source = "plugin_data:Items"
  config.dataset.num_classes = 10
  whole = bbtrain.train_and_evaluate(config, tmp_path / "whole", progress=False)
  assert whole["final_test_accuracy"] > 0.5  # the first 10 features tell the classes apart
  stop = 35  # in phase 1 (batch 160), after the change from 32
  bbtrain.train_and_evaluate(config, tmp_path / "split", stop_at_step=stop, progress=False)
  bbtrain.train_and_evaluate(config, tmp_path / "split", progress=False)
  (step_a, a), (step_b, b) = (
    final_state(config, tmp_path / "whole"),
    final_state(config, tmp_path / "split"),
  )
  assert step_a == step_b == 40
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.slow  # a long end-to-end run: python -m pytest -m slow
def test_a_tfds_dataset_by_name_trains_on_mock_data(tmp_path):
  config = small_config(str(tmp_path))
  config.dataset.name = "fashion_mnist"
  config.dataset.num_train_examples = 1024
  config.model.name = "tiny_cnn"
  with tfds.testing.mock_data(num_examples=1024):
    summary = bbtrain.train_and_evaluate(config, tmp_path / "run", progress=False)
  assert summary["updates"] == 40 and 0.0 <= summary["final_test_accuracy"] <= 1.0
