"""The largest batch whose compiled train step fits in device memory.

The probe lowers and compiles the real sharded train step on abstract inputs
(`jax.ShapeDtypeStruct`s: no data, nothing allocated) and reads XLA's own
account of it, `compiled.memory_analysis()`: arguments + outputs +
temporaries - aliased (donated) bytes, per device. It compares that with what
a device has (`memory_stats()["bytes_limit"]` on GPU/TPU; on CPU a configured
budget, by default half the RAM shared among the CPU devices) less a safety
margin, and searches the per-device batch over multiples of the ghost batch:
doubling, then bisection. Where `memory_analysis()` is unavailable or all
zeros it says so and measures instead: it runs the step on zeros and treats
an out-of-memory error as "does not fit".
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

# `plan.max_batch_size` value that asks for the probe (`auto` on the command line).
from bigbatch.spec import AUTO  # noqa: F401  (re-exported)


class ProbeError(ValueError):
  """No batch fits, or the budget cannot be known; the message says which."""


@dataclasses.dataclass(frozen=True)
class Measurement:
  """What one per-device batch needs, as XLA compiled it (bytes per device)."""

  per_device_batch: int
  arguments: int
  outputs: int
  temporaries: int
  aliased: int
  measured: bool = False  # from a run (no memory analysis), not from the compiler

  @property
  def total(self) -> int:
    return self.arguments + self.outputs + self.temporaries - self.aliased


@dataclasses.dataclass(frozen=True)
class ProbeResult:
  """The search: every batch tried, the budget, and the largest that fits."""

  per_device_batch: int
  data_parallel: int
  budget: int
  usable: int
  budget_source: str
  measurements: tuple[Measurement, ...]

  @property
  def max_batch_size(self) -> int:
    """The global cap: the per-device batch on every data-parallel device."""
    return self.per_device_batch * self.data_parallel

  def to_dict(self) -> dict[str, Any]:
    out = dataclasses.asdict(self)
    out["max_batch_size"] = self.max_batch_size
    return out

  @classmethod
  def from_dict(cls, data: Mapping[str, Any]) -> ProbeResult:
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in data.items() if k in fields}
    kwargs["measurements"] = tuple(Measurement(**m) for m in data["measurements"])
    return cls(**kwargs)


def measure_compiled(compiled: Any, per_device_batch: int) -> Measurement | None:
  """XLA's memory account of a compiled step, or None where it gives none."""
  try:
    stats = compiled.memory_analysis()
  except (NotImplementedError, jax.errors.JaxRuntimeError):
    return None
  if stats is None:
    return None
  values = (
    int(stats.argument_size_in_bytes),
    int(stats.output_size_in_bytes),
    int(stats.temp_size_in_bytes),
    int(stats.alias_size_in_bytes),
  )
  if not any(values):
    return None
  return Measurement(per_device_batch, *values)


def device_budget(
  device: jax.Device | None = None,
  *,
  cpu_bytes: int | None = None,
  cpu_fraction: float = 0.5,
) -> tuple[int, str]:
  """Bytes one device may use, and where the figure comes from.

  GPU/TPU: the runtime's `bytes_limit`. CPU: `cpu_bytes` if given, else
  `cpu_fraction` of the machine's RAM shared equally among the CPU devices
  (they all live in one process's memory).
  """
  device = device or jax.local_devices()[0]
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  if stats and stats.get("bytes_limit"):
    return int(stats["bytes_limit"]), f"{device.device_kind} bytes_limit"
  if device.platform != "cpu":
    raise ProbeError(
      f"memory.budget_bytes: {device.device_kind} reports no bytes_limit; set the budget"
    )
  if cpu_bytes:
    return int(cpu_bytes), "memory.budget_bytes"
  ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  devices = jax.local_device_count()
  return int(
    ram * cpu_fraction / devices
  ), f"{cpu_fraction:g} of {ram / 2**30:.1f} GiB RAM / {devices} CPU devices"


def search(
  needs: Callable[[int], Measurement],
  *,
  usable: int,
  multiple: int,
  limit: int | None = None,
) -> tuple[int, list[Measurement]]:
  """The largest per-device batch (a multiple of `multiple`) whose needs fit `usable`.

  Doubling from `multiple` until a batch does not fit (or passes `limit`),
  then bisection between the last that fit and the first that did not.

  Raises:
    ProbeError: when not even `multiple` fits.
  """
  tried: dict[int, Measurement] = {}

  def fits(batch: int) -> bool:
    if batch not in tried:
      tried[batch] = needs(batch)
    return tried[batch].total <= usable

  if not fits(multiple):
    need = tried[multiple].total
    raise ProbeError(
      f"memory: no batch fits: a per-device batch of {multiple} needs {need / 2**20:,.1f} MiB, "
      f"the budget leaves {usable / 2**20:,.1f} MiB"
    )
  good, bad = multiple, None
  while bad is None:
    nxt = good * 2
    if limit is not None and nxt > limit:
      bad = (limit // multiple + 1) * multiple  # bisect up to the limit, never past it
      break
    if fits(nxt):
      good = nxt
    else:
      bad = nxt
  if bad is not None:
    lo, hi = good // multiple, bad // multiple  # in units of `multiple`
    while hi - lo > 1:
      mid = (lo + hi) // 2
      if fits(mid * multiple):
        lo = mid
      else:
        hi = mid
    good = lo * multiple
  return good, [tried[b] for b in sorted(tried)]


def cache_key(parts: Mapping[str, Any]) -> str:
  """A stable key for a probe's inputs (model, optimizer, dtype, device, mesh, budget)."""
  return json.dumps(parts, sort_keys=True, default=str)


def load_cached(path: pathlib.Path, key: str) -> ProbeResult | None:
  if not path.exists():
    return None
  entries = json.loads(path.read_text())
  return ProbeResult.from_dict(entries[key]) if key in entries else None


def store(path: pathlib.Path, key: str, result: ProbeResult) -> None:
  entries = json.loads(path.read_text()) if path.exists() else {}
  entries[key] = result.to_dict()
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(entries, indent=1, sort_keys=True) + "\n")


def format_probe(result: ProbeResult, tokens_per_example: int | None = None) -> str:
  """The probe's table: per-device batch -> bytes needed vs available (a language model's
  batches also in tokens: `tokens_per_example` is its sequence length)."""
  mib = 2**20
  lines = [
    f"budget per device: {result.budget / mib:,.1f} MiB ({result.budget_source}); "
    f"usable after the margin: {result.usable / mib:,.1f} MiB",
    "per-device batch  arguments MiB  outputs MiB  temps MiB  aliased MiB  needed MiB  fits",
  ]
  for m in result.measurements:
    source = " (measured)" if m.measured else ""
    lines.append(
      f"{m.per_device_batch:16,d}  {m.arguments / mib:13,.1f}  {m.outputs / mib:11,.1f}  "
      f"{m.temporaries / mib:9,.1f}  {m.aliased / mib:11,.1f}  {m.total / mib:10,.1f}  "
      f"{'yes' if m.total <= result.usable else 'no'}{source}"
    )
  lines.append(
    f"largest per-device batch: {result.per_device_batch:,}; x {result.data_parallel} "
    f"data-parallel devices = max_batch_size {result.max_batch_size:,}"
  )
  if tokens_per_example:
    tokens = result.max_batch_size * tokens_per_example
    lines[-1] += f" sequences of {tokens_per_example:,} = plan.max_batch_tokens {tokens:,}"
  return "\n".join(lines)


def _probed(experiment: Any) -> dict[str, Any]:
  """What a probe's result depends on besides the budget and the batch grid (its cache key)."""
  spec, dataset, mesh = experiment.spec, experiment.dataset, experiment.mesh
  return {
    "model": spec.model.to_dict(),
    "input": dataset.input_shape,
    "input_dtype": dataset.input_dtype.name,
    "optimizer": spec.optimizer.display_name,  # a factory by its import path
    "dtype": spec.compute_dtype,
    "backend": jax.default_backend(),
    "device_kind": mesh.devices.flat[0].device_kind,
    "mesh": dict(mesh.shape),
    "rules": spec.mesh.rules,  # where an annotated model's parameters live
    "processes": jax.process_count(),
  }


def probe(
  experiment: Any,
  workdir: str | pathlib.Path | None = None,
  log: Callable[[str], None] = print,
) -> ProbeResult:
  """Probes the largest batch of an experiment's model, optimizer, dtype and mesh.

  `experiment` is a `bigbatch.Experiment` whose plan is the baseline's (the
  optimizer's structure is what matters, not the batches the plan would
  take). Reads its spec's `memory` block: `budget_bytes` (CPU; default a
  fraction of RAM), `cpu_fraction`, `margin` (fraction of the budget kept
  free). The result is cached in `WORKDIR/memory_probe.json` by everything it
  depends on.
  """
  import math

  from bigbatch import data
  from bigbatch import sharding as shd
  from bigbatch import step as st

  spec, mesh = experiment.spec, experiment.mesh
  shards = shd.data_parallel_size(mesh)
  budget, source = device_budget(
    mesh.devices.flat[0], cpu_bytes=spec.memory.budget_bytes, cpu_fraction=spec.memory.cpu_fraction
  )
  usable = int(budget * (1.0 - spec.memory.margin))
  ghost = spec.ghost_batch_size or 1
  multiple = spec.plan.batch_multiple
  per_device = multiple // shards if multiple % shards == 0 else multiple
  unit = math.lcm(ghost, max(per_device, 1))
  limit = spec.dataset.num_train_examples // shards
  key = cache_key({**_probed(experiment), "ghost": ghost, "usable": usable, "unit": unit,
                   "limit": limit})  # fmt: skip
  cache = pathlib.Path(workdir) / "memory_probe.json" if workdir else None
  if cache is not None and (hit := load_cached(cache, key)) is not None:
    log(f"memory probe: cached in {cache}")
    return hit

  steps = st.CompiledSteps(
    experiment.train_step.fn,
    experiment.abstract_state(),
    data.example_batch(experiment.dataset),
    mesh,
    ghost_batch_size=ghost,
  )
  warned = []

  def needs(batch: int) -> Measurement:
    compiled = steps.compiled(batch * shards)
    measured = measure_compiled(compiled, batch)
    if measured is not None:
      return measured
    if not warned:
      log("memory probe: memory_analysis() gives nothing on this backend; measuring real runs")
      warned.append(True)
    return _run_and_see(steps, experiment, batch, shards, usable)

  best, tried = search(needs, usable=usable, multiple=unit, limit=limit)
  steps.close()
  result = ProbeResult(best, shards, budget, usable, source, tuple(tried))
  if cache is not None and jax.process_index() == 0:
    store(cache, key, result)
  return result


def _run_and_see(steps, experiment: Any, batch: int, shards: int, usable: int) -> Measurement:
  """Runs the step on zeros; an out-of-memory error means it does not fit."""
  from bigbatch import data
  from bigbatch import sharding as shd

  state = experiment.initial_state()
  example = data.example_batch(experiment.dataset)
  host = {k: np.zeros((batch * shards, *v.shape), v.dtype) for k, v in example.items()}
  try:
    jax.block_until_ready(steps(state, shd.global_batch(experiment.mesh, host, batch * shards)))
    fits = True
  except jax.errors.JaxRuntimeError as error:
    if "RESOURCE_EXHAUSTED" not in str(error):
      raise
    fits = False
  return Measurement(batch, 0, 0, 0 if fits else usable + 1, 0, measured=True)
