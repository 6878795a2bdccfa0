"""MNIST-1D (Greydanus 2020) as a tensorflow-datasets builder, generated offline.

The `mnist1d` package draws the examples from ten 1-D digit templates
(`make_dataset`, deterministic in its seed); nothing is downloaded. The
builder writes them once into the tfds data dir, and from then on MNIST-1D
is read through tfds exactly as CIFAR-10 or ImageNet are.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

SIGNAL_LENGTH = 40


class Mnist1dConfig(tfds.core.BuilderConfig):
  """How many examples to generate, and from which seed.

  Attributes:
    num_train_examples: the train split's size; the test split gets a
      quarter as many (the package's 80/20 split).
    seed: the generator's seed (the package's default is 42).
  """

  def __init__(self, *, num_train_examples: int = 50_000, seed: int = 42):
    super().__init__(
      name=f"n{num_train_examples}_seed{seed}",
      version=tfds.core.Version("1.0.0"),
      description=f"{num_train_examples:,} training examples generated with seed {seed}",
    )
    self.num_train_examples = num_train_examples
    self.seed = seed


class Mnist1d(tfds.core.GeneratorBasedBuilder):
  """MNIST-1D: 40-sample signals of ten classes; `signal` float32, `label` int."""

  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = [Mnist1dConfig()]  # noqa: RUF012 (tfds reads a class attribute)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
      features=tfds.features.FeaturesDict(
        {
          "signal": tfds.features.Tensor(shape=(SIGNAL_LENGTH,), dtype=np.float32),
          "label": tfds.features.ClassLabel(num_classes=10),
        }
      ),
      supervised_keys=("signal", "label"),
      homepage="https://github.com/greydanus/mnist1d",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # generated, not downloaded
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = self.builder_config.num_train_examples * 5 // 4
    args.train_split = 0.8
    args.seed = self.builder_config.seed
    data = make_dataset(args)
    return {
      "train": self._generate_examples(data["x"], data["y"]),
      "test": self._generate_examples(data["x_test"], data["y_test"]),
    }

  def _generate_examples(self, signals, labels):
    for index, (signal, label) in enumerate(zip(signals, labels)):
      yield index, {"signal": signal.astype(np.float32), "label": int(label)}
