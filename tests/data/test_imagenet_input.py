"""ImageNet input: per-batch reads in reader processes, decoding only the crop, equal to
the whole-image pipeline it replaced (same examples, order, crops, flips and pixels, now
rounded to uint8 and normalised on the device), on JPEGs prepared by tfds's own
imagenet2012 builder."""

import io
import os
import pathlib
import shlex
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf
from array_record.python import array_record_module
from PIL import Image

from bigbatch import data
from bigbatch.data import preprocess, records
from bigbatch.step import inputs

sys.path.insert(0, str(pathlib.Path(__file__).parents[2] / "tools"))
import fake_imagenet


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory):
  """12 training and 6 validation JPEGs (a greyscale one in each 5), prepared by tfds."""
  root = tmp_path_factory.mktemp("imagenet")
  manual = root / "downloads" / "manual"
  fake_imagenet.write_manual_archives(manual, train=12, val=6, classes=3, grey_every=5)
  fake_imagenet.prepare(root, manual, "array_record")
  block = {"name": "imagenet2012", "data_dir": str(root)}
  return block, data.load_split(block, "train"), data.load_split(block, "eval")


def _decoded(source):
  """Every example as the previous pipeline saw it: PIL's whole-image decode (as tfds's
  `data_source` gives it) and the label, read record by record."""
  images, labels = [], []
  for name, skip, take in source.shards:
    reader = array_record_module.ArrayRecordReader(name)
    for record in reader.read(list(range(skip, skip + take))):
      example = tf.train.Example.FromString(record).features.feature
      image = np.asarray(Image.open(io.BytesIO(example["image"].bytes_list.value[0])))
      images.append(np.repeat(image[..., None], 3, -1) if image.ndim == 2 else image)
      labels.append(example["label"].int64_list.value[0])
  return images, np.array(labels)


def _previous_train(image, seed, size=224):
  """The training preprocessing before per-batch reads (whole image, tf.slice, resize): the
  float pixels it normalised."""
  box_seed, flip_seed = preprocess.stream_seeds(seed, 2)
  begin, box, _ = tf.image.stateless_sample_distorted_bounding_box(
    tf.shape(image),
    bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
    seed=box_seed,
    min_object_covered=0.1,
    aspect_ratio_range=(3 / 4, 4 / 3),
    area_range=(0.08, 1.0),
    max_attempts=10,
    use_image_if_no_bounding_boxes=True,
  )
  image = tf.image.resize(tf.slice(image, begin, box), [size, size], method="bicubic")
  image = tf.image.stateless_random_flip_left_right(image, flip_seed)
  return tf.clip_by_value(image, 0.0, 255.0).numpy()


def _previous_eval(image, size=224):
  shape = tf.cast(tf.shape(image)[:2], tf.float32)
  scale = round(size * 256 / 224) / tf.reduce_min(shape)
  image = tf.image.resize(image, tf.cast(tf.round(shape * scale), tf.int32), method="bicubic")
  image = tf.image.resize_with_crop_or_pad(image, size, size)
  return tf.clip_by_value(image, 0.0, 255.0).numpy()


def _host_normalised(pixels):
  """How the previous pipeline normalised, on the host."""
  mean, std = preprocess.IMAGENET_MEAN, preprocess.IMAGENET_STD
  return preprocess.normalise(tf.constant(pixels, tf.float32), mean, std).numpy()


def _check_pixels(batch, pixels):
  """`batch` (uint8) is `pixels` rounded, and normalised on the device it is the host's
  normalisation of them, within half a pixel level."""
  np.testing.assert_array_equal(batch, np.round(pixels))
  device = np.asarray(inputs.model_inputs(jnp.asarray(batch), (MEAN, STD)))
  np.testing.assert_allclose(device, _host_normalised(np.round(pixels)), rtol=0, atol=ROUNDING)
  np.testing.assert_allclose(device, _host_normalised(pixels), rtol=0, atol=HALF_LEVEL + ROUNDING)


def _train(source, spec, batch_size, start, steps, seed=3):
  batches = data.train_batches(
    source,
    spec,
    seed=seed,
    batch_size=batch_size,
    start_position=start,
    num_steps=steps,
    with_index=True,
  )
  batches = list(batches)
  return {k: np.concatenate([b[k] for b in batches]) for k in ("inputs", "labels", "index")}


# bigbatch's ImageNet normalisation multiplies where the previous one divided: equal up to
# float32 rounding, far below a pixel level (1 / (255 * 0.229) = 0.017 after normalisation)
ROUNDING = 1e-5
MEAN, STD = preprocess.IMAGENET_MEAN, preprocess.IMAGENET_STD
HALF_LEVEL = 0.5 / (255 * min(STD))  # what rounding to uint8 moves a normalised pixel by


def test_training_batches_are_the_previous_pipelines(imagenet):
  _, train, _ = imagenet
  spec = data.dataset_spec("imagenet2012")
  images, labels = _decoded(train)
  assert len(train) == 12 and len({img.shape for img in images}) > 1
  # 4 x 4 from position 6: crosses into the second epoch
  out = _train(train, spec, batch_size=4, start=6, steps=4)
  stream = np.concatenate([data.epoch_permutation(3, e, 12) for e in (0, 1)])[6:22]
  np.testing.assert_array_equal(out["index"], stream)
  np.testing.assert_array_equal(out["labels"], labels[stream])
  assert out["inputs"].shape == (16, 224, 224, 3) and out["inputs"].dtype == np.uint8
  assert spec.device_normalisation == (MEAN, STD)
  # the same pixels: the crop's decode gives the whole decode's, and the rest is unchanged
  seeds = [tf.constant([3, position], tf.int64) for position in range(6, 22)]
  _check_pixels(
    out["inputs"], np.stack([_previous_train(images[i], s) for i, s in zip(stream, seeds)])
  )


def test_evaluation_is_the_previous_pipelines(imagenet):
  _, _, val = imagenet
  spec = data.dataset_spec("imagenet2012")
  images, labels = _decoded(val)
  batches = list(data.eval_batches(val, spec, batch_size=4))
  mask = np.concatenate([b["mask"] for b in batches])
  np.testing.assert_array_equal(mask, [1] * 6 + [0] * 2)
  pixels = np.concatenate([b["inputs"] for b in batches])[:6]
  np.testing.assert_array_equal(np.concatenate([b["labels"] for b in batches])[:6], labels)
  _check_pixels(pixels, np.stack([_previous_eval(image) for image in images]))
  spec299 = data.dataset_spec("imagenet2012", 299)
  assert next(iter(data.eval_batches(val, spec299, batch_size=2)))["inputs"].shape == (
    2,
    299,
    299,
    3,
  )


def test_one_read_per_batch_and_no_file_left(imagenet, monkeypatch):
  _, train, _ = imagenet
  requests, directories = [], []
  submit, close = records.Readers.submit, records.Readers.close

  def counted_submit(self, key, indices):
    requests.append(np.array(indices))
    return submit(self, key, indices)

  def recorded_close(self):
    directories.append(self.directory)
    close(self)

  monkeypatch.setattr(records.Readers, "submit", counted_submit)
  monkeypatch.setattr(records.Readers, "close", recorded_close)
  spec = data.dataset_spec("imagenet2012", 64)
  out = _train(train, spec, batch_size=5, start=0, steps=3, seed=0)
  # one request per batch, holding all of the batch's indices in stream order
  assert len(requests) == 3 and all(len(r) == 5 for r in requests)
  np.testing.assert_array_equal(np.concatenate(requests), out["index"])
  assert directories and not any(os.path.exists(d) for d in directories)


def test_resume_across_a_batch_size_change_reads_the_same_stream(imagenet):
  _, train, _ = imagenet
  spec = data.dataset_spec("imagenet2012", 64)
  # batch 2 for 3 steps, then batch 6 for 3 steps (into epoch 1), against one run of batch 4
  first = _train(train, spec, batch_size=2, start=0, steps=3)
  second = _train(train, spec, batch_size=6, start=6, steps=3)
  whole = _train(train, spec, batch_size=4, start=0, steps=6)
  for key in ("index", "labels", "inputs"):
    np.testing.assert_array_equal(np.concatenate([first[key], second[key]]), whole[key])
  assert sorted(whole["index"][:12]) == list(range(12))  # epoch 0: each example once
  # a process's block of each batch is its part of the global batch
  part = data.train_batches(
    train, spec, seed=3, batch_size=6, start_position=6, num_steps=1, local=slice(3, 6)
  )
  np.testing.assert_array_equal(next(iter(part))["inputs"], second["inputs"][3:6])


def test_a_reader_failure_is_raised_with_its_reason(imagenet):
  _, train, _ = imagenet
  broken = records.RecordSource([(train.shards[0][0] + ".missing", 0, 12)], "image")
  spec = data.dataset_spec("imagenet2012", 64)
  batches = data.train_batches(broken, spec, seed=0, batch_size=2, start_position=0, num_steps=1)
  with pytest.raises(Exception, match=r"record reader process \d+ failed"):
    next(iter(batches))


def test_the_recommended_prepare_command_runs_here(tmp_path):
  """The command a missing dataset's error recommends starts in this environment: it
  fails only for the reason it should (no archives), not for want of a module."""
  with pytest.raises(data.DataError) as error:
    data.load_split({"name": "imagenet2012", "data_dir": str(tmp_path)}, "train")
  message = str(error.value)
  command = message.split("`")[1]
  assert command.startswith("python -c ") and "downloads/manual" in message
  words = shlex.split(command)
  done = subprocess.run(
    [sys.executable, *words[1:]], capture_output=True, text=True, timeout=120, check=False
  )
  assert done.returncode != 0
  assert "ImportError" not in done.stderr and "ModuleNotFoundError" not in done.stderr
  assert f"Manual directory {tmp_path}/downloads/manual does not exist" in done.stderr
  # CIFAR-10's, pointed at a file rather than a directory, fails on the directory
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  words = shlex.split(data.datasets.prepare_command("cifar10", str(blocker)))
  done = subprocess.run(
    [sys.executable, *words[1:]], capture_output=True, text=True, timeout=120, check=False
  )
  assert done.returncode != 0 and "NotADirectoryError" in done.stderr
  assert "ImportError" not in done.stderr and "ModuleNotFoundError" not in done.stderr
