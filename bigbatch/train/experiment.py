"""One experiment: a spec's plan, optimizer, model, loss, data, mesh and train step.

Every command builds the same `Experiment`: `bigbatch train` (`Trainer`),
`lr-find`, `probe`, `sharpness`, `ensemble` and `noise`. It is built once,
before any long work: from a `RunSpec` (read from a config, or written in
Python with your own model class, data source or loss function), or from a
checkpoint's record (`Experiment.from_record`), so a measurement rebuilds the
run exactly as it trained. Nothing compiles and no data is read until asked
(`train_source`, `initial_state`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax

from bigbatch import data, partitioning
from bigbatch import sharding as shd
from bigbatch import step as st
from bigbatch.models import compute_dtype, flops, init_rngs
from bigbatch.plan import adaptive, elastic
from bigbatch.plan.phases import Plan
from bigbatch.spec import ConfigError, RunSpec
from bigbatch.spec.block import IN_MEMORY
from bigbatch.step import memory
from bigbatch.train import build, preflight

__all__ = ["Experiment", "elastic_slices"]


@dataclasses.dataclass(frozen=True, eq=False)
class Experiment:
  """What a run is made of, checked and built from its spec; see `from_spec`."""

  spec: RunSpec
  plan: Plan  # for an adaptive strategy: the plan before any decision
  optimizer: Any
  model: Any
  dataset: data.DatasetSpec
  loss_fn: Callable
  mesh: Any
  # the state a run starts from instead of the seed's (a branch's: its parent's
  # checkpoint); `start(experiment)` gives it in place on the mesh
  start: Callable[[Experiment], st.TrainState] | None = None

  @classmethod
  def from_spec(
    cls,
    spec: RunSpec,
    *,
    devices: Sequence[jax.Device] | None = None,
    mesh: Any = None,
    workdir: Any = None,
    say: Callable[[str], None] = print,
    adjustable_rate: bool = False,
  ) -> Experiment:
    """The experiment of `spec` on `mesh` (default: `spec.mesh` over `devices`, all by
    default).

    A `plan.max_batch_size` of `AUTO` is measured first by the memory probe
    (cached in `workdir/memory_probe.json` when a workdir is given).
    `adjustable_rate` keeps the learning rate in the optimizer's state
    (`optim.set_hyperparams`), as a range test sets it step by step.

    Raises:
      ConfigError, DataError, ShardingError, ProbeError: naming the field.
    """
    spec = build.resolved(spec)  # a language model's tokens, in epochs of its corpus
    if spec.plan.max_batch_size == memory.AUTO:
      result = memory.probe(cls.for_probe(spec, devices=devices, mesh=mesh), workdir, say)
      say(memory.format_probe(result, spec.dataset.sequence_length))
      spec = spec.replace(plan=dataclasses.replace(spec.plan, max_batch_size=result.max_batch_size))
    plan = build.plan_of(spec)
    optimizer = build.optimizer_of(spec, adaptive.constants(plan) if adjustable_rate else plan)
    dataset = data.spec_for(spec.dataset.block())
    model = build.model_of(spec, dataset.num_classes, dataset.features)
    loss_fn = build.loss_fn_of(spec, dataset)  # checked on the model's outputs below
    if mesh is None:
      mesh = shd.make_mesh(spec.mesh.data, spec.mesh.fsdp, spec.mesh.tensor, devices=devices)
    experiment = cls(spec, plan, optimizer, model, dataset, loss_fn, mesh)
    # every model error is one line now, before anything compiles or the data is read
    preflight.trace_steps(experiment)
    preflight.probe_causality(experiment)
    return experiment

  @classmethod
  def for_probe(cls, spec: RunSpec, **options: Any) -> Experiment:
    """The experiment the memory probe compiles the step of: `spec` with the baseline's
    plan and no cap (the optimizer's structure is what matters, not the batches the plan
    would take)."""
    baseline = dataclasses.replace(spec.plan, strategy="decay_lr", max_batch_size=None)
    return cls.from_spec(spec.replace(plan=baseline), **options)

  @classmethod
  def from_record(
    cls, record: Mapping[str, Any], devices: Sequence[jax.Device] | None = None
  ) -> Experiment:
    """The experiment a checkpoint's or a snapshot's record was trained with, on
    `devices` (default: all) with its `mesh.fsdp` and `mesh.tensor` splits: a
    measurement need not run on the devices that trained.

    Raises:
      ConfigError: when the record's model or data source was an object that cannot be
        imported again (an experiment built in Python with an in-memory source).
    """
    spec = RunSpec.read(record["config"])
    if IN_MEMORY in (spec.dataset.source, spec.model.name, spec.loss):
      raise ConfigError(
        "dataset.source: the run trained on an object in memory, which a checkpoint "
        "cannot hold; measure it from Python with Experiment.from_spec"
      )
    mesh = shd.make_mesh(-1, spec.mesh.fsdp, spec.mesh.tensor, devices=devices)
    return cls.from_spec(spec, mesh=mesh)

  # -- checks a command makes before its long work ------------------------------------

  def check_for_training(self) -> None:
    """Refuses a plan or an evaluation batch the mesh cannot split, or a training split
    whose size is not `dataset.num_train_examples`; opens both splits.

    Raises:
      ConfigError, ShardingError: naming the field.
    """
    build.check_plan_on_mesh(self.spec, self.plan, self.mesh)
    elastic_slices(self.spec, self.plan, self.mesh.devices.size)
    shd.check_batch_size(self.spec.eval.batch_size, self.mesh, field="eval_batch_size")
    self.check_train_size()
    _ = self.eval_source  # opened now: a missing split fails here, before the first step

  def check_batch_sizes(self, batch_sizes: Sequence[int], field: str) -> None:
    """Refuses a batch (of a range test) that the mesh cannot split, naming `field`."""
    for batch_size in batch_sizes:
      shd.check_batch_size(
        batch_size, self.mesh, ghost_batch_size=self.spec.ghost_batch_size, field=field
      )

  def check_train_size(self) -> None:
    size = len(self.train_source)
    if size != self.plan.dataset_size:
      raise ConfigError(
        f"dataset.num_train_examples: {self.plan.dataset_size:,} but the "
        f"{self.dataset.tfds_name} train split has {size:,} examples"
      )

  # -- what is built on demand --------------------------------------------------------

  @functools.cached_property
  def train_source(self) -> Any:
    return data.load_split(self.spec.dataset.block(), "train")

  @functools.cached_property
  def eval_source(self) -> Any:
    return data.load_split(self.spec.dataset.block(), "eval")

  @functools.cached_property
  def train_step(self) -> build.TrainStep:
    """The train step (`.fn`) and whether it measures the noise scale (`.measures_noise`)."""
    return build.train_step_of(
      self.spec, self.model, self.optimizer, self.plan, self.mesh, self.dataset, self.loss_fn
    )

  @property
  def example_inputs(self) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct((1, *self.dataset.input_shape), self.dataset.model_input_dtype)

  @functools.cached_property
  def throughput(self) -> flops.Throughput:
    """Tokens per example, the model's FLOPs per token and the devices' peak: what turns
    examples/s into tokens/s and MFU (a language model's; unknown parts None)."""
    length = self.dataset.tokens_per_example
    devices = self.mesh.devices.flat
    peaks = [
      flops.peak_flops(d.device_kind, compute_dtype(self.spec.compute_dtype)) for d in devices
    ]
    return flops.Throughput(
      length,
      flops.model_flops_per_token(self.model, length),
      sum(peaks) if peaks and None not in peaks else None,
    )

  @property
  def fsdp_min_size(self) -> int:
    return self.spec.mesh.fsdp_min_size

  @property
  def placement(self) -> dict[str, Any]:
    """How parameters are placed on the mesh: the smallest unannotated one split along
    `fsdp`, and the rules for annotated ones (`partitioning`)."""
    return {"fsdp_min_size": self.fsdp_min_size, "rules": self.spec.mesh.rules}

  def abstract_state(self) -> st.TrainState:
    """The train state's shapes and dtypes placed on the mesh: a restore target."""
    return st.abstract_train_state(
      self.model, self.optimizer, self.example_inputs, self.mesh, **self.placement
    )

  @functools.cached_property
  def _init(self) -> Callable:
    # jitted once, so that each start (a range test's batch sizes) takes a fresh copy of
    # the same state without compiling the init again
    shardings = st.train_state_shardings(
      self.model, self.optimizer, self.example_inputs, self.mesh, **self.placement
    )
    inputs = self.example_inputs
    return jax.jit(
      lambda rng: st.init_train_state(self.model, self.optimizer, inputs, rng),
      out_shardings=shardings,
    )

  def initial_state(self) -> st.TrainState:
    """The initial train state from `spec.seed` (or `start`), in place on the mesh."""
    if self.start is not None:
      return self.start(self)
    return self._init(jax.random.key(self.spec.seed))

  def variables_target(self) -> dict[str, Any]:
    """`{"params", "batch_stats"}` as a snapshot holds them, placed like the train state's."""
    inputs = self.example_inputs
    with partitioning.context(None):  # an NNX parameter is not placed as it is built
      abstract = jax.eval_shape(
        lambda: self.model.init(
          init_rngs(jax.random.key(0)), jax.numpy.zeros(inputs.shape, inputs.dtype), train=False
        )
      )
    variables = partitioning.placed(
      abstract, self.mesh, self.spec.mesh.rules, min_size=self.fsdp_min_size
    )
    return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}

  def training_subset(self, num_examples: int) -> dict[str, jax.Array]:
    """The first `num_examples` of the training split, unaugmented, as one sharded batch.

    The batch is padded to a multiple of the devices and `mask` marks the real
    examples, so the subset is the same on any number of devices.
    """
    devices = shd.data_parallel_size(self.mesh)
    size = -(-num_examples // devices) * devices
    batches = data.eval_batches(
      self.train_source,
      self.dataset,
      batch_size=size,
      local=shd.process_batch_slice(self.mesh, size),
      num_examples=num_examples,
    )
    (batch,) = list(batches)
    return shd.global_batch(self.mesh, batch, size)


def elastic_slices(
  spec: RunSpec, plan: Plan, devices: int, measured: elastic.StepTime | None = None
) -> tuple[tuple[elastic.PhaseSlice, ...], int] | tuple[None, None]:
  """Each phase's slice (`bigbatch.plan.elastic`) and the per-device batch, where
  `elastic` is on ((None, None) where off); `devices`: this run's, for a per-device batch
  taken from `plan.max_batch_size`; `measured`: step times in place of the config's model.

  Raises:
    ConfigError: naming the `elastic` field the plan cannot run on.
  """
  settings = spec.elastic
  if not settings.enabled:
    return None, None
  if settings.until_phase_end and plan.strategy in adaptive.STRATEGIES:
    raise ConfigError(
      f"elastic.until_phase_end: a fixed plan's; plan.strategy {plan.strategy} decides its "
      "phases while training"
    )
  model = measured or settings  # both hold example_seconds and step_seconds
  try:
    per = elastic.per_device_batch(settings.per_device_batch, plan.max_batch_size, devices)
    parts = elastic.slices(
      plan, settings.slice_sizes, per,
      example_seconds=model.example_seconds, step_seconds=model.step_seconds,
    )  # fmt: skip
  except elastic.ElasticError as error:
    raise ConfigError(str(error)) from None
  return parts, per
