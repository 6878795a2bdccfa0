"""Models of a user's own, given to bigbatch by import path (`plugin_models:NAME`)."""

import flax.linen as nn
from flax import nnx


class NNXNet(nnx.Module):
  """An NNX classifier with batch norm and dropout: flatten, dense, norm, relu, dropout."""

  def __init__(self, num_classes: int, features: int = 16, rate: float = 0.5, *, rngs: nnx.Rngs):
    self.hidden = nnx.Linear(40, features, rngs=rngs)
    self.norm = nnx.BatchNorm(features, momentum=0.9, rngs=rngs)
    self.drop = nnx.Dropout(rate, rngs=rngs)
    self.out = nnx.Linear(features, num_classes, rngs=rngs)

  def __call__(self, x):
    x = x.reshape(x.shape[0], -1)
    return self.out(self.drop(nnx.relu(self.norm(self.hidden(x)))))


class LinenNet(nn.Module):
  """A linen classifier with dropout, called `model(x, train=...)` as bigbatch calls one."""

  num_classes: int
  features: int = 16
  rate: float = 0.5

  @nn.compact
  def __call__(self, x, train: bool = True):
    x = nn.relu(nn.Dense(self.features)(x.reshape(x.shape[0], -1)))
    x = nn.Dropout(self.rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes)(x)


def linen_factory(num_classes: int, width: int = 8):
  """A function that builds a linen module."""
  return LinenNet(num_classes=num_classes, features=width, rate=0.0)


class NeedsAnInput(nn.Module):
  """Called with an input no batch holds and bigbatch cannot make."""

  num_classes: int

  @nn.compact
  def __call__(self, x, segments, train: bool = True):
    return nn.Dense(self.num_classes)(x)


class NoRngs(nnx.Module):
  def __init__(self, num_classes: int):
    self.num_classes = num_classes


def returns_a_number(num_classes: int):
  return 3


NOT_A_MODEL = 3
