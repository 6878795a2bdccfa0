"""The results of tools/benchmark.py as the markdown table docs/BENCHMARKS.md shows:
one row per ratio measured (rows 1, 3, 4, 6), the phase switches (row 2) and the scaling
table (row 5); a partial run (`--rows`) shows what it measured.
"""

from __future__ import annotations

SWITCH_LABELS = {
  "foreground": "foreground compile",
  "background": "background compile",
  "decided": "decided while training",
}


def scaling_table(scaling: dict) -> list[str]:
  """The scaling results as a markdown table: examples/s per device count."""
  counts = scaling["devices"]
  lines = [
    "",
    f"5. scaling: cnn1d training examples/s, median [min, max] over {scaling['rounds']} "
    "alternating processes",
    "",
    "| per-device batch | "
    + " | ".join(f"{n} device{'s' if n > 1 else ''}" for n in counts)
    + f" | {counts[-1]} / 1 |",
    "|---" * (len(counts) + 2) + "|",
  ]
  for size, row in scaling["examples_per_second"].items():
    cells = [
      f"{row[str(n)]['median']:,.0f} [{row[str(n)]['min']:,.0f}, {row[str(n)]['max']:,.0f}]"
      for n in counts
    ]
    ratio = row[str(counts[-1])]["median"] / row["1"]["median"]
    lines.append(f"| {int(size):,} | " + " | ".join(cells) + f" | {ratio:.2f} |")
  return lines


def ratio_rows(results: dict) -> list[tuple]:
  """(label, result, key of its ratio, target) of each ratio measured."""
  rows = []
  for n, runs in results.get("step", {}).items():
    for r in runs.values():
      said = "measured" if r["measures_noise"] else "not measured"
      label = f"1. step ({n} device{'s' if n != '1' else ''}, noise {said}): trainer's / minimal"
      rows.append((label, r, "throughput_ratio", ">= 0.97"))
  if "input" in results:
    rows.append(
      (
        "3. input: MNIST-1D pipeline / training examples per second",
        results["input"],
        "ratio",
        ">= 3",
      )
    )
    label = "3. input: CIFAR-shaped pipeline / wrn16_4 training examples per second"
    rows.append((label, results["input_cifar"], "ratio", ">= 3"))
  for name, r in results.get("optimizers", {}).items():
    rows.append((f"4. optimizer {name}: bigbatch / optax speed", r, "speed_ratio", ">= 0.98"))
  if "mesh" in results:
    r = results["mesh"]
    three, two = (tuple(r[k]) for k in ("three_axes", "two_axes"))
    label = f"6. mesh: Transformer step on (data, fsdp, tensor) {three} / on {two}"
    rows.append((label, r, "throughput_ratio", "—"))
  return rows


def format_table(results: dict) -> str:
  lines = [
    f"device: {results['device']}; {results['repeats']} interleaved repeats; median [min, max]",
    "",
    "| comparison | ratio | target |",
    "|---|---|---|",
  ]
  for label, r, key, target in ratio_rows(results):
    lines.append(
      f"| {label} | {r[key]:.3f} [{r['ratio_min']:.3f}, {r['ratio_max']:.3f}] | {target} |"
    )
  for mode, r in results.get("phase_switch", {}).items():
    lines.append(
      f"| 2. phase switch ({SWITCH_LABELS[mode]}): first / steady step | "
      f"{r['first_over_steady']:.2f} [{r['min']:.2f}, {r['max']:.2f}] | <= 2 (background) |"
    )
  if "scaling" in results:
    lines += scaling_table(results["scaling"])
  return "\n".join(lines)
