"""A language model's measured noise scale in its own units: tokens, to significant digits,
with the sequences beside it, in the summary, metrics.jsonl's keys and `bigbatch noise`."""

import json
import math

import pytest

from bigbatch.cli import main
from bigbatch.plan import noise
from bigbatch.plan import summary as run_summary

T = 128


def test_significant_digits():
  cases = {0.4: "0.400", 51.2: "51.2", 1185.4: "1,190", 99.96: "100", 0.0004123: "0.000412",
           1_234_567: "1,230,000", 0.0: "0", 6.4: "6.40"}  # fmt: skip
  assert {x: run_summary.significant(x) for x in cases} == cases


def test_b_simple_in_tokens_with_the_sequences_beside_it():
  # the 2-layer run that showed `0 [0, 1]` beside a batch of 32×128 = 4,096 tokens
  assert run_summary.format_noise_scale(0.4, 0.05, 1.2) == "0 [0, 1]"
  cell = run_summary.format_noise_scale(0.4, 0.05, 1.2, T)
  assert cell == "51.2 [6.40, 154] (0.400 seq)"
  assert run_summary.format_noise_scale(None, 0.05, None, T) == "> 6.40 (0.0500 seq)"
  assert run_summary.format_noise_scale(None, 0.05, 12.2, T) == "< 1,560 (12.2 seq)"
  assert run_summary.format_noise_scale(None, None, None, T) == "—"


def test_the_metrics_keys_in_tokens():
  values = {"grad_noise_scale": 0.4, "grad_noise_scale_low": 0.05,
            "grad_noise_scale_high": math.inf, "loss": 2.0}  # fmt: skip
  tokens = noise.in_tokens(values, T)
  assert tokens == pytest.approx({"grad_noise_scale_tokens": 51.2,
                                  "grad_noise_scale_low_tokens": 6.4,
                                  "grad_noise_scale_high_tokens": math.inf})  # fmt: skip
  assert noise.in_tokens(values, None) == {}  # not a language model: no keys
  assert noise.in_tokens({"loss": 1.0}, T) == {}  # not measured


def lm_summary(**phase_noise):
  phase = {"phase": 0, "batch_size": 32, "steps": 40, "seconds": 10.0, "compile_seconds": 1.0,
           **phase_noise}  # fmt: skip
  return {
    "status": "completed", "step": 40, "updates": 40, "baseline_updates": 40,
    "wall_seconds": 12.0, "final_test_loss": 2.5, "phases": [phase],
    "throughput": {"tokens_per_example": T, "flops_per_token": None, "peak_flops": None},
  }  # fmt: skip


def test_the_summary_shows_a_language_models_b_simple_in_tokens():
  text = run_summary.format_summary(
    lm_summary(grad_noise_scale=0.4, grad_noise_scale_low=0.05, grad_noise_scale_high=1.2)
  )
  header, row = text.splitlines()[2:4]
  assert header.endswith("B_simple (tokens)") and "32×128=4,096" in row
  assert row.endswith("51.2 [6.40, 154] (0.400 seq)")
  assert "in tokens, and in sequences of 128 (seq)" in text


def test_bigbatch_noise_draws_and_prints_b_simple_in_tokens(tmp_path, capsys):
  rows = [
    {"step": 10, "epoch": 0.1, "tokens": 40_960, "batch_size": 32.0, "grad_noise_scale": None,
     "grad_noise_scale_low": None, "grad_noise_scale_high": None},
    {"step": 20, "epoch": 0.2, "tokens": 81_920, "batch_size": 32.0,
     **{k: v for k, v in zip(noise.MEASURED_KEYS, (0.4, 0.05, 1.2))},
     **noise.in_tokens(dict(zip(noise.MEASURED_KEYS, (0.4, 0.05, 1.2))), T)},
  ]  # fmt: skip
  (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  assert main(["noise", "--workdir", str(tmp_path)]) == 0
  out = capsys.readouterr().out.splitlines()
  assert out[0] == "B_simple at step 20: 51.2 [6.40, 154] (0.400 seq) tokens (128 a sequence)"
  assert (tmp_path / "noise.png").stat().st_size > 1000
  assert run_summary.latest_noise_line(rows[:1], T).startswith("B_simple: not known yet")
  assert run_summary.latest_noise_line([{"step": 1}], None) == "B_simple: not measured by this run"
