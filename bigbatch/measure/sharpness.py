"""How sharp a minimum is: the Hessian's top eigenvalue and Keskar's ε-sharpness.

Keskar et al. 2017 ("On Large-Batch Training for Deep Learning: Generalization
Gap and Sharp Minima") find that large fixed batches end in sharper minima,
which generalise worse; Smith et al. 2018 argue that the noise scale, not the
batch, decides. Both measures here take `loss_fn(params) -> scalar`, the
training loss over a fixed set of examples, and return jax scalars:

- `hessian_top_eigenvalue`: the Hessian's eigenvalue of largest magnitude, by
  power iteration on Hessian-vector products (forward-over-reverse);
- `epsilon_sharpness`: Keskar's relative loss rise over a box around the
  weights, by projected ascent.

Sharding: nothing here names a device or a mesh axis. Each measurement is one
jitted function of `(loss_fn, params, ...)` that takes its inputs with the
shardings they have (parameters placed as `step.train_state_shardings` places
them, a batch from `sharding.global_batch`), and XLA inserts the reductions
over the split batch. For the batch to reach the compiled function as an
argument (with its sharding) rather than as a constant baked into the
program, `loss_fn` should be a `jax.tree_util.Partial` whose bound arguments
hold the arrays, as `model_loss` builds it; a plain function works too, its
closed-over arrays then being constants. Random directions come from
`jax.random`, whose partitionable threefry (JAX's default) draws the same
numbers on one device or on eight, so a sharded measurement equals an
unsharded one up to the order of floating-point sums.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.tree_util import Partial

from bigbatch import step as st
from bigbatch.step import cross_entropy
from bigbatch.step.inputs import Normalisation, model_inputs
from bigbatch.train.experiment import Experiment
from bigbatch.workdir import checkpoint as ckpt

# Keskar et al.'s two box sizes (their tables report both).
PAPER_EPSILONS = (1e-3, 5e-4)


class Eigenvalue(NamedTuple):
  """The result of `hessian_top_eigenvalue`.

  Attributes:
    value: the eigenvalue of largest magnitude, with its sign.
    iterations: Hessian-vector products computed.
    converged: whether the stopping test passed before `iterations` ran out.
  """

  value: jax.Array
  iterations: jax.Array
  converged: jax.Array


class Sharpness(NamedTuple):
  """The result of `epsilon_sharpness`.

  Attributes:
    sharpness: `(max_loss - loss) / (1 + loss) * 100`, in percent as Keskar
      et al. report it.
    max_loss: the largest loss found in the box, `max f(w + y)`.
    loss: the loss at the weights themselves, `f(w)`.
  """

  sharpness: jax.Array
  max_loss: jax.Array
  loss: jax.Array


@dataclasses.dataclass(frozen=True)
class _EvalLoss:
  # A frozen dataclass rather than a closure: equal models give equal
  # functions, so a second `model_loss` of the same model reuses the compiled
  # measurement instead of compiling it again (jit keys on the function).
  model: nn.Module
  label_smoothing: float = 0.0
  normalisation: tuple | None = None  # hashed with the rest: tuples only

  def __call__(self, batch_stats: Any, batch: Mapping[str, jax.Array], params: Any) -> jax.Array:
    variables = {"params": params, "batch_stats": batch_stats}
    inputs = model_inputs(batch["inputs"], self.normalisation)
    logits = self.model.apply(variables, inputs, train=False)
    losses = cross_entropy(logits, batch["labels"], self.label_smoothing)
    losses = losses.mean(tuple(range(1, losses.ndim)))  # a sequence's: the mean of its tokens'
    if "mask" not in batch:
      return jnp.mean(losses)
    mask = batch["mask"].astype(losses.dtype)
    return jnp.sum(losses * mask) / jnp.sum(mask)


def model_loss(
  model: nn.Module,
  batch_stats: Any,
  batch: Mapping[str, jax.Array],
  *,
  label_smoothing: float = 0.0,
  normalisation: Normalisation | None = None,
) -> Partial:
  """The mean training loss of `model` on `batch`, as a function of the parameters.

  Batch norm runs in evaluation mode (`train=False`, the running averages in
  `batch_stats`), so the loss is a fixed function of the parameters: in
  training mode it would also depend on how the examples are grouped into
  (ghost) batches.

  Args:
    model: a flax module called as `model.apply(variables, x, train=...)`.
    batch_stats: the batch-norm running averages ({} for a model without).
    batch: the fixed examples: `inputs`, int32 `labels`, and optionally
      `mask` (1 for a real example, 0 for padding, left out of the mean).
      Arrays may be sharded (`sharding.global_batch`).
    label_smoothing: as in training (`step.cross_entropy`).
    normalisation: for uint8 inputs, the dataset's (mean, std)
      (`DatasetSpec.device_normalisation`), as in the train step.

  Returns:
    `loss_fn(params) -> scalar`, the mean cross-entropy over the (real)
    examples, as a `jax.tree_util.Partial` holding `batch_stats` and `batch`.
  """
  keys = ("inputs", "labels", "mask") if "mask" in batch else ("inputs", "labels")
  if normalisation is not None:
    normalisation = tuple(tuple(float(v) for v in part) for part in normalisation)
  loss = _EvalLoss(model, float(label_smoothing), normalisation)
  return Partial(loss, batch_stats, {key: batch[key] for key in keys})


def _as_pytree(loss_fn: Callable[[Any], jax.Array]) -> Partial:
  # A Partial is a pytree, so it can be an argument of a jitted function; its
  # bound arrays become arguments, its function part of the cache key.
  if not callable(loss_fn):
    raise ValueError(f"loss_fn: must be callable as loss_fn(params), got {type(loss_fn).__name__}")
  return loss_fn if isinstance(loss_fn, Partial) else Partial(loss_fn)


def _dot(a: Any, b: Any) -> jax.Array:
  return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _unit(tree: Any) -> Any:
  norm = optax.tree.norm(tree)
  # A zero Hessian-vector product (a flat loss) would divide by zero; the loop
  # stops on the zero Rayleigh quotient anyway, so any finite vector will do.
  scale = jnp.where(norm > 0, 1.0 / jnp.where(norm > 0, norm, 1.0), 0.0)
  return jax.tree.map(lambda x: x * scale.astype(x.dtype), tree)


def _random_like(key: jax.Array, tree: Any, sample: Callable) -> Any:
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(key, len(leaves))
  return treedef.unflatten([sample(k, x.shape, x.dtype) for k, x in zip(keys, leaves)])


@jax.jit
def _power_iteration(loss_fn, params, key, iterations, tol) -> Eigenvalue:
  grad_fn = jax.grad(loss_fn)

  def hvp(v):
    # Forward-over-reverse: one jvp through the gradient costs about two
    # gradients and never forms the Hessian.
    return jax.jvp(grad_fn, (params,), (v,))[1]

  def unconverged(carry):
    _, value, previous, count = carry
    return (count < iterations) & (jnp.abs(value - previous) > tol * jnp.abs(value))

  def step(carry):
    v, value, _, count = carry
    hv = hvp(v)
    # |v| = 1, so <v, Hv> is the Rayleigh quotient: the eigenvalue with its
    # sign, where |Hv| alone would lose a negative one.
    return _unit(hv), _dot(v, hv), value, count + 1

  v = _unit(_random_like(key, params, jax.random.normal))
  dtype = jnp.result_type(*jax.tree.leaves(params))
  # previous = inf makes the first test pass whatever the first estimate
  start = (v, jnp.zeros((), dtype), jnp.asarray(jnp.inf, dtype), jnp.zeros((), jnp.int32))
  _, value, previous, count = jax.lax.while_loop(unconverged, step, start)
  converged = jnp.abs(value - previous) <= tol * jnp.abs(value)
  return Eigenvalue(value, count, converged)


def hessian_top_eigenvalue(
  loss_fn: Callable[[Any], jax.Array],
  params: Any,
  *,
  iterations: int = 100,
  key: jax.Array | None = None,
  tol: float = 1e-5,
) -> Eigenvalue:
  """The eigenvalue of largest magnitude of the Hessian of `loss_fn` at `params`.

  Power iteration `v <- Hv / |Hv|` from a random unit vector, the Hessian
  applied by `jax.jvp` of `jax.grad` (forward-over-reverse), on the
  parameter pytree as it is (no flattening, so sharded leaves stay sharded).
  The estimate is the Rayleigh quotient `<v, Hv>`; the loop stops when it
  changes by at most `tol` relative between two iterations. It converges to
  the eigenvalue of largest *magnitude*: at a minimum that is the largest
  (positive) curvature, the measure of Keskar et al. 2017; away from one a
  negative eigenvalue can dominate, and is returned with its sign. The
  error left when the test passes is about `tol * r / (1 - r)` with `r`
  the squared ratio of the two largest magnitudes; with two dominant
  eigenvalues of equal magnitude and opposite sign it does not converge.
  The whole loop is one jitted `lax.while_loop`: one compile per loss
  function and parameter structure, none per call.

  Args:
    loss_fn: `loss_fn(params) -> scalar`, the loss over a fixed set of
      examples; a `jax.tree_util.Partial` (e.g. from `model_loss`) passes
      its arrays, sharded or not, as arguments of the compiled function.
    params: the parameter pytree, on one device or sharded over a mesh.
    iterations: the most Hessian-vector products to compute.
    key: the random start (default `jax.random.key(0)`).
    tol: the relative change of the estimate below which it stops.

  Returns:
    `Eigenvalue(value, iterations, converged)`, jax scalars.

  Raises:
    ValueError: naming `iterations`, `tol` or `loss_fn` when invalid.
  """
  if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
    raise ValueError(f"iterations: must be a positive integer, got {iterations!r}")
  if not tol >= 0:
    raise ValueError(f"tol: must be >= 0, got {tol!r}")
  key = jax.random.key(0) if key is None else key
  return _power_iteration(_as_pytree(loss_fn), params, key, iterations, tol)


@jax.jit
def _box_ascent(loss_fn, params, epsilon, steps, learning_rate, key) -> Sharpness:
  radius = jax.tree.map(lambda w: epsilon * (jnp.abs(w) + 1.0), params)

  def shifted(y):
    return loss_fn(jax.tree.map(jnp.add, params, y))

  value_and_grad = jax.value_and_grad(shifted)

  def step(_, carry):
    y, best = carry
    value, grad = value_and_grad(y)
    y = jax.tree.map(
      lambda y, g, r: jnp.clip(y + learning_rate * r * jnp.sign(g), -r, r), y, grad, radius
    )
    return y, jnp.maximum(best, value)

  loss = loss_fn(params)
  if key is None:
    start = jax.tree.map(jnp.zeros_like, params)
  else:
    start = _random_like(key, params, jax.random.uniform)
    start = jax.tree.map(lambda u, r: (2.0 * u - 1.0) * r, start, radius)
  y, best = jax.lax.fori_loop(0, steps, step, (start, loss))
  # y = 0 is in the box, so the maximum is never below f(w); the iterates are
  # not monotone (fixed steps can overshoot), hence the best of all of them.
  best = jnp.maximum(best, shifted(y))
  return Sharpness((best - loss) / (1.0 + loss) * 100.0, best, loss)


def epsilon_sharpness(
  loss_fn: Callable[[Any], jax.Array],
  params: Any,
  *,
  epsilon: float = 1e-3,
  steps: int = 20,
  learning_rate: float = 0.1,
  key: jax.Array | None = None,
) -> Sharpness:
  """Keskar et al.'s ε-sharpness of `loss_fn` at `params`, in percent.

  Keskar et al. 2017 (section 2.2.2, full space, `A = I`) define

      phi = (max_{y in C_eps} f(w + y) - f(w)) / (1 + f(w)) * 100,
      C_eps = {y : |y_i| <= eps (|w_i| + 1) for every i},

  the box being relative to each weight's size (plus one, so that zero
  weights still move), and use eps = 1e-3 and 5e-4 (`PAPER_EPSILONS`).

  They solve the inner maximisation with a few iterations of L-BFGS-B. Here
  it is projected sign-gradient ascent instead:
  `y <- clip(y + learning_rate * r * sign(grad f(w + y)), -r, r)` with `r` the
  box's half-widths. L-BFGS-B (scipy) runs on the host over one flat float64
  vector, so a sharded model would be gathered to one host at every
  iteration; the ascent is one jitted loop over the sharded pytree. The sign
  of the gradient is the steepest ascent direction of a box (the maximiser of
  the linearised loss over it is the corner `sign(g) r`), and it makes the
  step independent of the gradient's scale, which differs by orders of
  magnitude between layers and checkpoints, so one `learning_rate` (a fraction
  of each half-width) serves all; `steps >= 1 / learning_rate` can reach any
  corner. Like L-BFGS-B with few iterations it finds a local maximum in the
  box, a lower bound of the true one.

  Args:
    loss_fn: `loss_fn(params) -> scalar`, the training loss over a fixed set
      of examples (see `model_loss` and `hessian_top_eigenvalue`).
    params: the parameter pytree, on one device or sharded over a mesh.
    epsilon: the box's relative size.
    steps: ascent steps (each one gradient).
    learning_rate: each step, as a fraction of the box's half-width.
    key: None starts at `y = 0`, as the paper's ascent does; a key starts at a
      uniformly random point of the box. At an exact stationary point the
      gradient is zero and the ascent from `y = 0` cannot move.

  Returns:
    `Sharpness(sharpness, max_loss, loss)`, jax scalars.

  Raises:
    ValueError: naming `epsilon`, `steps`, `learning_rate` or `loss_fn`.
  """
  if not epsilon > 0:
    raise ValueError(f"epsilon: must be positive (the paper's: 1e-3, 5e-4), got {epsilon!r}")
  if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
    raise ValueError(f"steps: must be a positive integer, got {steps!r}")
  if not learning_rate > 0:
    raise ValueError(f"learning_rate: must be positive, got {learning_rate!r}")
  return _box_ascent(_as_pytree(loss_fn), params, epsilon, steps, learning_rate, key)


class SharpnessInputError(ValueError):
  """A workdir, step or setting a measurement cannot use; the message names the flag."""


def _check_arguments(examples: int, iterations: int, epsilon: float) -> None:
  for name, value in (("examples", examples), ("iterations", iterations)):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise SharpnessInputError(f"--{name}: must be a positive whole number, got {value!r}")
  if not (isinstance(epsilon, int | float) and math.isfinite(epsilon) and epsilon > 0):
    raise SharpnessInputError("--epsilon: must be a positive number (Keskar's: 1e-3, 5e-4)")


def at_checkpoint(
  workdir: str | pathlib.Path,
  *,
  step: int | None = None,
  examples: int = 2048,
  epsilon: float = 1e-3,
  iterations: int = 50,
  devices: Sequence[jax.Device] | None = None,
) -> dict[str, Any]:
  """Both measures at a checkpoint of a run, on its first `examples` training examples.

  The examples are the first positions of the training split, unaugmented
  (the same set at every step and on any number of devices), split over the
  devices; the parameters are placed as the trainer places them. The loss is
  the run's own (its label smoothing), with batch norm's running averages.
  Nothing is written into the workdir.

  Args:
    workdir: the run's workdir.
    step: which checkpoint (default: the latest).
    examples: how many training examples the loss covers.
    epsilon: Keskar's box size (`epsilon_sharpness`).
    iterations: the most Hessian-vector products of the power iteration,
      and the ascent steps of the box search.
    devices: the devices of the mesh (default: all).

  Returns:
    `step`, `examples`, `epsilon`, `loss`, `eigenvalue`, `eigen_iterations`,
    `converged`, `sharpness` (percent) and `max_loss`.

  Raises:
    SharpnessInputError: naming `--workdir`, `--step` or `--examples`.
    CheckpointError: the checkpoint cannot be read back as written.
  """
  _check_arguments(examples, iterations, epsilon)
  directory = pathlib.Path(workdir) / "checkpoints"
  if not directory.is_dir():
    raise SharpnessInputError(f"--workdir: {directory} does not exist: no run has saved there")
  checkpoints = ckpt.Checkpoints(directory)
  try:
    steps = checkpoints.all_steps()
    if not steps:
      raise SharpnessInputError(f"--workdir: {directory} holds no checkpoint")
    step = steps[-1] if step is None else step
    if step not in steps:
      raise SharpnessInputError(
        f"--step: no checkpoint at step {step} in {directory}; steps: {', '.join(map(str, steps))}"
      )
    experiment = Experiment.from_record(checkpoints.record(step), devices)
    size = experiment.spec.dataset.num_train_examples
    if examples > size:
      raise SharpnessInputError(
        f"--examples: must be at most the {size:,} examples of the training split, got {examples}"
      )
    state = st.restore_train_state(checkpoints, step, experiment.abstract_state())
  finally:
    checkpoints.close()
  loss_fn = model_loss(
    experiment.model,
    state.batch_stats,
    experiment.training_subset(examples),
    label_smoothing=experiment.spec.label_smoothing,
    normalisation=experiment.dataset.device_normalisation,
  )
  top = hessian_top_eigenvalue(loss_fn, state.params, iterations=iterations)
  box = epsilon_sharpness(loss_fn, state.params, epsilon=float(epsilon), steps=iterations)
  top, box = jax.device_get((top, box))
  return {
    "step": step,
    "examples": examples,
    "epsilon": float(epsilon),
    "loss": float(box.loss),
    "eigenvalue": float(top.value),
    "eigen_iterations": int(top.iterations),
    "converged": bool(top.converged),
    "sharpness": float(box.sharpness),
    "max_loss": float(box.max_loss),
  }
