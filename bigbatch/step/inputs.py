"""A batch's inputs as they reach the devices, turned into what the model takes.

ImageNet's images leave the host as uint8 pixels and are normalised here, on
the device, inside the compiled step: a float32 image is four times the bytes
for the host to batch and to send to the device, and normalising it took the
host's cores time that decoding JPEGs needs (docs/BENCHMARKS.md). Datasets
normalised on the host (CIFAR-10 and MNIST-1D, held in memory) arrive as
float32 and pass through unchanged, so for them this costs nothing.

The normalisation constants live with the dataset (`DatasetSpec`); the step
is given them (`make_train_step(..., normalisation=...)`).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

# Per-channel (mean, std) of the pixels, in [0, 1] units.
Normalisation = tuple[Sequence[float], Sequence[float]]


def scale_and_shift(normalisation: Normalisation) -> tuple[np.ndarray, np.ndarray]:
  """`(x / 255 - mean) / std` as `x * scale - shift`: float32 `scale` and `shift`.

  One multiply and one subtract instead of a division, a subtraction and a
  division; equal up to float32 rounding (below 1e-5, where one pixel level is
  about 0.017 after ImageNet's normalisation).
  """
  mean, std = (np.asarray(values, np.float64) for values in normalisation)
  return (1.0 / (255.0 * std)).astype(np.float32), (mean / std).astype(np.float32)


def model_inputs(inputs: jax.Array, normalisation: Normalisation | None = None) -> jax.Array:
  """`inputs` as the model takes them: uint8 pixels normalised to float32, others as they are.

  Raises:
    ValueError: for uint8 inputs without a `normalisation` (at trace time):
      feeding raw pixels to a model trained on normalised ones would fail silently.
  """
  if inputs.dtype != jnp.uint8:
    return inputs
  if normalisation is None:
    raise ValueError(
      "inputs: uint8 images need the dataset's normalisation; pass "
      "normalisation=spec.device_normalisation to make_train_step / make_eval_step"
    )
  scale, shift = scale_and_shift(normalisation)
  return inputs.astype(jnp.float32) * scale - shift
