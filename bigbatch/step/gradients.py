"""Data-parallel gradients, and the gradient noise scale measured from them.

McCandlish et al. 2018 ("An Empirical Model of Large-Batch Training", App.
A.1) estimate the true gradient's squared norm |G|^2 and the trace of the
per-example gradient covariance tr(S) from the squared norms of gradients at
two batch sizes B_small < B_big:

    |G|^2 ~ (B_big |G_big|^2 - B_small |G_small|^2) / (B_big - B_small)
    tr(S) ~ (|G_small|^2 - |G_big|^2) / (1 / B_small - 1 / B_big)

and the simple noise scale B_simple = tr(S) / |G|^2, close to the critical
batch beyond which a larger batch stops saving steps.

In data-parallel training both come for free: each device's gradient of its
share of the batch is a small-batch gradient, and their mean is the big one.
So the step computes its gradient under `jax.shard_map`: every data-parallel
group (a device, or the `tensor` devices that split its layers; a row of the
mesh with `fsdp` > 1, `groups_of`) takes the gradient of its
local examples, adds its squared norm, and one all-reduce of everything the
step sums (gradients, loss, correct predictions, batch-norm statistics and
the squared norms, flattened into one vector; with a `tensor` axis, one per
array, each summed where its slices lie) gives the means. The squared
norm costs one pass over the gradient. One reduction instead of one per leaf
is also faster on CPU (see docs/BENCHMARKS.md). Under accumulation the
micro-batches are the small batches; with a single group and no accumulation
the local batch is cut into two halves so that there still are two sizes.

The two estimates are noisy step to step, so each is smoothed with an
exponential moving average whose decay per step is exp(-B / H) for a horizon
of H examples (so it means the same at every batch size), debiased as Adam's
moments are, and B_simple is the ratio of the smoothed values.

|G|^2's estimate is unbiased, so it falls below zero whenever the true
gradient is small against the noise (late in training, at small batches),
and then the ratio means nothing. So the state also keeps the EMAs of the
estimates' squares and product, and the squared weights: they give each
smoothed mean its standard error over the effective number of steps
averaged (weight^2 / sum of squared weights), and the two means' covariance.
B_simple then gets Fieller's confidence interval for a ratio of two
correlated means (`interval`), the exact counterpart of the delta method that
stays right when the denominator is near zero: while |G|^2 is resolved (its
interval excludes zero) B_simple has both bounds; while it is not, B_simple
is at least the lower bound and has no upper one; with fewer than two
effective steps, or tr(S) not resolved, nothing is known.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable, Mapping
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree
from jax.sharding import Mesh, PartitionSpec

from bigbatch import partitioning
from bigbatch import sharding as shd
from bigbatch.step import accumulate


class GradientNoise(flax.struct.PyTreeNode):
  """The smoothed estimates: part of the train state, checkpointed with it.

  Every field is an EMA with the same decays, none debiased; dividing by
  `weight` debiases them.

  Attributes:
    sq_norm: EMA of the |G|^2 estimates.
    trace: EMA of the tr(S) estimates.
    weight: 1 - prod(decays), the EMA of 1.
    sq_norm_sq: EMA of the squared |G|^2 estimates.
    trace_sq: EMA of the squared tr(S) estimates.
    product: EMA of the products of the two estimates.
    weight_sq: the sum of each step's squared weight in the EMA, so that
      weight^2 / weight_sq is the effective number of steps averaged.
  """

  sq_norm: jax.Array
  trace: jax.Array
  weight: jax.Array
  sq_norm_sq: jax.Array
  trace_sq: jax.Array
  product: jax.Array
  weight_sq: jax.Array

  @classmethod
  def zeros(cls) -> GradientNoise:
    # one array per field: the state is donated, and a buffer cannot be donated twice
    return cls(*(jnp.zeros((), jnp.float32) for _ in dataclasses.fields(cls)))


class GradientNoiseFormat1(flax.struct.PyTreeNode):
  """`GradientNoise` as checkpoints before state format 2 hold it (the means alone)."""

  sq_norm: jax.Array
  trace: jax.Array
  weight: jax.Array


def estimates(small_sq: jax.Array, big_sq: jax.Array, b_small: float, b_big: float):
  """Unbiased |G|^2 and tr(S) from the mean squared norm at B_small and the one at B_big."""
  sq_norm = (b_big * big_sq - b_small * small_sq) / (b_big - b_small)
  trace = (small_sq - big_sq) / (1.0 / b_small - 1.0 / b_big)
  return sq_norm, trace


def smooth(noise: GradientNoise, sq_norm, trace, examples: float, horizon: float):
  """The EMAs after a step of `examples` examples, with a horizon of `horizon` examples."""
  decay = jnp.exp(-examples / horizon).astype(jnp.float32)

  def ema(old, new):
    return decay * old + (1 - decay) * new

  return GradientNoise(
    sq_norm=ema(noise.sq_norm, sq_norm),
    trace=ema(noise.trace, trace),
    weight=ema(noise.weight, 1.0),
    sq_norm_sq=ema(noise.sq_norm_sq, jnp.square(sq_norm)),
    trace_sq=ema(noise.trace_sq, jnp.square(trace)),
    product=ema(noise.product, sq_norm * trace),
    weight_sq=decay**2 * noise.weight_sq + (1 - decay) ** 2,
  )


def moments(noise: GradientNoise) -> dict[str, jax.Array]:
  """The debiased means of |G|^2 and tr(S), their standard errors and covariance, and the
  effective number of steps (NaN where undefined: no step yet, or fewer than two)."""
  weight = jnp.where(noise.weight > 0, noise.weight, jnp.nan)
  mean_g, mean_t = noise.sq_norm / weight, noise.trace / weight
  steps = weight**2 / noise.weight_sq
  # the weighted variance of one step's estimate, made unbiased by n / (n - 1),
  # over n effective steps: the variance of the mean is that over n
  scale = jnp.where(steps > 1.0, 1.0 / (steps - 1.0), jnp.nan)
  var_g = jnp.maximum(noise.sq_norm_sq / weight - mean_g**2, 0.0) * scale
  var_t = jnp.maximum(noise.trace_sq / weight - mean_t**2, 0.0) * scale
  cov = (noise.product / weight - mean_g * mean_t) * scale
  return {
    "sq_norm": mean_g,
    "trace": mean_t,
    "var_sq_norm": var_g,
    "var_trace": var_t,
    "cov": cov,
    "steps": steps,
  }


def interval(stats: Mapping[str, jax.Array], z: float) -> dict[str, jax.Array]:
  """B_simple = tr(S) / |G|^2 with Fieller's confidence interval at `z` standard errors.

  The interval is every ratio r with (T - r G)^2 <= z^2 Var(T - r G), for the
  means G of |G|^2 and T of tr(S): the roots of a r^2 - 2 b r + c with
  a = G^2 - z^2 Var G, b = T G - z^2 Cov, c = T^2 - z^2 Var T. With a > 0
  and G > 0 (G resolved) it is the interval between the roots, cut at 0; with
  a <= 0 and c > 0 it is the upper root and up (B_simple is at least that, no
  upper bound); with G confidently below zero, where no positive ratio fits,
  B_simple is at least T's lower bound over G's upper one (z standard errors
  above 0, since |G|^2 >= 0); with c <= 0 (T not resolved) it is unknown.

  Returns:
    `value` (T / G; NaN unless G is resolved and T > 0), `low` (NaN: unknown)
    and `high` (+inf: unbounded; NaN: unknown).
  """
  g, t = stats["sq_norm"], stats["trace"]
  z2 = z * z
  a = g * g - z2 * stats["var_sq_norm"]
  b = t * g - z2 * stats["cov"]
  c = t * t - z2 * stats["var_trace"]
  root = jnp.sqrt(jnp.maximum(b * b - a * c, 0.0))
  safe_a = jnp.where(a == 0, 1.0, a)
  resolved = (a > 0) & (g > 0)
  known = resolved | (c > 0)  # (NaN moments make both False)
  fieller = jnp.where(a > 0, jnp.maximum((b - root) / safe_a, 0.0), (b - root) / safe_a)
  # |G|^2 confidently below zero fits no positive ratio, but |G|^2 >= 0: then B_simple is at
  # least tr(S)'s lower bound over |G|^2's upper one, z standard errors above zero
  below = (a > 0) & (g <= 0)
  floor = (t - z * jnp.sqrt(stats["var_trace"])) / (z * jnp.sqrt(stats["var_sq_norm"]))
  low = jnp.where(below, floor, fieller)
  high = jnp.where(resolved, (b + root) / safe_a, jnp.inf)
  nan = jnp.float32(jnp.nan)
  return {
    "value": jnp.where(resolved & (t > 0), t / jnp.where(resolved, g, 1.0), nan),
    "low": jnp.where(known, low, nan),
    "high": jnp.where(known, high, nan),
  }


def read(noise: GradientNoise, confidence: float = 0.95) -> dict[str, jax.Array]:
  """The step's noise metrics: the debiased |G|^2 and tr(S) with their standard errors,
  and B_simple with its two-sided `confidence` interval (`interval`).

  Non-finite values mark what is not known: NaN where there is no value (the
  host writes null), +inf for an upper bound that does not exist.
  """
  stats = moments(noise)
  z = statistics.NormalDist().inv_cdf(0.5 + confidence / 2.0)
  ratio = interval(stats, z)
  return {
    "grad_sq_norm": stats["sq_norm"],
    "grad_sq_norm_se": jnp.sqrt(stats["var_sq_norm"]),
    "grad_trace": stats["trace"],
    "grad_trace_se": jnp.sqrt(stats["var_trace"]),
    "grad_noise_scale": ratio["value"],
    "grad_noise_scale_low": ratio["low"],
    "grad_noise_scale_high": ratio["high"],
    "grad_noise_steps": stats["steps"],
  }


def groups_of(mesh: Mesh) -> tuple[tuple[str, ...], int]:
  """The mesh axes whose devices hold different examples with whole parameters, and their count.

  With `fsdp` == 1 every device of the batch axes is a group; with `fsdp` > 1 a
  row of the mesh (the devices that share one copy of the parameters) is. The
  `tensor` devices of a group share its examples and split its layers: that axis
  stays automatic inside the `jax.shard_map`, partitioned by the compiler. With
  `tensor` > 1 every device of the batch axes is a group even where `fsdp` > 1
  (each gathers its parameters whole along `fsdp` for the step): XLA's
  partitioner (jax 0.10, Shardy) aborts on a gather, an embedding's lookup, in
  a manual region that leaves two automatic axes of more than one device.
  """
  per_device = mesh.shape[shd.FSDP] == 1 or mesh.shape.get(shd.TENSOR, 1) > 1
  axes = shd.BATCH_AXES if per_device else (shd.DATA,)
  count = 1
  for axis in axes:
    count *= mesh.shape[axis]
  return axes, count


GradFn = Callable[[Any, Mapping[str, jax.Array]], tuple[tuple[jax.Array, Any], Any]]


def _local_sums(
  grad_fn: GradFn, params, batch, pieces: int, shards: int, measure: bool, unroll: bool
):
  """Sums over the `pieces` micro-batches of a group's batch: (loss, aux), grads, |g|^2.

  The group's examples lie on `shards` devices; each micro-batch takes a block
  of every device's examples, as `accumulate.micro_batches` cuts them.
  """

  def one(piece):
    (loss, aux), grads = grad_fn(params, piece)
    sq = optax.tree.norm(grads, squared=True) if measure else jnp.zeros((), jnp.float32)
    return (loss, aux), grads, sq

  if pieces == 1:
    return one(batch)
  split = accumulate.micro_batches(batch, pieces, shards)
  first = jax.eval_shape(one, jax.tree.map(lambda x: x[0], split))
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), first)

  def body(total, piece):
    return jax.tree.map(jnp.add, total, one(piece)), None

  # Micro-batches of accumulation run one after another (a scan keeps one
  # micro-batch's activations alive); the two halves cut only to measure are
  # unrolled, which XLA runs as fast as the whole batch.
  total, _ = jax.lax.scan(body, zeros, split, unroll=unroll)
  return total


def data_parallel_grads(
  grad_fn: GradFn,
  params: Any,
  batch: Mapping[str, jax.Array],
  *,
  mesh: Mesh,
  micro_batches: int = 1,
  measure: bool = True,
):
  """The batch's mean loss, aux and gradient, with the squared norms of its groups' gradients.

  Args:
    grad_fn: `grad_fn(params, piece) -> ((mean loss, aux), grads)` of a piece
      of the batch; `aux` is summed over pieces (e.g. correct predictions,
      batch-norm statistics) and divided by their number.
    params: the parameters (replicated over the groups).
    batch: the global batch, sharded over the mesh's batch axes.
    mesh: the device mesh.
    micro_batches: pieces each group's examples are cut into (accumulation).
    measure: also return the squared norms (else they are 0).

  Returns:
    `((loss, aux), grads, noise)`: the means over all pieces, and `noise` =
    `{"small_sq": mean |g_piece|^2, "big_sq": |mean g|^2, "b_small": examples
    per piece, "b_big": the batch}` (`b_*` are Python numbers).
  """
  axes, groups = groups_of(mesh)
  batch_size = jax.tree.leaves(batch)[0].shape[0]
  # with one group and no accumulation there is only one batch size: cut two halves
  pieces = 2 if measure and groups == 1 and micro_batches == 1 else micro_batches
  total = groups * pieces

  shards = 1 if shd.FSDP in axes else mesh.shape[shd.FSDP]

  # with layers split over `tensor`, one vector of everything would first gather
  # each gradient whole on every device: then each leaf is summed where it lies
  split = mesh.shape.get(shd.TENSOR, 1) > 1

  def local(params, batch):
    with partitioning.manual(axes):  # a model's activation constraints: the rest of the mesh
      sums = _local_sums(grad_fn, params, batch, pieces, shards, measure, micro_batches == 1)
    if split:
      return jax.lax.psum(sums, axes)
    flat, unflatten = ravel_pytree(sums)
    return unflatten(jax.lax.psum(flat, axes))  # one all-reduce for everything summed

  spec = PartitionSpec(axes)
  (loss, aux), grads, small_sq = jax.shard_map(
    local,
    mesh=mesh,
    in_specs=(PartitionSpec(), spec),
    out_specs=PartitionSpec(),
    axis_names=set(axes),
    check_vma=False,  # the gradients are local until the psum, by design
  )(params, batch)
  loss, aux, grads = jax.tree.map(lambda x: x / total, (loss, aux, grads))
  noise = {
    "small_sq": small_sq / total,
    "big_sq": optax.tree.norm(grads, squared=True) if measure else jnp.zeros((), jnp.float32),
    "b_small": batch_size / total,
    "b_big": batch_size,
  }
  return (loss, aux), grads, noise
