"""The study tools' bookkeeping: a partial re-run keeps the other runs' results."""

import importlib.util
import json
import pathlib
import sys

import pytest

TOOLS = pathlib.Path(__file__).parents[2] / "tools"


def load(name: str):
  spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module  # a dataclass of the module looks its module up while built
  spec.loader.exec_module(module)
  return module


def test_kept_results_replaces_rerun_runs_and_keeps_the_rest_in_study_order(tmp_path):
  study = load("study_adaptive")
  settings = {"epochs": 20, "seeds": [0, 1, 2]}
  earlier = {
    "adaptive/noise": {"v": "old"},
    "fixed/decay_lr": {"v": "old"},
    "adaptive/plateau": {"v": 1},
  }
  (tmp_path / "results.json").write_text(json.dumps({"settings": settings, "runs": earlier}))
  merged = study.kept_results(tmp_path, settings, {"adaptive/noise": {"v": "new"}})
  assert list(merged) == ["fixed/decay_lr", "adaptive/plateau", "adaptive/noise"]
  assert merged["adaptive/noise"] == {"v": "new"}
  assert merged["fixed/decay_lr"] == {"v": "old"}


def test_kept_results_refuses_results_made_with_other_seeds(tmp_path):
  study = load("study_adaptive")
  earlier = {"settings": {"epochs": 20, "seeds": [0]}, "runs": {}}
  (tmp_path / "results.json").write_text(json.dumps(earlier))
  with pytest.raises(
    SystemExit, match=r"--keep: .*results.json has seeds \[0\], this run \[0, 1\]"
  ):
    study.kept_results(tmp_path, {"epochs": 20, "seeds": [0, 1]}, {})


def lm_rows(losses, *, batch=32, tokens_per_eval=4096):
  """metrics.jsonl rows of a language model: a logged step without an evaluation between
  evaluations that carry the step's training metrics."""
  rows = []
  for i, loss in enumerate(losses, start=1):
    rows.append({"step": 2 * i - 1, "tokens": (2 * i - 1) * tokens_per_eval // 2,
                 "batch_size": float(batch), "loss": 3.0, "grad_noise_scale": None,
                 "grad_noise_scale_low": 1.5, "grad_noise_scale_high": None})  # fmt: skip
    rows.append({"step": 2 * i, "tokens": i * tokens_per_eval, "batch_size": float(batch),
                 "grad_noise_scale": 40.0 * i, "grad_noise_scale_low": 30.0 * i,
                 "grad_noise_scale_high": 60.0 * i, "eval_loss": loss,
                 "eval_bits_per_byte": loss / 0.6931471805599453})  # fmt: skip
  return rows


def test_lm_eval_curve_reads_the_evaluations_and_their_step_s_noise_scale():
  study = load("study_lm")
  curve = study.eval_curve(lm_rows([2.5, 2.0]))
  assert curve["tokens"] == [4096, 8192]
  assert curve["step"] == [2, 4]
  assert curve["eval_loss"] == [2.5, 2.0]
  assert curve["eval_bits_per_byte"] == pytest.approx([2.5 / 0.693147, 2.0 / 0.693147])
  assert curve["batch"] == [32, 32]
  assert (curve["measured"], curve["low"], curve["high"]) == ([40.0, 80.0], [30.0, 60.0],
                                                             [60.0, 120.0])  # fmt: skip
  # a final evaluation on a step that logged no batch takes the last batch logged
  rows = lm_rows([2.5, 2.0], batch=64)
  del rows[-1]["batch_size"]
  assert study.eval_curve(rows)["batch"] == [64, 64]
  trace = study.noise_trace(lm_rows([2.5]))
  assert trace["tokens"] == [2048, 4096]
  assert trace["measured"] == [None, 40.0] and trace["low"] == [1.5, 30.0]


def test_lm_decisions_give_their_position_in_tokens():
  study = load("study_lm")
  rows = [{"step": 40, "decision_position": 1280, "decision_batch_size": 128,
           "decision_learning_rate": 1e-3, "decision_reason": "B_simple's lower bound"}]  # fmt: skip
  (decision,) = study.decisions(rows, sequence_length=128)
  assert decision["tokens"] == 1280 * 128 and decision["batch_size"] == 128


def test_lm_tokens_to_target_is_the_first_evaluation_at_or_below_it():
  study, report = load("study_lm"), load("study_lm_report")
  curve = study.eval_curve(lm_rows([2.5, 2.0, 1.9, 2.1]))
  assert report.tokens_to_target(curve, 2.0) == {"tokens": 8192, "updates": 4}
  assert report.tokens_to_target(curve, 1.95) == {"tokens": 12288, "updates": 6}
  assert report.tokens_to_target(curve, 1.5) is None


def lm_results(
  study, losses_by_run: dict[str, list[list[float]]], updates: dict[str, int], runs=None
):
  results = {}
  for run in runs or study.RUNS:
    if run.name not in losses_by_run:
      continue
    per_seed = {}
    for seed, losses in enumerate(losses_by_run[run.name]):
      rows = lm_rows(losses)
      per_seed[seed] = {
        "loss": losses[-1], "bits_per_byte": losses[-1] / 0.6931471805599453,
        "updates": updates[run.name], "tokens": 4096 * len(losses), "wall_seconds": 10.0,
        "curve": study.eval_curve(rows), "noise": study.noise_trace(rows), "decisions": [],
      }  # fmt: skip
    results[run.name] = study.aggregate(run, per_seed, "bigbatch train ...")
  return results


def test_lm_table_reports_targets_and_which_rule_matches_in_half_the_updates():
  study, report = load("study_lm"), load("study_lm_report")
  results = lm_results(
    study,
    {
      "baseline": [[2.5, 2.1, 2.0], [2.5, 2.2, 2.02]],  # target: mean final 2.01
      "increase_batch/sqrt": [[2.4, 2.0, 2.0], [2.4, 2.1, 2.03]],  # within noise
      "increase_batch/paper": [[2.6, 2.4, 2.3], [2.6, 2.4, 2.31]],  # far worse
    },
    {"baseline": 250, "increase_batch/sqrt": 99, "increase_batch/paper": 99},
  )
  target = report.with_targets(results)
  assert target == pytest.approx(2.01)
  assert list(results) == ["baseline", "increase_batch/paper", "increase_batch/sqrt"]
  assert results["baseline"]["to_target"] == {"0": {"tokens": 12288, "updates": 6}, "1": None}
  assert results["increase_batch/sqrt"]["to_target"] == {
    "0": {"tokens": 8192, "updates": 4}, "1": None,
  }  # fmt: skip
  sqrt = report.compare(results["increase_batch/sqrt"], results["baseline"])
  assert sqrt["difference"] == pytest.approx(0.005)
  # two seeds each: a std of d / sqrt(2) for a spread d, its mean's variance std^2 / 2
  assert sqrt["se"] == pytest.approx((0.03**2 / 4 + 0.02**2 / 4) ** 0.5)
  # paired by seed: differences 0 and 0.01, a mean of 0.005 with a standard error of 0.005
  assert sqrt["paired_difference"] == pytest.approx(0.005)
  assert sqrt["paired_se"] == pytest.approx(0.005)
  assert sqrt["within_noise"] and sqrt["half_updates"]
  paper = report.compare(results["increase_batch/paper"], results["baseline"])
  assert not paper["within_noise"] and paper["half_updates"]

  settings = {"tokens": 12288, "seeds": [0, 1], "eval_examples": 16, "device": "cpu x 1",
              "python": "3.11.7"}  # fmt: skip
  text = report.tables(results, settings, target)
  rows = {}  # each run's first row: the table over seeds
  for line in text.splitlines():
    if line.startswith("| "):
      rows.setdefault(line.split(" | ")[0], line)
  baseline = rows["| baseline: batch 4,096 tokens, lr / 4"]
  assert "| 2.0100 ± 0.0141 |" in baseline and "| 250 | 1.00x |" in baseline
  assert "12,288 (1 of 2 seeds; the others not reached)" in baseline
  sqrt_row = rows["| increasing batch, sqrt (lr / 2)"]
  assert "| +0.0050 ± 0.0050 (+1.0 SE) | +0.0050 ± 0.0180 (+0.3 SE) | 99 | 2.53x |" in sqrt_row
  assert "| not reached |" in rows["| increasing batch, paper (lr held)"]
  assert "- increasing batch, sqrt (lr / 2): matches: 2.0150 against 2.0100" in text
  assert "- increasing batch, paper (lr held): does not match (loss): 2.3050" in text
  # the B_simple table, medians, in tokens: 32 sequences / 120 [90, 180] x 128
  assert "| 3 (12,288) | 4,096 / 15,360 [11,520, 23,040] |" in text


def test_lm_optimizer_study_judges_each_optimizer_against_adamw_on_loss_alone():
  study, report = load("study_lm"), load("study_lm_report")
  results = lm_results(
    study,
    {
      "baseline": [[2.5, 2.0], [2.5, 2.1], [2.5, 2.2]],
      "lion": [[2.5, 2.01], [2.5, 2.09], [2.5, 2.22]],  # differences +0.01, -0.01, +0.02
      "muon": [[2.5, 1.9], [2.5, 1.98], [2.5, 2.11]],  # -0.10, -0.12, -0.09
    },
    {"baseline": 240, "lion": 240, "muon": 240},
    runs=study.OPTIMIZER_RUNS,
  )
  settings = {"study": "optimizers", "tokens": 8192, "seeds": [0, 1, 2],
              "eval_examples": 16, "device": "cpu x 1", "python": "3.11.7"}  # fmt: skip
  text = report.tables(results, settings, report.with_targets(results))
  assert "the baseline's plan under each optimizer, 8,192 tokens" in text
  assert "**Does an optimizer match AdamW at the same budget?**" in text
  assert "in at most half its updates" not in text
  # paired: Lion's mean +0.0067 with a standard error of 0.0088; Muon's -0.1033 ± 0.0088
  assert "- Lion (lr 3e-4, wd 0.7): matches: 2.1067 against 2.1000" in text
  assert "- Muon (lr 2e-3, wd 0.1; AdamW off the matrices): lower loss than AdamW: 1.9967" in text


def test_optimizer_study_keeps_the_seeds_whose_command_line_is_unchanged(tmp_path):
  study = load("study_optimizers")
  common = {"num_epochs": 20, "seed": 0}
  same, changed = study.Run("lars", 16_000, 14.0), study.Run("lamb", 16_000, 0.14)
  earlier = {}
  for run, command in ((same, same.command(common, 0)), (changed, "bigbatch train --old")):
    earlier[run.name] = {
      "optimizer": run.optimizer, "batch": run.batch, "lr": run.lr, "plan": run.plan,
      "command": command, "per_seed": {"0": {"accuracy": 0.8}, "1": {"accuracy": 0.7}},
    }  # fmt: skip
  (tmp_path / "results.json").write_text(json.dumps({"settings": {}, "runs": earlier}))
  kept = study.Study(None, common, {})
  kept.keep(tmp_path)
  assert list(kept.done) == [same.name]
  assert kept.done[same.name]["seeds"] == {0: {"accuracy": 0.8}, 1: {"accuracy": 0.7}}
  assert kept.done[same.name]["run"] == same


def test_lm_warmups_are_built_from_the_measured_critical_batches(tmp_path):
  study, report = load("study_lm"), load("study_lm_report")
  rows = [
    {"tokens": 81_920, "merrill": 8_192, "merrill_orders": 4_096},
    {"tokens": 409_600, "merrill": 4_096, "merrill_orders": 4_096},
    {"tokens": 737_280, "merrill": 16_384, "merrill_orders": None},
  ]
  path = tmp_path / "results.json"
  path.write_text(json.dumps({"models": {"lm_tiny": {"rows": rows}}}))
  runs, built = study.cbs_runs(path)
  # auto: 8,192 from 81,920, 16,384 from 737,280; four orders: never above 4,096, no run
  (run,) = runs
  assert run.name == "cbs_ramp/merrill"
  assert dict(run.overrides)["plan.ramp_tokens"] == ((81_920, 8_192), (737_280, 16_384))
  assert dict(run.overrides)["plan.strategy"] == "ramp"
  assert "--config.plan.ramp_tokens='((81920,8192),(737280,16384))'" in run.command({})
  assert [b["ramp"] for b in built] == [((81_920, 8_192), (737_280, 16_384)), ()]
  lines = report.ramp_lines(json.loads(json.dumps(built)))  # as results.json has them
  assert lines[-2].endswith("batch 8,192 from 81,920 tokens; batch 16,384 from 737,280 "
                            "tokens: trained as `cbs_ramp/merrill`.")  # fmt: skip
  assert "4,096 at 81,920, 4,096 at 409,600, — at 737,280 tokens" in lines[-1]
  assert lines[-1].endswith("never above the baseline's 4,096: the baseline's plan (its row).")
  assert study.cbs_runs(tmp_path / "missing.json") == ([], [])


def test_one_ramp_entry_is_written_as_a_tuple_on_the_command_line():
  reproduce = load("reproduce")
  run = reproduce.Run(
    "r", "r", "lm_tiny_base.py", None, (("plan.ramp_tokens", ((81_920, 8_192),)),)
  )
  assert run.command({"schedule.boundaries": (0.3, 0.6)}) == (
    "bigbatch train --config configs/lm_tiny_base.py --config.schedule.boundaries='(0.3,0.6)' "
    "--config.plan.ramp_tokens='((81920,8192),)'"
  )


def cbs_rows():
  """A run's metrics.jsonl: B_simple resolved at step 50, only its lower bound at 100."""
  return [
    {"step": 50, "epoch": 0.5, "batch_size": 128.0, "grad_noise_scale": 400.0,
     "grad_noise_scale_low": 300.0, "grad_noise_scale_high": 600.0},
    {"step": 60, "epoch": 0.6, "eval_loss": 1.0},  # an evaluation row: no noise measured
    {"step": 100, "epoch": 1.0, "batch_size": 128.0, "grad_noise_scale": None,
     "grad_noise_scale_low": 2000.0, "grad_noise_scale_high": None},
  ]  # fmt: skip


def test_cbs_noise_at_a_step_is_the_last_measurement_at_or_before_it():
  study = load("study_cbs")
  rows = cbs_rows()
  assert study.noise_at(rows, 60) == {"step": 50, "value": 400.0, "low": 300.0, "high": 600.0}
  assert study.noise_at(rows, 100) == {"step": 100, "value": None, "low": 2000.0, "high": None}
  assert study.noise_at(rows, 49)["low"] is None
  nan = [{"step": 5, "grad_noise_scale": float("nan"), "grad_noise_scale_low": float("inf")}]
  assert study.noise_at(nan, 5) == {"step": 5, "value": None, "low": None, "high": None}
  assert study.noise_trace(rows)["epoch"] == [0.5, 1.0]


def test_cbs_branch_steps_are_checkpointed_steps_near_each_fraction_of_the_run():
  study = load("study_cbs")
  assert study.branch_steps(7813, 800) == [800, 3200, 5600, 7200]
  assert study.branch_steps(250, 20) == [20, 100, 180, 220]
  assert study.branch_steps(32, 8) == [8, 16, 24]  # 0.7 and 0.9 of the run: one step


def cbs_result(step, critical, zhang, losses, *, run_batch=128, orders=(1.0, 1.002)):
  """`bigbatch cbs --json`'s result, in examples (sequences for a language model), with the
  study's critical batch from the smallest batch's losses in several data orders."""
  return {
    "step": step, "run_batch_size": run_batch, "critical_batch": critical,
    "zhang_critical_batch": zhang, "tolerance": 0.01, "order_losses": list(orders),
    "tolerance_orders": 0.02, "critical_batch_orders": 2 * critical,
    "branches": [{"batch_size": b, "final_loss": loss} for b, loss in losses.items()],
  }  # fmt: skip


def test_cbs_table_sets_the_branched_critical_batch_against_b_simple():
  study = load("study_cbs")
  rows = cbs_rows()
  losses = {128: 1.0, 256: 1.005, 512: 1.02, 1024: 1.1, 2048: float("inf")}
  orders = (1.0, 1.01, 0.99, 1.0, 1.0, 1.0)  # the study's 6 data orders of batch 128
  first = study.summarize(cbs_result(50, 256, 128, losses, orders=orders), rows, study.MNIST)
  assert first["b_simple"] == {"value": 400.0, "low": 300.0, "high": 600.0}
  assert first["epoch"] == 0.5 and first["run_batch"] == 128
  assert first["losses"]["2048"] is None  # diverged
  # B_simple [300, 600] against a critical batch in [256, 512): they meet
  assert study.agreement(first, study.MNIST.batches) == {
    "ratio": 1.5625, "ratio_text": "1.6", "overlap": True,
  }  # fmt: skip
  late = cbs_result(100, 1024, None, dict.fromkeys(losses, 1.0), orders=orders)
  late = study.summarize(late | {"critical_batch": 2048}, rows, study.MNIST)
  said = study.agreement(late, study.MNIST.batches)
  assert said["ratio"] is None and said["ratio_text"] == "> 0.98" and said["overlap"]
  assert study.bracket(128, study.MNIST.batches) == (0.0, 256.0)  # the smallest: below 256
  assert study.bracket(2048, study.MNIST.batches) == (2048.0, float("inf"))
  first["seconds"] = 12.0
  lines = study.table([first, late], study.MNIST)
  assert lines[0].startswith(
    "| step | epoch | run's batch | B_simple [95%] | critical batch (Merrill: auto / 6 orders) |"
  )
  assert lines[2] == (
    "| 50 | 0.5 | 128 | 400 [300, 600] | 256 / 512 | 128 | 1.6 / 0.78 | yes / yes "
    "| 0.0100 / 0.0200 "
    "| 1.0000 | 1.0050 | 1.0200 | 1.1000 | diverged | 12 |"
  )
  assert lines[3].startswith(
    "| 100 | 1.0 | 128 | > 2,000 | ≥ 2,048 / ≥ 2,048 | — | > 0.98 / > 0.98 | yes / yes |"
  )


def test_cbs_summary_of_a_language_model_counts_tokens_and_reads_the_re_measured_run():
  study = load("study_cbs")
  rows = [{"step": 20, "tokens": 81920, "batch_size": 32.0, "grad_noise_scale": None,
           "grad_noise_scale_low": None, "grad_noise_scale_high": None}]  # fmt: skip
  again = [{"step": 20, "tokens": 81920, "batch_size": 32.0, "grad_noise_scale": 50.0,
            "grad_noise_scale_low": 40.0, "grad_noise_scale_high": 70.0}]  # fmt: skip
  result = cbs_result(20, 64, 32, {32: 2.0, 64: 2.001, 128: 2.1}, run_batch=32)
  row = study.summarize(result, rows, study.LM, again)
  assert row["run_batch"] == 4096 and row["merrill"] == 64 * 128 and row["zhang"] == 4096
  assert row["b_simple"] == {"value": None, "low": None, "high": None}
  assert row["b_simple_remeasured"] == {"value": 6400.0, "low": 5120.0, "high": 8960.0}
  assert row["losses"] == {"4096": 2.0, "8192": 2.001, "16384": 2.1}
  assert study.table([row], study.LM)[2].startswith(  # two data orders: auto only
    "| 20 | 81,920 | 4,096 | — | 6,400 [5,120, 8,960] | 8,192 | 4,096 | 0.78 | yes | 0.0100 |"
  )


def test_cbs_tolerance_from_data_orders_is_two_sigma_and_cbs_s_own_for_a_pair():
  study = load("study_cbs")
  assert study.orders_tolerance([1.0, 1.01]) == pytest.approx(2**0.5 * 0.01)
  assert study.orders_tolerance([1.0, 1.02, 1.04]) == pytest.approx(2 * 0.02)
  assert study.orders_tolerance([1.0, 1.0]) == 1e-4  # equal losses: the floor
  assert study.orders_tolerance([1.0, float("inf")]) == float("inf")


def test_law_ramp_doubles_the_batch_where_d_to_the_0_571_through_the_first_point_reaches_it():
  study = load("study_lm_ramp")
  # 204,800 x (B / 8,192)^(1 / 0.571), rounded down to a whole update of 2,048 tokens:
  # 4,096 at 60,832 -> 59,392; 8,192 at the point itself; 16,384 at 689,490 -> 688,128;
  # 32,768 at 2,321,270 -> 2,320,384; no larger batch (32,768 is the cap)
  assert study.law_ramp((204_800, 8_192), 10_240_000) == (
    (59_392, 4_096), (204_800, 8_192), (688_128, 16_384), (2_320_384, 32_768),
  )  # fmt: skip
  # a shorter budget ends the ramp where the law passes it
  assert study.law_ramp((204_800, 8_192), 1_000_000) == (
    (59_392, 4_096), (204_800, 8_192), (688_128, 16_384),
  )  # fmt: skip


def test_ramp_study_builds_its_ramps_from_the_measured_critical_batches():
  study = load("study_lm_ramp")
  rows = [
    {"tokens": 204_800, "merrill_orders": 4_096},
    {"tokens": 1_024_000, "merrill_orders": None},  # not measured: changes nothing
    {"tokens": 2_560_000, "merrill_orders": 16_384},
    {"tokens": 7_168_000, "merrill_orders": 8_192},  # lower later: the ramp never shrinks
  ]
  runs, built = study.measured_runs(rows, 10_240_000)
  assert [b["ramp"] for b in built] == [
    ((204_800, 4_096), (2_560_000, 16_384)),
    # through (204,800, 4,096): 8,192 at 204,800 x 2^1.7513 = 689,490 -> 688,128, ...
    ((204_800, 4_096), (688_128, 8_192), (2_320_384, 16_384), (7_813_120, 32_768)),
  ]
  cbs, law = runs
  assert dict(cbs.overrides) == {
    "plan.strategy": "ramp", "plan.ramp_tokens": ((204_800, 4_096), (2_560_000, 16_384)),
  }  # fmt: skip
  assert law.name == "law_ramp" and "8,192 from 688,128" in law.label
  # the critical batch at the baseline's: no warm-up to train; the law still grows from it
  flat = [{"tokens": 204_800, "merrill_orders": 2_048}]
  runs, built = study.measured_runs(flat, 10_240_000)
  assert [r.name for r in runs] == ["law_ramp"] and built[0]["ramp"] == ()
  assert built[1]["ramp"][0] == (688_128, 4_096)
  # nothing measured: neither ramp
  runs, built = study.measured_runs([{"tokens": 204_800, "merrill_orders": None}], 10_240_000)
  assert runs == [] and [b["ramp"] for b in built] == [(), ()]


def test_ramp_study_s_large_batch_takes_the_square_root_rule_s_rate():
  study = load("study_lm_ramp")
  runs = {r.name: r for r in study.fixed_runs(10_240_000)}
  assert list(runs) == ["baseline", "large", "increase_batch/sqrt", "noise"]
  large = dict(runs["large"].overrides)
  assert large == {"batch_tokens": 16_384, "optimizer.learning_rate": 0.005657}  # 2e-3 x 8^0.5
  assert dict(runs["noise"].overrides)["plan.min_phase_tokens"] == 512_000
  common = study.common_fields(10_240_000)
  assert common["schedule.boundaries_tokens"] == (3_072_000, 6_144_000, 8_192_000)
  assert common["schedule.warmup_tokens"] == 102_400 and common["eval_every_tokens"] == 512_000


def test_ramp_study_keeps_what_results_json_holds_at_its_budget(tmp_path):
  study = load("study_lm_ramp")
  assert study.earlier(tmp_path, 409_600) == ({}, None)  # nothing yet
  saved = {
    "settings": {"tokens": 409_600, "cbs": {"rows": [{"tokens": 2_048}], "budget": 32_768}},
    "runs": {"baseline": {"command": "bigbatch train ...", "per_seed": {"0": {"loss": 5.0}}}},
  }
  (tmp_path / "results.json").write_text(json.dumps(saved))
  runs, cbs = study.earlier(tmp_path, 409_600)
  assert runs == {"baseline": ("bigbatch train ...", {0: {"loss": 5.0}})}
  assert cbs == saved["settings"]["cbs"]
  with pytest.raises(SystemExit, match=r"^--keep: .*results.json has tokens 409,600, this run "
                                       r"10,240,000$"):  # fmt: skip
    study.earlier(tmp_path, 10_240_000)


def test_the_elastic_study_counts_device_seconds_per_phase_and_the_saving_by_hand(tmp_path):
  study = load("study_elastic")
  summary = {
    "final_test_accuracy": 0.97, "updates": 10, "sessions": 2,
    "phases": [
      {"phase": 0, "batch_size": 128, "steps": 8, "devices": 2, "seconds": 6.0},
      {"phase": 1, "batch_size": 640, "steps": 2, "devices": 8, "seconds": 4.0},
      {"phase": 2, "batch_size": 3200, "steps": 0, "devices": 8, "seconds": 0.0},  # never ran
    ],
  }  # fmt: skip
  (tmp_path / "summary.json").write_text(json.dumps(summary))
  elastic = study.measured(tmp_path, wall=20.0)
  assert elastic["device_seconds"] == 2 * 6.0 + 8 * 4.0 and elastic["seconds"] == 10.0
  assert [p["phase"] for p in elastic["phases"]] == [0, 1]
  eight = {**elastic, "device_seconds": 8 * 6.0 + 8 * 4.0}
  text = study.table({0: {"elastic": elastic, "eight": eight}}, epochs=4)
  saved = 1 - 44.0 / 80.0  # 45.0%
  assert f"Device-seconds saved by the elastic run: {saved:.1%}" in text
  assert "| elastic | 0 | 128 | 8 | 2 | 6.0 | 12.0 |" in text
  # the command scales the recipe's boundaries (10, 20, 30 of 40 epochs) to the epochs run
  assert "--config.schedule.boundaries=(2,4,6)" in study.command(tmp_path, 0, 8)
