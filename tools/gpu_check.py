"""GPU figures through bigbatch's own train step: ResNet-50 and GPT-2 small, and the memory probe.

usage: python tools/gpu_check.py [--out DIR] [--steps 30] [--quick]

Each part runs in a process of its own, so that the device's peak memory is
that part's alone:

1. resnet50: images/s and MFU of the train step the trainer builds for
   `imagenet_resnet50_base` (ghost batch norm of 32, momentum SGD with weight
   decay, uint8 images normalised on the device, the gradient noise scale
   measured), bf16 compute, at a batch of 256 per device.
2. gpt2: tokens/s and MFU of `gpt2_small` (124,439,808 parameters, sequences
   of 1,024) under AdamW, bf16, with the noise measurement on and off.
3. memory: the memory probe's prediction for GPT-2 small's step at two
   batches (`step.memory.measure_compiled`: XLA's arguments + outputs +
   temporaries - aliased bytes) against the device's measured peak
   (`memory_stats()["peak_bytes_in_use"]`) after running that step.

MFU counts the FLOPs the model needs, against the devices' dense peak
(`bigbatch.models.flops`): for GPT-2 6N + 12 L d T per token; for ResNet-50
three times the forward pass's FLOPs as XLA counts them (its
`cost_analysis()`), the forward and the two products of the backward pass.
The batches are synthetic and sit on the device: these are the step's rates,
not the input pipeline's. Nothing here needs tensorflow, so it runs on an
accelerator image that has JAX, flax and optax alone.

Prints a table and writes `gpu.json` and `gpu.md` to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# bigbatch.data.preprocess's (read there through tensorflow, which this script avoids)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def parse() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", default="docs/benchmarks", help="where results are written")
  parser.add_argument("--steps", type=int, default=30, help="timed steps per measurement")
  parser.add_argument("--quick", action="store_true", help="small batches (a smoke run)")
  parser.add_argument("--part", default=None, help=argparse.SUPPRESS)  # a worker's part
  parser.add_argument("--batch", type=int, default=0, help=argparse.SUPPRESS)
  parser.add_argument("--measure", default="on", help=argparse.SUPPRESS)
  return parser.parse_args()


def _timed(steps, state, batch, count: int) -> tuple[object, float]:
  """Runs `count` steps after 3 untimed ones; the state and seconds per step."""
  import jax

  for _ in range(3):
    state, metrics = steps(state, batch)
  jax.block_until_ready((state, metrics))
  start = time.perf_counter()
  for _ in range(count):
    state, metrics = steps(state, batch)
  jax.block_until_ready((state, metrics))
  return state, (time.perf_counter() - start) / count


def _device():
  import jax

  device = jax.devices()[0]
  return device, device.device_kind


def resnet50(batch: int, count: int) -> dict:
  """Images/s and MFU of ResNet-50's train step (the recipe's), on one device."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from bigbatch import optim, sharding
  from bigbatch import step as st
  from bigbatch.models import create_model, flops

  mesh = sharding.make_mesh()
  model = create_model("resnet50", num_classes=1000, ghost_batch_size=32, dtype=jnp.bfloat16)
  tx = optim.sgd_momentum(0.1, momentum=0.9, weight_decay=1e-4)
  inputs = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
  state = st.create_train_state(model, tx, inputs, mesh)
  # measured as the trainer does on one device: two halves, each whole ghost batches
  measure = (batch // 2) % 32 == 0
  step = st.make_train_step(
    model, tx, dataset_size=1_281_167, mesh=mesh, measure_noise=measure,
    noise_horizon=0.1 * 1_281_167 if measure else None,
    normalisation=(IMAGENET_MEAN, IMAGENET_STD),
  )  # fmt: skip
  example = {
    "inputs": jax.ShapeDtypeStruct((224, 224, 3), np.uint8),
    "labels": jax.ShapeDtypeStruct((), np.int32),
  }
  steps = st.CompiledSteps(step, state, example, mesh, ghost_batch_size=32)
  rng = np.random.default_rng(0)
  host = {
    "inputs": rng.integers(0, 256, (batch, 224, 224, 3), dtype=np.uint8),
    "labels": rng.integers(0, 1000, (batch,), dtype=np.int32),
  }
  start = time.perf_counter()
  steps.compiled(batch)
  compile_seconds = time.perf_counter() - start
  _, seconds = _timed(steps, state, sharding.global_batch(mesh, host, batch), count)
  steps.close()
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  forward = jax.jit(lambda v, x: model.apply(v, x, train=False))
  x = jnp.zeros((batch, 224, 224, 3), jnp.float32)
  cost = forward.lower(variables, x).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  per_image = 3.0 * float(cost["flops"]) / batch
  _, kind = _device()
  peak = flops.peak_flops(kind, jnp.bfloat16)
  rate = batch / seconds
  return {
    "part": "resnet50", "device": kind, "batch": batch, "measure_noise": measure,
    "seconds_per_step": seconds,
    "images_per_second": rate, "flops_per_image": per_image, "compile_seconds": compile_seconds,
    "mfu": rate * per_image / peak if peak else None, "peak_flops": peak,
  }  # fmt: skip


def _gpt2(batch: int, measure: bool):
  """GPT-2 small's train step as the trainer builds it for `gpt2_small`: its pieces."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from bigbatch import optim, sharding
  from bigbatch import step as st
  from bigbatch.models import create_model
  from bigbatch.models.transformer import PRESETS

  mesh = sharding.make_mesh()
  model = create_model("transformer", num_classes=256, dtype=jnp.bfloat16, **PRESETS["gpt2_small"])
  tx = optim.adamw(6e-4, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1)
  state = st.create_train_state(model, tx, jax.ShapeDtypeStruct((1, 1024), jnp.int32), mesh)
  step = st.make_train_step(
    model, tx, dataset_size=29_025, mesh=mesh, measure_noise=measure,
    noise_horizon=0.1 * 29_025 if measure else None,
    loss_fn=st.classification(bytes_per_token=1.0),
  )  # fmt: skip
  example = {
    "inputs": jax.ShapeDtypeStruct((1024,), np.int32),
    "labels": jax.ShapeDtypeStruct((1024,), np.int32),
  }
  steps = st.CompiledSteps(step, state, example, mesh)
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, 256, (batch, 1025), dtype=np.int32)
  host = {"inputs": tokens[:, :-1], "labels": tokens[:, 1:]}
  return model, state, steps, sharding.global_batch(mesh, host, batch)


def gpt2(batch: int, count: int, measure: bool) -> dict:
  """Tokens/s and MFU of GPT-2 small's train step, with the noise measured or not."""
  import jax.numpy as jnp

  from bigbatch.models import flops

  model, state, steps, device_batch = _gpt2(batch, measure)
  start = time.perf_counter()
  steps.compiled(batch)
  compile_seconds = time.perf_counter() - start
  _, seconds = _timed(steps, state, device_batch, count)
  steps.close()
  per_token = flops.model_flops_per_token(model, 1024)
  _, kind = _device()
  peak = flops.peak_flops(kind, jnp.bfloat16)
  rate = batch * 1024 / seconds
  return {
    "part": "gpt2", "device": kind, "batch": batch, "measure_noise": measure,
    "seconds_per_step": seconds, "tokens_per_second": rate, "flops_per_token": per_token,
    "compile_seconds": compile_seconds, "mfu": rate * per_token / peak if peak else None,
  }  # fmt: skip


def memory(batch: int) -> dict:
  """The probe's prediction for GPT-2 small's step at `batch` against the measured peak."""
  from bigbatch.step import memory as probe

  _, state, steps, device_batch = _gpt2(batch, batch % 2 == 0)
  predicted = probe.measure_compiled(steps.compiled(batch), batch)
  _timed(steps, state, device_batch, 2)
  steps.close()
  device, kind = _device()
  stats = device.memory_stats() or {}
  budget, source = probe.device_budget(device)
  peak = stats.get("peak_bytes_in_use")
  total = predicted.total if predicted is not None else None
  return {
    "part": "memory", "device": kind, "batch": batch, "predicted_bytes": total,
    "peak_bytes_in_use": peak, "ratio": peak / total if peak and total else None,
    "budget_bytes": budget, "budget_source": source,
  }  # fmt: skip


def worker(args: argparse.Namespace) -> int:
  if args.part == "resnet50":
    result = resnet50(args.batch, args.steps)
  elif args.part == "gpt2":
    result = gpt2(args.batch, args.steps, args.measure == "on")
  else:
    result = memory(args.batch)
  print("RESULT " + json.dumps(result), flush=True)
  return 0


def run_part(args: argparse.Namespace, part: str, batch: int, **flags: str) -> dict:
  command = [sys.executable, __file__, "--part", part, "--batch", str(batch)]
  command += ["--steps", str(args.steps)] + [f"--{k}={v}" for k, v in flags.items()]
  started = time.perf_counter()
  done = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy())
  lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
  if done.returncode != 0 or not lines:
    tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
    print(f"{part} (batch {batch}) failed: {' | '.join(tail)}", flush=True)
    return {"part": part, "batch": batch, "error": " | ".join(tail)}
  result = json.loads(lines[-1][len("RESULT ") :])
  result["wall_seconds"] = time.perf_counter() - started
  print(json.dumps(result), flush=True)
  return result


def _cell(value, form: str) -> str:
  return "—" if value is None else format(value, form)


def table(results: list[dict]) -> list[str]:
  lines = [
    f"| part ({results[0].get('device', 'device')}) | batch | rate | MFU | compile s | notes |",
    "|---|---|---|---|---|---|",
  ]
  for r in results:
    if "error" in r:
      lines.append(f"| {r['part']} | {r['batch']} | — | — | — | failed: {r['error']} |")
    elif r["part"] == "resnet50":
      lines.append(
        f"| ResNet-50 train step{'' if r['measure_noise'] else ' (noise not measured)'} | "
        f"{r['batch']} | {r['images_per_second']:,.0f} images/s | "
        f"{_cell(r['mfu'], '.1%')} | {r['compile_seconds']:.1f} | "
        f"{r['flops_per_image'] / 1e9:.1f} GFLOP/image (3x XLA's forward count) |"
      )
    elif r["part"] == "gpt2":
      noise = "noise measured" if r["measure_noise"] else "noise not measured"
      lines.append(
        f"| GPT-2 small train step | {r['batch']}×1,024 | {r['tokens_per_second']:,.0f} "
        f"tokens/s | {_cell(r['mfu'], '.1%')} | {r['compile_seconds']:.1f} | {noise}; "
        f"{r['flops_per_token'] / 1e6:,.0f} MFLOP/token |"
      )
    else:
      lines.append(
        f"| memory probe, GPT-2 small | {r['batch']}×1,024 | predicted "
        f"{_cell(r['predicted_bytes'] and r['predicted_bytes'] / 2**30, '.2f')} GiB | — | — | "
        f"measured peak {_cell(r['peak_bytes_in_use'] and r['peak_bytes_in_use'] / 2**30, '.2f')}"
        f" GiB (peak / predicted {_cell(r['ratio'], '.3f')}); budget "
        f"{r['budget_bytes'] / 2**30:.1f} GiB ({r['budget_source']}) |"
      )
  return lines


def main() -> int:
  args = parse()
  if args.part:
    return worker(args)
  images, sequences = (64, 4) if args.quick else (256, 32)
  results = [
    run_part(args, "resnet50", images),
    run_part(args, "gpt2", sequences, measure="on"),
    run_part(args, "gpt2", sequences, measure="off"),
    run_part(args, "memory", max(sequences // 4, 2)),
    run_part(args, "memory", sequences),
  ]
  lines = table(results)
  print("\n".join(lines))
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  (out / "gpu.json").write_text(json.dumps(results, indent=2) + "\n")
  (out / "gpu.md").write_text("\n".join(lines) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
