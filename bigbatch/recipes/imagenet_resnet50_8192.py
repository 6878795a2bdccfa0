"""ResNet-50, batch 8192 for 90 epochs: 14,076 updates (76.1% in ~45 min on half a TPU v2 pod)."""

from bigbatch.config import load_sibling


def get_config():
  return load_sibling(__file__, "imagenet_resnet50_base").get_config()
