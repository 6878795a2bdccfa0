"""ResNet-50, batch 16384 from the start (lr 6.4): 7,038 updates (22 minutes, 75.0%)."""

from bigbatch.config import load_sibling


def get_config():
  config = load_sibling(__file__, "imagenet_resnet50_base").get_config()
  config.batch_size = 16384
  config.optimizer.learning_rate = 6.4  # linear scaling: 0.1 x 16384/256
  config.schedule.warmup_init = 1 / 64  # warm up from 0.1 again
  return config
