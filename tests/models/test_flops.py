"""MFU's parts: the devices' peaks, a model's FLOPs per token, and the rates they give."""

import flax.linen as nn
import jax.numpy as jnp
import pytest

from bigbatch.models import create_model, flops
from bigbatch.models.transformer import parameter_count


def test_the_peak_is_the_longest_matching_device_kind_for_the_compute_dtype():
  assert flops.peak_flops("NVIDIA H200", jnp.bfloat16) == 989.4e12
  assert flops.peak_flops("NVIDIA H100 80GB HBM3", jnp.bfloat16) == 989.4e12
  assert flops.peak_flops("NVIDIA H100 PCIe", jnp.bfloat16) == 756.0e12  # not the SXM's
  assert flops.peak_flops("NVIDIA A100-SXM4-80GB", jnp.float32) == 156.0e12  # TF32
  assert flops.peak_flops("TPU v5 lite", jnp.float32) == 197.0e12
  assert flops.peak_flops("cpu", jnp.float32) is None  # unknown: MFU is not shown


def test_a_transformers_flops_per_token_are_6n_plus_12ldt():
  fields = dict(vocab_size=256, context_length=64, num_layers=3, width=48, num_heads=4)
  model = create_model("transformer", num_classes=256, **fields)
  n = parameter_count(vocab_size=256, context_length=64, num_layers=3, width=48, embeddings=False,
                      positions="rotary")  # fmt: skip
  assert flops.model_flops_per_token(model, 32) == 6 * n + 12 * 3 * 48 * 32
  assert flops.model_flops_per_token(model, None) is None
  assert flops.model_flops_per_token(create_model("mlp", num_classes=10), 32) is None


class LinenLM(nn.Module):
  vocab_size: int = 256
  width: int = 64

  @nn.compact
  def __call__(self, tokens, train: bool = False):
    return nn.Dense(self.vocab_size)(nn.Embed(self.vocab_size, self.width)(tokens))

  @staticmethod
  def training_flops_per_token(sequence_length, *, vocab_size, width, **_):
    return 6.0 * (width + 1) * vocab_size  # the unembedding's 6 N; no attention


def test_a_linen_models_count_is_given_its_fields():
  model = create_model(LinenLM, num_classes=512, width=32)
  assert flops.model_flops_per_token(model, 16) == 6.0 * 33 * 512


def test_rates_give_tokens_and_mfu_only_where_both_parts_are_known():
  full = flops.Throughput(tokens_per_example=128, flops_per_token=2e7, peak_flops=1e12)
  rates = full.rates(10.0)
  assert rates["tokens_per_second"] == 1_280.0
  assert rates["mfu"] == pytest.approx(1_280 * 2e7 / 1e12)
  assert "mfu" not in flops.Throughput(128, 2e7, None).rates(10.0)
  assert flops.Throughput(None, None, None).rates(10.0) == {}
