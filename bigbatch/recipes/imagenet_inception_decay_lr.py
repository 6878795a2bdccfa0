"""Inception-ResNet-V2, decaying learning rate at batch 8192: 14,076 updates."""

from bigbatch.config import load_sibling


def get_config():
  return load_sibling(__file__, "imagenet_inception_base").get_config()
