"""MNIST-1D at CIFAR-10 size, for CPU: the embedded default dataset.

50,000 training examples (the `mnist1d` generator, offline); the CIFAR
schedule shrunk 5x in time: 40 epochs, noise scale /5 at epochs 12, 24, 32.
Batch 128 -> 390.6 steps per epoch -> 15,625 updates for the baseline.
"""

from ml_collections import config_dict

from bigbatch.config import (
  OPTIMIZER_VARIANTS,
  default_plan_config,
  default_schedule_config,
  optimizer_config,
  set_run_fields,
  with_optimizer_variant,
)

# Optimizer variants of section 5.1, selected with `--config=FILE:VARIANT`.
VARIANTS = OPTIMIZER_VARIANTS
with_variant = with_optimizer_variant


def get_config():
  config = config_dict.ConfigDict()
  config.seed = 0
  # generated offline into the tfds data dir on first use (test split: a quarter as many)
  config.dataset = config_dict.ConfigDict({"name": "mnist1d", "num_train_examples": 50_000})
  config.dataset.generator_seed = 42  # the mnist1d package's default
  config.dataset.data_dir = config_dict.placeholder(str)  # default: $TFDS_DATA_DIR
  config.model = config_dict.ConfigDict({"name": "cnn1d"})
  config.ghost_batch_size = 16
  set_run_fields(config, eval_every_epochs=2.0, eval_batch_size=2048, checkpoint_every_steps=500)
  config.num_epochs = 40
  config.batch_size = 128
  config.optimizer = optimizer_config(
    {
      "name": "sgd_momentum",
      "learning_rate": 0.1,
      "momentum": 0.9,
      "nesterov": False,
      "weight_decay": 5e-4,
    }
  )
  config.schedule = default_schedule_config("step", boundaries=(12.0, 24.0, 32.0), factor=5.0)
  config.plan = default_plan_config(batch_multiple=128)  # 8 devices x ghost batch 16
  return config
