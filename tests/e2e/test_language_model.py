"""A language model through `bigbatch train`: the token clock, Adam's rule, the metrics,
SIGKILLs across its batch changes (and, slow, at random moments and inside a branch of
`bigbatch cbs`) resumed bitwise, and bad input as one line.

The model is lm_tiny's architecture shrunk (2 layers of width 32) on a directory of
generated text, sequences of 16 tokens: batches of 8 -> 32 -> 128 -> 512 sequences at the
baseline's three decays (x4 each, `sde`: the betas and eps move), the last two as
micro-batches of 64 sequences (`accumulate`).
"""

import json
import math
import os
import pathlib
import shutil
import subprocess
import sys

import pytest
from small_run import metrics_rows
from xla_env import xla_flags

from bigbatch.cli import main
from bigbatch.plan import summary as run_summary
from bigbatch.train import train_and_evaluate
from bigbatch.workdir import checkpoint as ckpt

T = 16
CODE = "import sys; from bigbatch.cli import main; sys.exit(main(sys.argv[1:]))"
FIELDS = {
  "dataset.name": "text",
  "dataset.sequence_length": T,
  "model.num_layers": 2,
  "model.width": 32,
  "model.num_heads": 2,
  "model.context_length": T,
  "num_tokens": 16_384,
  "batch_tokens": 8 * T,
  "eval_every_tokens": 4_096,
  "eval_examples": 64,
  "eval_batch_size": 64,
  "schedule.warmup_tokens": 512,
  "schedule.boundaries_tokens": (4_096, 8_192, 12_288),
  "plan.max_batch_tokens": 64 * T,
  "plan.adam_rule": "sde",
  "log_every_steps": 5,
  "checkpoint_every_steps": 10,
}


def flags(text_dir, data_dir, **changes):
  values = {**FIELDS, "dataset.text_dir": text_dir, "dataset.data_dir": data_dir, **changes}
  out = []
  for field, value in values.items():
    text = f"({','.join(map(str, value))})" if isinstance(value, tuple) else str(value)
    out.append(f"--config.{field}={text}")
  return out


def run(workdir, text_dir, data_dir, fault=None):
  env = {**os.environ, "XLA_FLAGS": xla_flags(1)}
  env.pop("BIGBATCH_FAULT", None)
  if fault:
    env["BIGBATCH_FAULT"] = fault
  args = ["train", "--config", "lm_tiny_increase_batch", "--workdir", str(workdir), "--noprogress"]
  done = subprocess.run(
    [sys.executable, "-c", CODE, *args, *flags(text_dir, data_dir)],
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  return done.returncode, done.stdout + done.stderr


def config(text_dir, data_dir):
  from bigbatch.recipe import load_recipe

  recipe = load_recipe("lm_tiny_increase_batch").get_config()
  recipe.update_from_flattened_dict(
    {**FIELDS, "dataset.text_dir": text_dir, "dataset.data_dir": data_dir}
  )
  return recipe


@pytest.fixture(scope="module")
def reference(text_dir, data_dir, tmp_path_factory):
  """The uninterrupted run, in this process."""
  workdir = tmp_path_factory.mktemp("lm_reference")
  summary = train_and_evaluate(config(text_dir, data_dir), workdir, progress=False)
  return workdir, summary


def fingerprint(workdir):
  checkpoints = ckpt.Checkpoints(pathlib.Path(workdir) / "checkpoints")
  step = checkpoints.latest_step()
  record = checkpoints.record(step)
  checkpoints.close()
  return step, record["fingerprint"], record["final_eval"], record["plan"]


def test_the_ramp_trains_in_tokens_and_reports_a_language_models_figures(reference):
  workdir, summary = reference
  _, _, final, plan = fingerprint(workdir)
  batches = [p["batch_size"] for p in plan["phases"]]
  assert batches == [8, 8, 32, 128, 512] and plan["tokens_per_example"] == T
  micro = [p["micro_batches"] for p in plan["phases"]]
  assert micro == [1, 1, 1, 2, 8]
  # sde: at batch ratio k, 1 - b1 and 1 - b2 grow k-fold and eps shrinks by sqrt(k)
  k = [b / 8 for b in batches]
  assert [p["momentum"] for p in plan["phases"]] == pytest.approx([max(1 - x * 0.1, 0) for x in k])
  assert [p["b2"] for p in plan["phases"]] == pytest.approx([max(1 - x * 0.05, 0) for x in k])
  assert [p["eps"] for p in plan["phases"]] == pytest.approx([1e-8 / math.sqrt(x) for x in k])
  rows = metrics_rows(workdir)
  positions = [r for r in rows if "tokens" in r]
  for row in positions:  # the data position in tokens is sequences x T
    assert row["tokens"] == round(row["epoch"] * summary["throughput"]["tokens_per_example"]
                                  * plan["dataset_size"])  # fmt: skip
    assert row["tokens_per_second"] == pytest.approx(row["examples_per_second"] * T)
    assert "mfu" not in row  # a CPU: no peak, so no MFU
  assert positions[-1]["tokens"] >= 16_384
  evaluated = [r for r in rows if "eval_loss" in r]
  assert len(evaluated) >= 4
  for row in evaluated:
    assert row["eval_perplexity"] == pytest.approx(math.exp(row["eval_loss"]))
    assert row["eval_bits_per_byte"] == pytest.approx(row["eval_loss"] / math.log(2))
  assert evaluated[-1]["eval_loss"] < evaluated[0]["eval_loss"] < math.log(256)
  assert final["eval_loss"] == pytest.approx(summary["final_test_loss"])
  text = run_summary.format_summary(summary)
  assert "final held-out loss" in text and "train tok/s" in text and "512×16=8,192" in text


@pytest.fixture(scope="module")
def whole(text_dir, data_dir, tmp_path_factory):
  """The uninterrupted run on one device, in a process of its own (the reference above
  trained on this process's 8), that every killed run must end equal to."""
  workdir = tmp_path_factory.mktemp("lm_whole")
  code, output = run(workdir, text_dir, data_dir)
  assert code == 0, output[-2000:]
  return workdir


def assert_same_lm_run(killed, whole):
  """Bitwise the uninterrupted run's final state, evaluation and every logged value."""
  assert fingerprint(killed)[:3] == fingerprint(whole)[:3]
  by_step = {r["step"]: r for r in metrics_rows(whole)}
  for row in metrics_rows(killed):
    same = by_step[row["step"]]
    for key, value in row.items():
      if key not in ("examples_per_second", "tokens_per_second"):
        assert value == same[key], (row["step"], key)


def resume_lm_to_completion(workdir, text_dir, data_dir, limit=8):
  for _ in range(limit):
    code, output = run(workdir, text_dir, data_dir)
    assert code == 0, output[-2000:]
    if "completed at step" in output or "is complete" in output:
      return
  raise AssertionError("the run did not complete")


def lm_chain(whole, part):
  """The kills of the chain: at the first update of batch 32, inside the save at the change
  to 128 (whose steps are micro-batched); then (slow) on the step before 512, and after
  the final evaluation."""
  _, _, _, plan = fingerprint(whole)
  first = {p["batch_size"]: p["first_step"] for p in plan["phases"]}
  chain = [f"step@{first[32] + 1}", f"save@{first[128]}", f"step@{first[512] - 1}", "final_eval"]
  return chain[:2] if part == "ci" else chain[2:]


@pytest.mark.slow  # a long end-to-end run (3 minutes for both parts); the faults suite's
# reference kill and the PmapResNet kill run in CI
@pytest.mark.parametrize("part", ["ci", "slow"])
def test_a_chain_of_kills_across_the_batch_changes_resumes_bitwise(
  whole, text_dir, data_dir, tmp_path, part
):
  for fault in lm_chain(whole, part):
    code, output = run(tmp_path, text_dir, data_dir, fault=fault)
    assert code == -9, f"{fault}: {output[-2000:]}"
  resume_lm_to_completion(tmp_path, text_dir, data_dir)
  assert_same_lm_run(tmp_path, whole)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(3))
def test_a_kill_after_a_random_delay_resumes_bitwise(whole, text_dir, data_dir, tmp_path, seed):
  """SIGKILL after a delay drawn (seeded) over the whole run, start-up included."""
  import random

  env = {**os.environ, "XLA_FLAGS": xla_flags(1)}
  env.pop("BIGBATCH_FAULT", None)
  args = ["train", "--config", "lm_tiny_increase_batch", "--workdir", str(tmp_path)]
  proc = subprocess.Popen(
    [sys.executable, "-c", CODE, *args, "--noprogress", *flags(text_dir, data_dir)],
    env=env,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
  )
  try:
    proc.wait(timeout=random.Random(seed).uniform(3.0, 20.0))
  except subprocess.TimeoutExpired:
    proc.kill()
    proc.wait()
  resume_lm_to_completion(tmp_path, text_dir, data_dir)
  assert_same_lm_run(tmp_path, whole)


@pytest.mark.slow
def test_a_branch_of_a_language_model_killed_midway_resumes_bitwise(whole, tmp_path):
  """`bigbatch cbs` on the language model, SIGKILLed inside its first branch."""
  checkpoints = ckpt.Checkpoints(pathlib.Path(whole) / "checkpoints")
  step = checkpoints.all_steps()[0]
  checkpoints.close()
  copies = {name: tmp_path / name for name in ("branched", "killed")}
  for copy in copies.values():
    shutil.copytree(whole, copy, ignore=shutil.ignore_patterns("cbs"))
  flags_ = ["--step", str(step), "--batch-sizes", "128", "--tokens", "2048", "--tolerance", "0.1"]
  env = {**os.environ, "XLA_FLAGS": xla_flags(1)}
  env.pop("BIGBATCH_FAULT", None)

  def cbs(workdir, fault=None):
    extra = {"BIGBATCH_FAULT": fault} if fault else {}
    done = subprocess.run(
      [sys.executable, "-c", CODE, "cbs", "--workdir", str(workdir), *flags_],
      env={**env, **extra}, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    return done.returncode, done.stdout + done.stderr

  code, output = cbs(copies["branched"])
  assert code == 0, output[-2000:]
  code, output = cbs(copies["killed"], fault="step@9")
  assert code == -9, output[-2000:]  # at the branch's step 9 of 16
  code, output = cbs(copies["killed"])
  assert code == 0, output[-2000:]
  branch = pathlib.Path("cbs") / f"step_{step}" / "128"
  assert fingerprint(copies["killed"] / branch)[:3] == fingerprint(copies["branched"] / branch)[:3]


def bad(capsys, args, word):
  status = main(["train", *args])
  err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
  assert status == 2 and len(err) == 1 and err[0].startswith("bigbatch train: error: "), err
  assert word in err[0], err[0]


@pytest.mark.parametrize(
  ("changes", "word"),
  [
    ({"dataset.sequence_length": 32, "batch_tokens": 256}, "model.context_length: 16, but"),
    ({"batch_tokens": 100}, "batch_tokens: 100 is not a whole number of sequences of 16"),
    ({"plan.adam_rule": "cube"}, "plan.adam_rule: 'cube' is not one of paper, sqrt"),
  ],
)
def test_bad_language_model_input_is_one_line(capsys, tmp_path, text_dir, data_dir, changes, word):
  args = ["--config", "lm_tiny_increase_batch", "--workdir", str(tmp_path / "w"), "--noprogress"]
  bad(capsys, [*args, *flags(text_dir, data_dir, **changes)], word)
  assert not (tmp_path / "w" / "checkpoints").exists()


def test_an_empty_text_directory_is_one_line(capsys, tmp_path, data_dir):
  empty = tmp_path / "empty"
  empty.mkdir()
  args = ["--config", "lm_tiny_increase_batch", "--workdir", str(tmp_path / "w"), "--noprogress"]
  bad(capsys, [*args, *flags(str(empty), data_dir)], "holds no text (no non-empty files)")


def test_a_clock_mixed_up_is_one_line(capsys, tmp_path, text_dir, data_dir):
  args = ["--workdir", str(tmp_path / "w"), "--noprogress"]
  bad(
    capsys, [*args, "--config", "mnist1d_base", "--config.num_tokens=1000"], "num_tokens: only for"
  )
  lm = [*args, "--config", "lm_tiny_increase_batch", *flags(text_dir, data_dir)]
  bad(capsys, [*lm, "--config.num_epochs=3"], "num_epochs: a language model counts in tokens")


def test_the_summary_file_counts_tokens(reference):
  workdir, _ = reference
  saved = json.loads((pathlib.Path(workdir) / "summary.json").read_text())
  assert saved["throughput"]["tokens_per_example"] == T
  assert saved["final_test_perplexity"] == pytest.approx(math.exp(saved["final_test_loss"]))
  assert saved["throughput"]["peak_flops"] is None  # a CPU


@pytest.mark.slow  # a long end-to-end run: python -m pytest -m slow
def test_the_memory_probe_and_the_range_test_run_on_a_language_model(
  capsys, tmp_path, text_dir, data_dir
):
  lm = ["--config", "lm_tiny_increase_batch", *flags(text_dir, data_dir)]
  probe = ["--config.plan.max_batch_tokens=auto", "--config.plan.strategy=hybrid",
           f"--config.memory.budget_bytes={16 * 2**20}", "--config.memory.margin=0"]  # fmt: skip
  assert main(["plan", *lm, *probe, "--workdir", str(tmp_path / "probe")]) == 0
  out = capsys.readouterr().out
  cap = int(out.split("= max_batch_size ")[1].split()[0].replace(",", ""))
  assert f"sequences of 16 = plan.max_batch_tokens {cap * 16:,}" in out
  assert f"cap {cap:,}×16={cap * 16:,}" in out
  found = ["lr-find", *lm, "--steps", "8", "--json", "--workdir", str(tmp_path / "lr")]
  assert main(found) == 0
  (curve,) = json.loads(capsys.readouterr().out)["curves"]
  assert curve["batch_size"] == 8 and len(curve["losses"]) >= 2
  assert curve["losses"][0] == pytest.approx(math.log(256), abs=0.2)  # bytes, at the start


@pytest.mark.slow  # a long end-to-end run: python -m pytest -m slow
def test_branches_of_a_language_model_count_tokens_and_follow_the_adam_rule(reference, capsys):
  workdir, _ = reference
  checkpoints = ckpt.Checkpoints(pathlib.Path(workdir) / "checkpoints")
  step = checkpoints.all_steps()[0]
  checkpoints.close()
  flags = ["--workdir", str(workdir), "--step", str(step), "--batch-sizes", "128,256",
           "--tokens", "1024", "--tolerance", "0.1"]  # fmt: skip
  assert main(["cbs", *flags]) == 0
  out = capsys.readouterr().out
  assert "8×16=128" in out and "16×16=256" in out and "1,024 tokens a branch" in out
  root = pathlib.Path(workdir) / "cbs" / f"step_{step}"
  small, large = (fingerprint(p)[3] for p in (root / "128", root / "256"))  # tokens
  assert [p["batch_size"] for p in small["phases"]] == [8] and large["phases"][0]["steps"] == 4
  # sde: each branch moves the run's b1 and b2 at the step by its own batch ratio, so the
  # branch at twice the batch has twice 1 - b1 and 1 - b2, and eps / sqrt(2)
  one, two = small["phases"][0], large["phases"][0]
  assert 1 - two["momentum"] == pytest.approx(2 * (1 - one["momentum"]))
  assert 1 - two["b2"] == pytest.approx(2 * (1 - one["b2"]))
  assert two["eps"] == pytest.approx(one["eps"] / 2**0.5)
