"""bigbatch's optimizer updates against optax's own, side by side in one run.

usage: python tools/benchmark_optimizers.py [--repeats 5] [--count 10] [--out docs/benchmarks]

Each bigbatch optimizer is optax's own chain inside `optax.inject_hyperparams`;
this times one update of each on a ResNet-50-sized parameter tree (25.6M
parameters, one device, jitted, donated state), interleaved with optax's
(A B, then B A), and reports optax's time over bigbatch's (> 1: bigbatch is
faster; 1 within noise). `run` (row 4 of tools/benchmark.py) takes the
optimizers of the paper; run alone, this also takes the large-batch ones
(`run_large_batch`): LARS and LAMB as optax computes them and with MLPerf's
and BERT's exclusions (two masks more than optax), Lion, Muon, any optax
optimizer by import path (`plan_aware`), and clipping that counts what it
clipped. Writes `optimizers.json` and `optimizers.md`.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import optax
from optax import contrib
from timing import compare  # tools/timing.py

from bigbatch import optim
from bigbatch.models import create_model


def _tree():
  """A ResNet-50's parameters (25.6M), 0.01 each, and a gradient of 0.1 of them."""
  model = create_model("resnet50", num_classes=1000)
  shapes = jax.eval_shape(
    lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3)), train=False)
  )["params"]
  device = jax.devices()[0]
  params = jax.tree.map(lambda s: jax.device_put(jnp.full(s.shape, 0.01, s.dtype), device), shapes)
  return params, jax.tree.map(lambda p: p * 0.1, params)


def _runner(tx, params, grads):
  """One jitted update of `tx` (state donated), as a function of nothing."""
  holder = {"s": jax.jit(tx.init)(params)}

  def update(p, s):
    updates, s = tx.update(grads, s, p)
    return optax.apply_updates(p, updates), s

  jitted = jax.jit(update, donate_argnums=(1,))

  def run():
    new_params, holder["s"] = jitted(params, holder["s"])
    return new_params

  jax.block_until_ready(run())  # compiled before it is timed
  return run


def _compare(pairs, repeats: int, count: int) -> dict:
  params, grads = _tree()
  out = {}
  for name, (ours, theirs) in pairs.items():
    result = compare(_runner(ours, params, grads), _runner(theirs, params, grads), repeats, count)
    result["speed_ratio"] = result.pop("ratio")  # ours / optax's, in updates per second
    out[name] = result
  return out


def run(repeats: int, count: int) -> dict:
  """Update time on a ResNet-50-sized tree (25.6M parameters), ours vs optax's."""
  pairs = {
    "sgd_momentum": (optim.sgd_momentum(0.1, momentum=0.9), optax.sgd(0.1, momentum=0.9)),
    "adam": (optim.adam(1e-3), optax.adam(1e-3)),
    "adamw": (optim.adamw(1e-3, weight_decay=1e-4), optax.adamw(1e-3, weight_decay=1e-4)),
    "amsgrad": (optim.amsgrad(1e-3), optax.amsgrad(1e-3)),
  }
  return _compare(pairs, repeats, count)


def run_large_batch(repeats: int, count: int) -> dict:
  """The large-batch optimizers, clipping and a factory by import path, ours vs optax's."""
  every = {"weight_decay_mask": None, "trust_mask": None}
  sgd = optax.sgd(0.1, momentum=0.9)
  pairs = {
    "lars": (
      optim.lars(0.1, 0.9, weight_decay=1e-4, trust_ratio="optax", **every),
      optax.lars(0.1, weight_decay=1e-4, momentum=0.9),
    ),
    "lars (MLPerf exclusions)": (
      optim.lars(0.1, 0.9, weight_decay=1e-4),
      optax.lars(0.1, weight_decay=1e-4, momentum=0.9),
    ),
    "lamb": (optim.lamb(1e-3, weight_decay=1e-2, **every), optax.lamb(1e-3, weight_decay=1e-2)),
    "lamb (BERT exclusions)": (
      optim.lamb(1e-3, weight_decay=1e-2),
      optax.lamb(1e-3, weight_decay=1e-2),
    ),
    "lion": (optim.lion(1e-4), optax.lion(1e-4)),
    "muon": (optim.muon(0.02), contrib.muon(0.02)),
    "optax:adamw by import path": (
      optim.plan_aware(optim.resolve_factory("optax:adamw"), 1e-3, 0.9),
      optax.adamw(1e-3),
    ),
    "clip_norm + sgd": (
      optax.chain(optim.clip_by_global_norm(1.0), sgd),
      optax.chain(optax.clip_by_global_norm(1.0), sgd),
    ),
  }
  return _compare(pairs, repeats, count)


def table(results: dict) -> str:
  lines = [
    f"device: {results['device']}; {results['repeats']} interleaved repeats of "
    f"{results['count']} updates; ResNet-50's 25.6M parameters",
    "",
    "| optimizer | bigbatch ms | optax ms | optax / bigbatch time: median [min, max] |",
    "|---|---|---|---|",
  ]
  for group in ("paper", "large_batch"):
    for name, r in results[group].items():
      lines.append(
        f"| {name} | {1e3 * r['a_seconds']:.1f} | {1e3 * r['b_seconds']:.1f} | "
        f"{r['speed_ratio']:.3f} [{r['ratio_min']:.3f}, {r['ratio_max']:.3f}] |"
      )
  return "\n".join(lines)


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--count", type=int, default=10, help="updates per timing")
  parser.add_argument("--out", default="docs/benchmarks", help="where results are written")
  args = parser.parse_args()
  results = {
    "device": f"{jax.devices()[0].device_kind} x 1",
    "repeats": args.repeats,
    "count": args.count,
    "paper": run(args.repeats, args.count),
    "large_batch": run_large_batch(args.repeats, args.count),
  }
  text = table(results)
  print(text)
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  (out / "optimizers.json").write_text(json.dumps(results, indent=1) + "\n")
  (out / "optimizers.md").write_text(text + "\n")
  print(f"wrote {out / 'optimizers.json'} and {out / 'optimizers.md'}", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
