"""CIFAR-10, Wide ResNet 16-4: the baseline of Smith et al. 2018, section 5.

Batch arithmetic: N = 50,000 training images; batch 128 -> 390.6 steps per
epoch; 200 epochs -> 78,125 updates. Noise scale at the start:
g = lr (N/B - 1) / (1 - m) = 0.1 * (50000/128 - 1) / 0.1 = 389.6.
The schedule divides it by 5 at epochs 60, 120 and 160.
Weight decay and augmentation are not in the paper: Wide-ResNet defaults.
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
  config.dataset = config_dict.ConfigDict({"name": "cifar10", "num_train_examples": 50_000})
  config.dataset.data_dir = config_dict.placeholder(str)  # default: $TFDS_DATA_DIR
  config.model = config_dict.ConfigDict({"name": "wrn16_4"})
  config.ghost_batch_size = 128  # the paper's ghost batch on CIFAR
  set_run_fields(config, eval_every_epochs=5.0, eval_batch_size=1024, checkpoint_every_steps=2000)
  config.num_epochs = 200
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
  config.schedule = default_schedule_config("step", boundaries=(60.0, 120.0, 160.0), factor=5.0)
  config.plan = default_plan_config(batch_multiple=128)  # whole ghost batches of 128
  return config
