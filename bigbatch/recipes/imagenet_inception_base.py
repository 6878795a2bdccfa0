"""ImageNet, Inception-ResNet-V2 (Smith et al. 2018, section 5.3): decaying lr.

N = 1,281,167; 90 epochs at batch 8192 -> 14,076 updates. lr 3.0, momentum
0.9, no warm-up; the noise scale drops /10 at epochs 30, 60, 80; ghost batch
32. Weight decay is not in the paper; 1e-4 as ResNet-50.
"""

from ml_collections import config_dict

from bigbatch.config import (
  default_plan_config,
  default_schedule_config,
  optimizer_config,
  set_run_fields,
)


def get_config():
  config = config_dict.ConfigDict()
  config.seed = 0
  config.dataset = config_dict.ConfigDict({"name": "imagenet2012", "num_train_examples": 1_281_167})
  config.dataset.data_dir = config_dict.placeholder(str)  # default: $TFDS_DATA_DIR
  config.dataset.image_size = 299  # Inception-ResNet-V2's input
  config.model = config_dict.ConfigDict({"name": "inception_resnet_v2"})
  config.ghost_batch_size = 32
  set_run_fields(config, eval_every_epochs=5.0, eval_batch_size=1024, checkpoint_every_steps=1000)
  config.num_epochs = 90
  config.batch_size = 8192
  config.optimizer = optimizer_config(
    {
      "name": "sgd_momentum",
      "learning_rate": 3.0,
      "momentum": 0.9,
      "nesterov": False,
      "weight_decay": 1e-4,
    }
  )
  config.schedule = default_schedule_config("step", boundaries=(30.0, 60.0, 80.0), factor=10.0)
  config.plan = default_plan_config(batch_multiple=256)  # 8 devices x ghost batch 32
  return config
