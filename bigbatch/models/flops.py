"""Model FLOPs utilisation: a model's training FLOPs per token against the devices' peak.

MFU (PaLM, Chowdhery et al. 2022, appendix B) counts the FLOPs the model
needs, not those the hardware ran: `6 N` per token for a training step's
forward and backward passes (N parameters, embeddings left out) plus
`12 L d T` for attention at sequence length T (Kaplan et al. 2020). A model
says what it needs with a `training_flops_per_token(sequence_length, **fields)`
function of its class (bigbatch's `Transformer` has one); for any other
model MFU is not known, and nothing is shown for it.

The peak is the vendor's dense figure per device for the compute dtype
(`PEAK_FLOPS`; no sparsity). A float32 matmul on an NVIDIA GPU of Ampere
or later runs on TF32 tensor cores under XLA's default precision, and on a
TPU as bfloat16 passes, so float32 takes those peaks. A device not in the
table (a CPU) has no peak: MFU is then undefined, never a number.
"""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["PEAK_FLOPS", "Throughput", "model_flops_per_token", "peak_flops"]

# device kind (as `jax.Device.device_kind` names it, matched by prefix) ->
# dense peak FLOP/s per device, (bfloat16, float32), from the vendors' data sheets
PEAK_FLOPS: dict[str, tuple[float, float]] = {
  "NVIDIA H200": (989.4e12, 494.7e12),
  "NVIDIA H100 PCIe": (756.0e12, 378.0e12),
  "NVIDIA H100": (989.4e12, 494.7e12),  # SXM (HBM3)
  "NVIDIA A100": (312.0e12, 156.0e12),
  "NVIDIA L4": (121.0e12, 60.0e12),
  "TPU v4": (275.0e12, 275.0e12),
  "TPU v5 lite": (197.0e12, 197.0e12),  # v5e
  "TPU v5p": (459.0e12, 459.0e12),
  "TPU v5": (459.0e12, 459.0e12),
  "TPU v6 lite": (918.0e12, 918.0e12),  # v6e, Trillium
}


def peak_flops(device_kind: str, dtype: Any) -> float | None:
  """A device's dense peak FLOP/s for `dtype` (bfloat16, or float32); None if unknown."""
  name = getattr(dtype, "name", None) or str(dtype)
  for kind in sorted(PEAK_FLOPS, key=len, reverse=True):  # the longest prefix first
    if device_kind.startswith(kind):
      bf16, f32 = PEAK_FLOPS[kind]
      return bf16 if "bfloat16" in name else f32
  return None


def model_flops_per_token(model: Any, sequence_length: int | None) -> float | None:
  """Training FLOPs per token of `model` (a linen module, or an NNX class run through
  `NNXModel`) at `sequence_length`, from its class's
  `training_flops_per_token(sequence_length, **fields)`, given the model's fields (an NNX
  class's keyword arguments, a linen module's attributes); None where the model does
  not say (or the data is not a sequence)."""
  if sequence_length is None:
    return None
  cls = getattr(model, "nnx_class", type(model))
  count = getattr(cls, "training_flops_per_token", None)
  if not callable(count):
    return None
  fields = getattr(model, "kwargs", None)
  if fields is None and dataclasses.is_dataclass(model):  # a linen module's attributes
    fields = {f.name: getattr(model, f.name) for f in dataclasses.fields(model)
              if f.name not in ("parent", "name")}  # fmt: skip
  return float(count(sequence_length, **(fields or {})))


@dataclasses.dataclass(frozen=True)
class Throughput:
  """What turns examples per second into tokens per second and MFU.

  Attributes:
    tokens_per_example: T for a language model; None: examples are not sequences.
    flops_per_token: the model's training FLOPs per token; None: not known.
    peak_flops: the peak of all the devices together; None: not known (a CPU).
  """

  tokens_per_example: int | None = None
  flops_per_token: float | None = None
  peak_flops: float | None = None

  def rates(self, examples_per_second: float) -> dict[str, float]:
    """`tokens_per_second`, and `mfu` (a fraction) where the FLOPs and the peak are known."""
    if not self.tokens_per_example:
      return {}
    tokens = examples_per_second * self.tokens_per_example
    out = {"tokens_per_second": tokens}
    if self.flops_per_token and self.peak_flops:
      out["mfu"] = tokens * self.flops_per_token / self.peak_flops
    return out

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)
