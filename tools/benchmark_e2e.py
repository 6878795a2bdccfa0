"""The default run end to end, against a minimal hand-written loop doing the same work.

usage: python tools/benchmark_e2e.py [--repeats 2] [--quick] [--out DIR] [--set FIELD=VALUE ...]

`bigbatch train` on a config (default: the README's quick start,
configs/mnist1d_increase_batch.py, one CPU device) against a loop written as
a user would write it without bigbatch: the same `cnn1d` with ghost batch
norm, `optax` SGD with momentum 0.9 and weight decay, MNIST-1D held as NumPy,
a permutation each epoch, `jax.device_put` per batch, a `jax.jit` step with
donation compiled once per batch size, and an evaluation of the test split
at the same points (every `eval_every_epochs`, and at the end). It follows
the config's plan: each phase's batch size, steps and first learning rate.
It writes no checkpoints and measures no noise scale; bigbatch does both.

Each contender runs in a process of its own (A B, then B A, ...). Reported:
training throughput per phase as a ratio (examples over the phase's seconds
less its evaluations, checkpoints and the wait for its step to compile),
the evaluation, checkpoint and compile seconds apart, whole-process wall
time, and user and system CPU of each. Prints a table and writes
`e2e.json` and `e2e.md` to --out.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = str(ROOT / "configs" / "mnist1d_increase_batch.py")
# --quick: a small run with the same shape (four phases, evaluations, checkpoints)
QUICK = {
  "dataset.num_train_examples": 4096,
  "num_epochs": 8,
  "schedule.boundaries": (2.0, 4.0, 6.0),
  "batch_size": 32,
  "ghost_batch_size": 4,
  "plan.batch_multiple": 32,
  "eval_every_epochs": 1.0,
  "eval_batch_size": 512,
  "checkpoint_every_steps": 50,
}
TARGETS = {"throughput": 0.9, "wall": 1.25}


def parse() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", default=DEFAULT_CONFIG)
  parser.add_argument("--repeats", type=int, default=2, help="runs of each contender")
  parser.add_argument("--quick", action="store_true", help="a small run (a smoke test)")
  parser.add_argument("--out", default="docs/benchmarks")
  parser.add_argument("--set", action="append", default=[], help="FIELD=VALUE for both")
  parser.add_argument("--data-dir", default=None, help="tfds data dir (default: tfds's)")
  parser.add_argument("--worker", choices=("minimal",), help=argparse.SUPPRESS)
  return parser.parse_args()


def fields(args: argparse.Namespace) -> dict:
  """The config fields both contenders override."""
  values = dict(QUICK) if args.quick else {}
  for item in args.set:
    field, _, text = item.partition("=")
    try:
      values[field] = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      values[field] = text
  if args.data_dir:
    values["dataset.data_dir"] = args.data_dir
  return values


def _flag(field: str, value) -> str:
  text = f"({','.join(map(str, value))},)" if isinstance(value, tuple) else str(value)
  return f"--config.{field}={text}"


# ---------------------------------------------------------------- the minimal loop


def minimal(config_file: str, overrides: dict) -> dict:
  """The hand-written loop; returns its per-phase seconds (run in its own process)."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax

  from bigbatch import config as bbconfig  # the config and its plan only: set-up, not timed
  from bigbatch import data
  from bigbatch.models import create_model

  config = bbconfig.load_sibling(config_file, pathlib.Path(config_file).stem).get_config()
  config.update_from_flattened_dict(overrides)
  plan = bbconfig.plan_from_config(config)
  train, test = data.load_split(config.dataset, "train"), data.load_split(config.dataset, "eval")
  x, y = train.inputs.astype(np.float32), train.labels
  tx_, ty_ = test.inputs.astype(np.float32), test.labels
  model = create_model("cnn1d", num_classes=10, ghost_batch_size=config.ghost_batch_size)
  variables = model.init(jax.random.key(config.seed), jnp.zeros((1, x.shape[1])), train=False)
  opt = config.optimizer

  def make_tx(lr):
    return optax.chain(
      optax.trace(decay=opt.momentum),
      optax.add_decayed_weights(opt.weight_decay),
      optax.scale(-lr),
    )

  def train_step(params, stats, opt_state, inputs, labels, lr):
    def loss_fn(p):
      logits, new = model.apply(
        {"params": p, "batch_stats": stats}, inputs, train=True, mutable=["batch_stats"]
      )
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), new

    (loss, new), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = make_tx(lr).update(grads, opt_state, params)
    return optax.apply_updates(params, updates), new["batch_stats"], opt_state, loss

  def eval_step(params, stats, inputs, labels, mask):
    logits = model.apply({"params": params, "batch_stats": stats}, inputs, train=False)
    return jnp.sum((jnp.argmax(logits, -1) == labels) * mask)

  step = jax.jit(train_step, donate_argnums=(0, 1, 2))
  evaluate_batch = jax.jit(eval_step)
  eval_batch = int(config.eval_batch_size)

  def evaluate(params, stats):
    correct = 0
    for start in range(0, len(ty_), eval_batch):
      inputs, labels = tx_[start : start + eval_batch], ty_[start : start + eval_batch]
      mask = np.ones(eval_batch, np.float32)
      mask[len(labels) :] = 0
      pad = eval_batch - len(labels)
      inputs, labels = np.pad(inputs, ((0, pad), (0, 0))), np.pad(labels, (0, pad))
      correct += int(evaluate_batch(params, stats, inputs, labels, mask))
    return correct / len(ty_)

  params, stats = variables["params"], variables["batch_stats"]
  opt_state = make_tx(0.0).init(params)
  rng = np.random.default_rng(config.seed)
  order, taken, position = rng.permutation(len(x)), 0, 0
  period = float(config.eval_every_epochs) * len(x)
  phases, started = [], time.perf_counter()
  compiled = {}
  for phase in plan.phases:
    batch, lr = phase.batch_size, float(phase.learning_rate)
    phase_start = time.perf_counter()
    eval_seconds = 0.0
    # compiled ahead, as bigbatch compiles a phase's step before its first: timing the
    # first step instead would count one step's work as compiling, and the rate would
    # get that step for free
    if batch not in compiled:
      compiled[batch] = step.lower(params, stats, opt_state, x[:batch], y[:batch], lr).compile()
    compile_seconds = time.perf_counter() - phase_start
    for _ in range(phase.steps):
      if taken + batch > len(x):  # a new epoch: a new permutation
        order, taken = rng.permutation(len(x)), 0
      chosen = order[taken : taken + batch]
      taken += batch
      params, stats, opt_state, loss = compiled[batch](
        params, stats, opt_state, jax.device_put(x[chosen]), jax.device_put(y[chosen]), lr
      )
      before, position = position, position + batch
      if position // period > before // period and position < len(x) * plan.epochs:
        jax.block_until_ready(loss)  # the steps dispatched so far count as training
        start = time.perf_counter()
        evaluate(params, stats)
        eval_seconds += time.perf_counter() - start
    jax.block_until_ready(loss)
    if phase is plan.phases[-1]:
      start = time.perf_counter()
      accuracy = evaluate(params, stats)
      eval_seconds += time.perf_counter() - start
    phases.append(
      {
        "phase": phase.index,
        "batch_size": batch,
        "steps": phase.steps,
        "seconds": time.perf_counter() - phase_start,
        "eval_seconds": eval_seconds,
        "checkpoint_seconds": 0.0,
        "compile_wait_seconds": compile_seconds,
      }
    )
  return {
    "phases": phases,
    "run_seconds": time.perf_counter() - started,
    "final_test_accuracy": accuracy,
  }


# ---------------------------------------------------------------- the two contenders


def _timed_process(command: list[str]) -> dict:
  """Runs `command`; its wall time and the user and system CPU of its process tree."""
  before = resource.getrusage(resource.RUSAGE_CHILDREN)
  start = time.perf_counter()
  done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
  wall = time.perf_counter() - start
  after = resource.getrusage(resource.RUSAGE_CHILDREN)
  if done.returncode != 0:
    raise SystemExit(f"{command[:4]}... failed ({done.returncode}):\n{done.stderr[-3000:]}")
  return {
    "wall_seconds": wall,
    "user_seconds": after.ru_utime - before.ru_utime,
    "system_seconds": after.ru_stime - before.ru_stime,
    "stdout": done.stdout,
  }


def run_bigbatch(config_file: str, overrides: dict, workdir: str) -> dict:
  flags = [_flag(k, v) for k, v in overrides.items()]
  code = "import sys; from bigbatch.cli import main; sys.exit(main(sys.argv[1:]))"
  command = [sys.executable, "-c", code, "train", "--config", config_file]
  command += ["--workdir", workdir, "--noprogress", *flags]
  result = _timed_process(command)
  summary = json.loads((pathlib.Path(workdir) / "summary.json").read_text())
  result.pop("stdout")
  return {
    **result,
    "phases": summary["phases"],
    "run_seconds": summary["wall_seconds"],
    "final_test_accuracy": summary["final_test_accuracy"],
  }


def run_minimal(config_file: str, overrides: dict) -> dict:
  command = [sys.executable, __file__, "--worker", "minimal", "--config", config_file]
  command += [f"--set={k}={v!r}" for k, v in overrides.items()]
  result = _timed_process(command)
  return {**result, **json.loads(result.pop("stdout").strip().splitlines()[-1])}


def train_seconds(phase: dict) -> float:
  """A phase's seconds less its evaluations, checkpoints and the wait for its compile."""
  spent = sum(phase.get(k, 0.0) for k in ("eval_seconds", "checkpoint_seconds"))
  return phase["seconds"] - spent - phase.get("compile_wait_seconds", 0.0)


def throughput(phase: dict) -> float | None:
  """Training examples per second of a phase; None where its steps after the first leave no
  time to measure (a phase of one step is its compile)."""
  seconds = train_seconds(phase)
  if phase["steps"] < 2 or seconds <= 1e-3:
    return None
  return phase["steps"] * phase["batch_size"] / seconds


# ---------------------------------------------------------------- the report


def _median(values):
  return statistics.median(values), min(values), max(values)


def _cell(values, digits=3) -> str:
  median, low, high = _median(values)
  return f"{median:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def report(runs: list[tuple[dict, dict]]) -> tuple[str, dict]:
  """The table of the paired runs, and the figures for e2e.json."""
  count = len(runs[0][0]["phases"])
  rows = [
    "| phase | batch | bigbatch ex/s | minimal ex/s | ratio (target >= 0.9) |",
    "|---|---|---|---|---|",
  ]
  figures: dict = {"phases": []}
  for index in range(count):
    pairs = [(throughput(b["phases"][index]), throughput(m["phases"][index])) for b, m in runs]
    pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
    batch = runs[0][0]["phases"][index]["batch_size"]
    if not pairs:  # too short to time: say so rather than print a number
      rows.append(f"| {index} | {batch:,} | — | — | — (too few steps to time) |")
      continue
    ratios = [a / b for a, b in pairs]
    ours, theirs = statistics.median(a for a, _ in pairs), statistics.median(b for _, b in pairs)
    rows.append(f"| {index} | {batch:,} | {ours:,.0f} | {theirs:,.0f} | {_cell(ratios)} |")
    figures["phases"].append({"phase": index, "batch_size": batch, "ratio": _median(ratios)})
  lines = ["", *rows, "", "| seconds (median) | bigbatch | minimal | ratio |", "|---|---|---|---|"]

  def total(run, key):
    return sum(p.get(key, 0.0) for p in run["phases"])

  def line(name, values_ours, values_theirs, ratio=True):
    a, b = statistics.median(values_ours), statistics.median(values_theirs)
    text = f"{a / b:.2f}" if ratio and b > 0 else "—"
    lines.append(f"| {name} | {a:.1f} | {b:.1f} | {text} |")
    figures[name] = {"bigbatch": a, "minimal": b}

  line(
    "training (all phases)",
    [sum(map(train_seconds, b["phases"])) for b, _ in runs],
    [sum(map(train_seconds, m["phases"])) for _, m in runs],
  )
  line(
    "evaluation",
    [total(b, "eval_seconds") for b, _ in runs],
    [total(m, "eval_seconds") for _, m in runs],
  )
  line("checkpoints", [total(b, "checkpoint_seconds") for b, _ in runs], [0.0 for _ in runs], False)
  line(
    "waiting for compiles",
    [total(b, "compile_wait_seconds") for b, _ in runs],
    [total(m, "compile_wait_seconds") for _, m in runs],
  )
  line(
    "the run (first step to summary)",
    [b["run_seconds"] for b, _ in runs],
    [m["run_seconds"] for _, m in runs],
  )
  line(
    "process wall (with start-up)",
    [b["wall_seconds"] for b, _ in runs],
    [m["wall_seconds"] for _, m in runs],
  )
  line("user CPU", [b["user_seconds"] for b, _ in runs], [m["user_seconds"] for _, m in runs])
  line("system CPU", [b["system_seconds"] for b, _ in runs], [m["system_seconds"] for _, m in runs])
  wall = [b["wall_seconds"] / m["wall_seconds"] for b, m in runs]
  figures["wall_ratio"] = _median(wall)
  accuracy = [(b["final_test_accuracy"], m["final_test_accuracy"]) for b, m in runs]
  lines += [
    "",
    f"process wall ratio {_cell(wall, 2)} (target <= {TARGETS['wall']}); final test accuracy "
    + ", ".join(f"{a:.4f} vs {b:.4f}" for a, b in accuracy),
  ]
  return "\n".join(lines), figures


def main() -> None:
  args = parse()
  overrides = fields(args)
  if args.worker == "minimal":
    print(json.dumps(minimal(args.config, overrides)))
    return
  runs = []
  with tempfile.TemporaryDirectory() as scratch:
    for repeat in range(args.repeats):
      workdir = os.path.join(scratch, f"run{repeat}")
      pair = {}
      order = ("bigbatch", "minimal") if repeat % 2 == 0 else ("minimal", "bigbatch")
      for who in order:  # A B, then B A: a drift in the machine's speed favours neither
        print(f"repeat {repeat + 1}/{args.repeats}: {who}", flush=True)
        if who == "bigbatch":
          pair[who] = run_bigbatch(args.config, overrides, workdir)
        else:
          pair[who] = run_minimal(args.config, overrides)
      runs.append((pair["bigbatch"], pair["minimal"]))
  table, figures = report(runs)
  title = (
    f"end to end: {pathlib.Path(args.config).name}{' (quick)' if args.quick else ''}, "
    f"{args.repeats} runs each, median [min, max]"
  )
  print(f"\n{title}\n{table}")
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  (out / "e2e.md").write_text(f"{title}\n{table}\n")
  raw = [{"bigbatch": b, "minimal": m} for b, m in runs]
  (out / "e2e.json").write_text(json.dumps({"figures": figures, "runs": raw}, indent=2) + "\n")
  print(f"wrote {out / 'e2e.md'} and {out / 'e2e.json'}")


if __name__ == "__main__":
  main()
