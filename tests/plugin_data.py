"""Data of a user's own, given to bigbatch by import path (`plugin_data:NAME`)."""

import numpy as np
import tensorflow as tf

SIZES = {"train": 1024, "test": 256}


def arrays(split: str) -> dict:
  """A split as in-memory arrays: 40 features, 10 classes the first 10 features tell apart."""
  rng = np.random.default_rng(SIZES[split])
  labels = rng.integers(0, 10, SIZES[split])
  inputs = rng.normal(size=(SIZES[split], 40)).astype(np.float32)
  inputs[np.arange(SIZES[split]), labels] += 3.0
  return {"image": inputs, "label": labels}


class Items:
  """The same split as a random-access source of dicts, as grain's sources are."""

  def __init__(self, split: str):
    self._arrays = arrays(split)

  def __len__(self) -> int:
    return len(self._arrays["label"])

  def __getitem__(self, i: int) -> dict:
    return {"image": self._arrays["image"][i], "label": self._arrays["label"][i]}


def double(example, seed):
  """A preprocessing function of a user's own, in TensorFlow."""
  del seed
  return tf.cast(example["image"], tf.float32) * 2.0


def empty(split: str) -> list:
  return []


def other_keys(split: str) -> dict:
  return {"x": np.zeros((4, 2), np.float32), "y": np.zeros(4, np.int64)}


def not_random_access(split: str):
  return iter(range(4))


def weighted(split: str) -> dict:
  """`arrays` with two features of each example's own: a float64 weight and an int64 group."""
  out = arrays(split)
  size = len(out["label"])
  return {
    **out,
    "weight": np.linspace(0.5, 1.5, size),
    "group": np.arange(size) % 3,
    "name": np.array(["x"] * size),
  }
