"""ImageNet, ResNet-50 (Goyal et al. 2017): batch 8192 for 90 epochs.

Batch arithmetic: N = 1,281,167; batch 8192 = 256 devices x 32 images ->
156.4 steps per epoch; 90 epochs -> 14,076 updates. Linear scaling
lr = 0.1 x 8192/256 = 3.2, warmed up linearly over 5 epochs from 0.1 (the
rate of batch 256, 1/32 of the peak); /10 at epochs 30, 60, 80.
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
  config.dataset.image_size = 224  # training crop and eval centre crop
  config.model = config_dict.ConfigDict({"name": "resnet50"})
  config.ghost_batch_size = 32  # batch-norm statistics over 32 images
  set_run_fields(config, eval_every_epochs=5.0, eval_batch_size=1024, checkpoint_every_steps=1000)
  config.num_epochs = 90
  config.batch_size = 8192
  config.optimizer = optimizer_config(
    {
      "name": "sgd_momentum",
      "learning_rate": 3.2,
      "momentum": 0.9,
      "nesterov": False,
      "weight_decay": 1e-4,
    }
  )
  config.schedule = default_schedule_config(
    "step", boundaries=(30.0, 60.0, 80.0), factor=10.0, warmup_epochs=5.0, warmup_init=1 / 32
  )
  config.plan = default_plan_config(batch_multiple=256)  # 8 devices x ghost batch 32
  return config
