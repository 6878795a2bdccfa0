"""The critical batch measured by branching, against the measured gradient noise scale.

usage: python tools/study_cbs.py [--only mnist1d lm_tiny] [--workdir workdir/cbs]
                                 [--out docs/results/cbs] [--data-dir DIR] [--quiet]

The evidence for `bigbatch cbs` (docs/CRITICAL_BATCH.md). One run per model,
checkpointed near 10%, 40%, 70% and 90% of its updates (one point in each
phase of the step schedule, none on a boundary); from each of those steps the
branches of `bigbatch cbs` (`bigbatch.measure.branches`, tolerance auto), set
against the B_simple the run measured in the step there, with its interval:
- `mnist1d`: `mnist1d_decay_lr` (cnn1d, momentum SGD, batch 128) as in
  tools/reproduce.py (20 epochs) and study_adaptive.py (B_simple over half an
  epoch); branches at 128 to 2,048 examples, 50,000 examples each;
- `lm_tiny`: `lm_tiny_base` (AdamW, 4,096 tokens) with `plan.adam_rule=sqrt`
  (a branch at k x the batch takes lr x sqrt(k)), 1,024,000 tokens scaled as
  in tools/study_lm.py; branches at 4,096 to 65,536 tokens, 131,072 each.
Beyond `bigbatch cbs`: the smallest batch in more data orders (a tolerance of
2 sigma from all), for lm_tiny a re-run on 8 CPU devices measuring B_simple;
a branch whose loss goes non-finite loses. The printed `bigbatch cbs` commands
read the branches back. Writes results.json, results.md and `<model>.png` to
--out, keeping the other model's results there.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import pathlib
import shlex
import statistics
import subprocess
import sys
import time
from typing import NamedTuple

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import reproduce  # the sibling tools: runs, configs, training, bookkeeping
import study_adaptive
import study_lm

FRACTIONS = (0.1, 0.4, 0.7, 0.9)  # of the run's updates: one point in each phase
NOISE_KEYS = ("grad_noise_scale", "grad_noise_scale_low", "grad_noise_scale_high")


class Study(NamedTuple):
  """One model: its run, and the branches `bigbatch cbs` takes from its checkpoints."""

  run: reproduce.Run
  fields: dict  # the run's overrides of its recipe
  batches: tuple[int, ...]  # as `bigbatch cbs --batch-sizes` takes them (tokens for an LM)
  budget: int  # `--examples` (`--tokens` for an LM)
  checkpoint_every: int  # steps: every branch point is a multiple of this
  length: int | None = None  # tokens per sequence (a language model)
  orders: int = 2  # data orders of the smallest batch (2: `bigbatch cbs`'s pair)
  remeasure: dict | None = None  # overrides of a re-run that measures B_simple only

  @property
  def unit(self) -> str:
    return "tokens" if self.length else "examples"

  def command(self, workdir: pathlib.Path, step: int) -> str:
    batches = ",".join(str(b) for b in self.batches)
    return (
      f"bigbatch cbs --workdir {workdir} --step {step} --batch-sizes {batches} "
      f"--{self.unit} {self.budget}"
    )


# checkpoints every 800 steps (2.05 epochs; a multiple of the 50 steps between logged
# rows, so that B_simple is logged at each), all kept
MNIST = Study(
  reproduce.Run("mnist1d", "MNIST-1D, cnn1d, momentum SGD", "mnist1d_decay_lr.py", None),
  {**reproduce.common_fields(20), **study_adaptive.STUDY_FIELDS,
   "checkpoint_every_steps": 800, "keep_checkpoints": 100},
  batches=(128, 256, 512, 1024, 2048),
  budget=50_000,
  checkpoint_every=800,
  orders=6,
)  # fmt: skip
# 250 updates of 4,096 tokens: checkpoints every 20 (B_simple is logged every 10 steps)
LM = Study(
  reproduce.Run(
    "lm_tiny", "lm_tiny, AdamW, sqrt rule", "lm_tiny_base.py", None, (("plan.adam_rule", "sqrt"),)
  ),
  {**study_lm.common_fields(1_024_000, 512), "checkpoint_every_steps": 20, "keep_checkpoints": 100},
  batches=(4096, 8192, 16384, 32768, 65536),
  budget=131_072,
  checkpoint_every=20,
  length=study_lm.SEQUENCE_LENGTH,
  orders=4,  # each a minute on 2 cores; the pair alone can be several times off (MNIST-1D)
  # On one device B_simple comes from the two halves of 32 sequences, and over the run's
  # 250 steps neither |G|² nor tr Σ is ever resolved. The same run (seed, data order) on 8
  # CPU devices has 8 groups a step, averaged over 204,800 tokens (50 steps).
  remeasure={"noise.horizon_tokens": 204_800, "checkpoint_every_steps": 100_000},
)
REMEASURE_DEVICES = 8
STUDIES = {"mnist1d": MNIST, "lm_tiny": LM}


def branch_steps(total: int, every: int, fractions=FRACTIONS) -> list[int]:
  """The checkpointed steps (multiples of `every`, before the end) nearest to each fraction
  of a run of `total` updates, each once."""
  last = (total - 1) // every * every
  return sorted({min(max(every, round(f * total / every) * every), last) for f in fractions})


def noise_at(rows: list[dict], step: int) -> dict:
  """B_simple as the run logged it last at or before `step`: that row's step and the
  value and bounds (None where unknown: no value while |G|² is not resolved, no upper
  bound then either)."""
  from bigbatch.plan import noise

  last = ([r for r in rows if r.get("step", 0) <= step and NOISE_KEYS[1] in r] or [{}])[-1]
  value, low, high = (noise.known(last.get(k)) for k in NOISE_KEYS)
  return {"step": last.get("step"), "value": value, "low": low, "high": high}


def noise_trace(rows: list[dict]) -> dict[str, list]:
  """Every logged step with a noise measurement: step, batch and B_simple (examples)."""
  measured = [r for r in rows if NOISE_KEYS[1] in r]
  return {
    "step": [int(r["step"]) for r in measured],
    "epoch": [r.get("epoch") for r in measured],
    "tokens": [r.get("tokens") for r in measured],
    "batch": [int(r["batch_size"]) for r in measured],
    **{key: [noise_at([r], r["step"])[key] for r in measured] for key in ("value", "low", "high")},
  }


def run_branches(parent, batches: list[int], budget: int, orders: int) -> tuple[list, list]:
  """`bigbatch cbs`'s branches (examples per step), then the smallest batch again in
  `orders - 1` other data orders (the first is `bigbatch cbs`'s repeat); a branch whose
  loss goes non-finite is kept as an infinite loss."""
  from bigbatch.measure import branches
  from bigbatch.measure.critical_batch import BranchResult
  from bigbatch.train.loop import NonFiniteLossError

  per = parent.tokens_per_example or 1
  out = []
  repeats = [(batches[0], k) for k in range(1, orders)]
  for batch, repeat in [(b, 0) for b in batches] + repeats:
    spec = branches.branch_spec(parent, batch, budget, repeat=repeat)
    suffix = "" if repeat == 0 else "_repeat" if repeat == 1 else f"_repeat{repeat}"
    where = parent.root / f"{batch * per}{suffix}"
    try:
      out.append(branches.run_branch(parent, spec, where))
    except NonFiniteLossError as error:
      print(f"branch {batch * per:,} diverged: {error}", flush=True)
      out.append(BranchResult(batch, -(-budget // batch), math.inf, ()))
  return out[: len(batches)], out[len(batches) :]


def orders_tolerance(losses: list[float], floor: float = 1e-4) -> float:
  """Two sigma of a branch's final loss from its losses in several data orders (2 x their
  sample standard deviation; with two, `bigbatch cbs`'s sqrt(2) |d|), at least `floor`."""
  finite = all(math.isfinite(v) for v in losses)
  return max(2.0 * statistics.stdev(losses), floor) if finite else math.inf


def branch_at(workdir: pathlib.Path, step: int, study: Study) -> dict:
  """The branches from `step` and the two critical batches: the result of `bigbatch cbs`
  (also written to RUN/cbs/step_S as cbs.json and cbs.png, as the command does)."""
  from bigbatch import workdir as wd
  from bigbatch.cli.cbs import format_cbs, plot
  from bigbatch.measure import branches
  from bigbatch.measure import critical_batch as cb

  parent, per = branches.open_parent(workdir, step), study.length or 1
  batches = [b // per for b in study.batches]
  branches.check_batch_sizes(parent, batches, None)
  lock = wd.Lock(parent.workdir)
  try:
    results, repeats = run_branches(parent, batches, study.budget // per, study.orders)
  finally:
    lock.release()
  repeat, orders = repeats[0], [r.final_loss for r in (results[0], *repeats)]
  tolerance, wide = cb.tolerance_from_repeat(orders[0], orders[1]), orders_tolerance(orders)
  zhang, to_target = cb.zhang_critical_batch(results, results[0].final_loss)
  result = {
    "workdir": str(workdir), "step": step, "run_batch_size": parent.batch_size,
    "budget_examples": study.budget // per, "tokens_per_example": study.length,
    "tolerance": tolerance, "tolerance_from_repeat": repeat.final_loss,
    "branches": [
      {"batch_size": r.batch_size, "steps": r.steps, "final_loss": r.final_loss,
       "curve": [list(p) for p in r.curve], "steps_to_target": to_target[r.batch_size][0],
       "ideal_steps": to_target[r.batch_size][1]}
      for r in results
    ],
    "critical_batch": cb.critical_batch(results, tolerance),
    "zhang_critical_batch": zhang,
    "b_simple": parent.noise_scale(),
    # beyond `bigbatch cbs`: the tolerance from every data order of the smallest batch
    "order_losses": orders, "tolerance_orders": wide,
    "critical_batch_orders": cb.critical_batch(results, wide),
  }  # fmt: skip
  print(format_cbs(result, parent), flush=True)
  plot(result, parent, parent.root / "cbs.png")
  (parent.root / "cbs.json").write_text(json.dumps(_finite(result), indent=1) + "\n")
  return result


def _finite(value):
  """`value` with every non-finite float as None (JSON has no infinity)."""
  return json.loads(json.dumps(value), parse_constant=lambda _: None)


def summarize(result: dict, rows: list[dict], study: Study, remeasured=None) -> dict:
  """A table row from a `bigbatch cbs` result and the run's metrics rows (and those of its
  re-run that measures B_simple, if any): every batch in the study's unit (examples, or
  tokens for a language model)."""
  per = study.length or 1
  step = result["step"]
  noise = noise_at(rows, step)

  def scaled(noise: dict) -> dict:
    return {k: None if noise[k] is None else noise[k] * per for k in ("value", "low", "high")}

  extra = {} if remeasured is None else {"b_simple_remeasured": scaled(noise_at(remeasured, step))}
  zhang = result["zhang_critical_batch"]
  at = next((r for r in rows if r.get("step") == step), {})
  return {
    "step": step,
    "epoch": at.get("epoch"),
    "tokens": at.get("tokens"),
    "run_batch": result["run_batch_size"] * per,
    "noise_step": noise["step"],
    "b_simple": scaled(noise),
    **extra,
    "merrill": result["critical_batch"] * per,
    "merrill_orders": result["critical_batch_orders"] * per,
    "zhang": None if zhang is None else zhang * per,
    "tolerance": result["tolerance"],
    "tolerance_orders": result["tolerance_orders"],
    "orders": len(result["order_losses"]),
    "losses": {
      str(b["batch_size"] * per): None if not math.isfinite(b["final_loss"]) else b["final_loss"]
      for b in result["branches"]
    },
  }


def bracket(critical: int | None, batches) -> tuple[float, float] | None:
  """Where the critical batch lies, given the batches tried: from the largest that did not
  lose (0 when that is the smallest, which cannot lose to itself) to the next one tried
  (infinite past the largest). None where unknown (Zhang's, with no target reached)."""
  if critical is None:
    return None
  above = min((b for b in batches if b > critical), default=math.inf)
  return (0.0 if critical == min(batches) else float(critical)), float(above)


def agreement(row: dict, batches, key: str = "merrill", noise: str = "b_simple") -> dict:
  """B_simple against the branched (Merrill) critical batch at one step: their ratio
  (`> r` where only B_simple's lower bound is known) and whether B_simple's interval meets
  the critical batch's bracket (None where nothing is known of B_simple)."""
  noise, critical = row[noise], row[key]
  where = bracket(critical, batches)
  if noise["low"] is None:
    return {"ratio": None, "ratio_text": "—", "overlap": None}
  high = math.inf if noise["high"] is None else noise["high"]
  overlap = noise["low"] < where[1] and where[0] <= high
  if noise["value"] is None or noise["high"] is None:
    ratio = noise["low"] / critical
    return {"ratio": None, "ratio_text": f"> {ratio:.2g}", "overlap": overlap}
  ratio = noise["value"] / critical
  return {"ratio": ratio, "ratio_text": f"{ratio:.2g}", "overlap": overlap}


def _batch(value: float | None, batches) -> str:
  """A critical batch as read from the batches tried: `≥ B` at the largest."""
  return "—" if value is None else f"{'≥ ' if value >= max(batches) else ''}{value:,.0f}"


def _noise_text(noise: dict) -> str:
  from bigbatch.plan.summary import format_noise_scale

  return format_noise_scale(noise["value"], noise["low"], noise["high"])


def _pair(auto: str, orders: str, row: dict) -> str:
  """A value with the auto tolerance, and with the tolerance from more data orders."""
  return auto if row.get("orders", 2) <= 2 else f"{auto} / {orders}"


def table(rows: list[dict], study: Study) -> list[str]:
  """The markdown table of one model: a line per branch point (with more than two data
  orders of the smallest batch, Merrill's batch and the tolerance twice: auto / from all)."""
  where = "tokens" if study.length else "epoch"
  how = "" if study.orders <= 2 else f": auto / {study.orders} orders"
  again = f"B_simple re-measured, {REMEASURE_DEVICES} devices" if study.remeasure else ""
  head = (
    f"| step | {where} | run's batch | B_simple [95%] | {again + ' | ' if again else ''}"
    f"critical batch (Merrill{how}) | critical batch (Zhang) | "
    f"{'re-measured ' if again else ''}B_simple / Merrill{how} | overlap{how} | tolerance{how} | "
    + " | ".join(f"loss at {b:,}" for b in study.batches)
    + " | wall s |"
  )
  lines = [head, "|" + "---|" * (10 + bool(again) + len(study.batches))]
  noise = "b_simple_remeasured" if again else "b_simple"
  for row in rows:
    position = f"{row['tokens']:,}" if study.length else f"{row['epoch']:.1f}"
    said = [agreement(row, study.batches, k, noise) for k in ("merrill", "merrill_orders")]
    ratio = _pair(*(s["ratio_text"] for s in said), row)
    overlap = _pair(*({None: "—", True: "yes", False: "no"}[s["overlap"]] for s in said), row)
    losses = [row["losses"].get(str(b)) for b in study.batches]
    merrill = _pair(*(_batch(row[k], study.batches) for k in ("merrill", "merrill_orders")), row)
    tolerance = _pair(*(f"{row[k]:.4f}" for k in ("tolerance", "tolerance_orders")), row)
    lines.append(
      f"| {row['step']:,} | {position} | {row['run_batch']:,} | {_noise_text(row['b_simple'])} "
      + (f"| {_noise_text(row[noise])} " if again else "")
      + f"| {merrill} | {_batch(row['zhang'], study.batches)} "
      f"| {ratio} | {overlap} | {tolerance} | "
      + " | ".join("diverged" if v is None else f"{v:.4f}" for v in losses)
      + f" | {row.get('seconds', 0):.0f} |"
    )
  return lines


def _draw_noise(ax, trace: dict, where: str, per: int, color: str, label: str) -> list:
  """One B_simple trace: the estimate with its 95% band where |G|² is resolved, the lower
  bound alone as triangles where it is not; the values drawn (to size the axis)."""
  x = trace[where]
  value, low, high = ([math.nan if v is None else v * per for v in trace[k]]
                      for k in ("value", "low", "high"))  # fmt: skip
  resolved = [v == v and h == h for v, h in zip(value, high)]
  ax.fill_between(x, low, high, where=resolved, color=color, alpha=0.2, linewidth=0)
  ax.plot(x, value, "-", color=color, label=f"{label} (95% band)")
  only_low = [(t, lo) for t, r, lo in zip(x, resolved, low) if not r and lo == lo]
  if only_low:
    ax.plot(*zip(*only_low), "^", color=color, markersize=3, alpha=0.6,
            label=f"{label}: lower bound only (|G|² not resolved)")  # fmt: skip
  return [v for v in value + low if v == v]


def figure(model: dict, study: Study, path: pathlib.Path) -> None:
  """B_simple and the run's batch over the run, with the branched critical batches."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  per, where = study.length or 1, "tokens" if study.length else "epoch"
  fig, ax = plt.subplots(figsize=(8, 5), constrained_layout=True)
  known = _draw_noise(ax, model["trace"], where, per, "C0", "B_simple measured in the step")
  if "trace_remeasured" in model:
    label = f"B_simple re-measured ({REMEASURE_DEVICES} devices)"
    known += _draw_noise(ax, model["trace_remeasured"], where, per, "C1", label)
  trace = model["trace"]
  ax.plot(trace[where], [b * per for b in trace["batch"]], "k--", label="the run's batch")
  marks = (("merrill", "o", "C3", "full", "critical batch, branched (Merrill, auto tolerance)"),
           ("merrill_orders", "x", "C3", "full", "the same, 2σ from all data orders"),
           ("zhang", "s", "C2", "none", "critical batch, branched (Zhang)"))  # fmt: skip
  labelled = set()
  for row in model["rows"]:
    at = row[where]
    ax.vlines(at, min(study.batches), max(study.batches), color="grey", alpha=0.4)
    for key, marker, color, fill, label in marks:
      if row[key] is None or (key == "merrill_orders" and row.get("orders", 2) <= 2):
        continue
      censored = row[key] >= max(study.batches) and marker != "x"
      ax.plot(at + (0.01 * max(trace[where]) if marker == "x" else 0), row[key],
              "^" if censored else marker, color=color, markersize=9, fillstyle=fill,
              label=None if label in labelled else label)  # fmt: skip
      labelled.add(label)
  # the band's upper end can be far off where |G|² is barely resolved: keep the batches in view
  noise = "b_simple_remeasured" if "trace_remeasured" in model else "b_simple"
  if all(row[noise]["low"] is None for row in model["rows"]):
    ax.text(0.5, 0.6, "B_simple not known at any branch point\n(neither |G|² nor tr Σ resolved)",
            transform=ax.transAxes, ha="center", color="C0")  # fmt: skip
  top = 10 * max(known + [max(study.batches)])
  ax.set(yscale="log", ylim=(min(study.batches) / 2, top), xlabel=where, ylabel=study.unit)
  ax.grid(True, which="both", alpha=0.3)
  ax.legend(fontsize=8)
  title = f"{study.run.label}: B_simple against the critical batch by branching\n"
  ax.set_title(title + "(grey: the batches tried; a triangle: at least the largest)", fontsize=10)
  fig.savefig(path, dpi=90)
  plt.close(fig)


def _branch_seconds(root: pathlib.Path) -> float:
  """The wall time of every branch from one step (repeats included), from their summaries."""
  return sum(json.loads(p.read_text())["wall_seconds"] for p in root.glob("*/summary.json"))


def study_one(name: str, study: Study, args) -> dict:
  """Trains the run (or reads it back), branches at each point, and summarizes."""
  where = pathlib.Path(args.workdir) / name
  config = reproduce.make_config(study.run, study.fields, 0, args.data_dir)
  summary = reproduce.train_once(config, where)
  print(f"{name}: {summary['updates']:,} updates in {summary['wall_seconds']:.0f} s", flush=True)
  rows = study_adaptive.read_rows(where)
  again = remeasure(name, study, args) if study.remeasure else None
  table_rows = []
  for step in branch_steps(summary["updates"], study.checkpoint_every):
    with contextlib.redirect_stdout(io.StringIO()) if args.quiet else contextlib.nullcontext():
      result = branch_at(where, step, study)
    row = summarize(result, rows, study, again and again["rows"])
    row["seconds"] = _branch_seconds(where / "cbs" / f"step_{step}")
    row["command"] = study.command(where, step)
    table_rows.append(row)
    print(f"{name} step {step}: done, branches {row['seconds']:.0f} s", flush=True)
  return {
    "label": study.run.label,
    "command": study.run.command(study.fields, seed=0),
    "updates": summary["updates"],
    "train_seconds": summary["wall_seconds"],
    "batches": list(study.batches),
    "budget": study.budget,
    "unit": study.unit,
    "rows": table_rows,
    "trace": noise_trace(rows),
    **({} if again is None else {"remeasured": {k: again[k] for k in ("command", "seconds")},
                                 "trace_remeasured": noise_trace(again["rows"])}),
  }  # fmt: skip


def remeasure(name: str, study: Study, args) -> dict:
  """The same run (seed 0, data order) with `study.remeasure` on REMEASURE_DEVICES CPU
  devices, in a process of its own (unless finished): its command, wall time and rows."""
  where = pathlib.Path(args.workdir) / f"{name}_remeasured"
  fields = {**study.fields, **study.remeasure}
  if args.data_dir:
    fields["dataset.data_dir"] = args.data_dir
  command = f"{study.run.command(fields, seed=0)} --workdir {where} --noprogress"
  if not (where / "summary.json").exists():  # `bigbatch train` as the command line has it
    code = "import sys; from bigbatch.cli import main; sys.exit(main(sys.argv[1:]))"
    argv = shlex.split(command.replace(str(where), str(where.resolve())))[2:]
    env = {**os.environ, "JAX_NUM_CPU_DEVICES": str(REMEASURE_DEVICES)}
    where.mkdir(parents=True, exist_ok=True)
    with open(where / "log.txt", "a") as log:
      subprocess.run([sys.executable, "-c", code, "train", *argv], env=env, cwd=reproduce.ROOT,
                     stdout=log, stderr=log, check=True)  # fmt: skip
  seconds = json.loads((where / "summary.json").read_text())["wall_seconds"]
  print(f"{name}, re-measured: {seconds:.0f} s", flush=True)
  command = f"JAX_NUM_CPU_DEVICES={REMEASURE_DEVICES} {command}"
  return {"command": command, "seconds": seconds, "rows": study_adaptive.read_rows(where)}


def markdown(models: dict[str, dict]) -> str:
  """results.md: a table per model, with its commands."""
  text = []
  for name, model in models.items():
    study = STUDIES[name]
    text += [
      f"**{model['label']}** ({model['updates']:,} updates, trained in "
      f"{model['train_seconds']:.0f} s; branches of {model['budget']:,} {model['unit']} "
      f"each at batches {', '.join(f'{b:,}' for b in model['batches'])}; {study.unit})",
      "",
      *table(model["rows"], study),
      "",
      f"- `{model['command']}`",
      *([f"- `{model['remeasured']['command']}`"] if "remeasured" in model else []),
      *(f"- `{row['command']}`" for row in model["rows"]),
      "",
    ]
  return "\n".join(text)


def parse() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--only", nargs="*", default=list(STUDIES), choices=list(STUDIES))
  parser.add_argument("--workdir", default="workdir/cbs", help="one run per model")
  parser.add_argument("--data-dir", default=None, help="tfds data dir (default $TFDS_DATA_DIR)")
  parser.add_argument("--out", default="docs/results/cbs")
  parser.add_argument("--quiet", action="store_true", help="leave out each step's cbs table")
  return parser.parse_args()


def main() -> int:
  args = parse()
  import jax

  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  path = out / "results.json"
  models = json.loads(path.read_text())["models"] if path.exists() else {}
  device = f"{jax.devices()[0].platform} x {len(jax.devices())}"
  for name in args.only:
    begun = time.monotonic()  # this invocation's part (a finished branch is only read back)
    models[name] = study_one(name, STUDIES[name], args)
    models[name] |= {"device": device, "jax": jax.__version__,
                     "invocation_seconds": time.monotonic() - begun}  # fmt: skip
  models = {name: models[name] for name in STUDIES if name in models}
  path.write_text(json.dumps(_finite({"models": models}), indent=1) + "\n")
  text = markdown(models)
  (out / "results.md").write_text(text)
  print(text)
  for name in args.only:
    figure(models[name], STUDIES[name], out / f"{name}.png")
  print(f"wrote {path}, results.md and {', '.join(f'{n}.png' for n in args.only)}", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
