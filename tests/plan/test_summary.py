"""The summary a user reads: B_simple with its bounds, rates net of what is not training."""

from bigbatch.plan import summary as run_summary


def phase(index, batch, steps, seconds, **extra):
  return {"phase": index, "batch_size": batch, "steps": steps, "seconds": seconds,
          "compile_seconds": 1.25, **extra}  # fmt: skip


SUMMARY = {
  "status": "completed",
  "step": 300,
  "updates": 300,
  "baseline_updates": 768,
  "wall_seconds": 12.34,
  "sessions": 2,
  "final_test_accuracy": 0.96789,
  "final_test_loss": 0.12345,
  "noise_confidence": 0.9,
  "phases": [
    phase(0, 32, 200, 4.0, eval_seconds=0.5, checkpoint_seconds=0.5, compile_wait_seconds=1.0,
          grad_noise_scale=1185.4, grad_noise_scale_low=736.2, grad_noise_scale_high=3119.0),
    phase(1, 160, 99, 2.0, grad_noise_scale=None, grad_noise_scale_low=7384.0,
          grad_noise_scale_high=None),
    phase(2, 800, 1, 0.5, grad_noise_scale=None, grad_noise_scale_low=None,
          grad_noise_scale_high=None),
  ],
}  # fmt: skip


def test_the_noise_scale_is_shown_with_its_interval_as_a_bound_or_as_unknown():
  assert run_summary.format_noise_scale(1185.4, 736.2, 3119.0) == "1,185 [736, 3,119]"
  assert run_summary.format_noise_scale(None, 7384.0, None) == "> 7,384"
  assert run_summary.format_noise_scale(None, None, None) == "—"
  assert run_summary.format_noise_scale(None, 10.0, 900.0) == "< 900"


def test_the_summary_table_and_its_rates():
  lines = run_summary.format_summary(SUMMARY).splitlines()
  assert lines[0] == ("completed at step 300 of 300 (baseline 768); wall time 12.3 s over 2 starts")
  assert lines[1] == "final test accuracy 0.9679, test loss 0.1235"
  table = [line.split() for line in lines[2:6]]
  assert table[0] == ["phase", "batch", "steps", "seconds", "train", "ex/s", "eval", "s", "ckpt",
                      "s", "compile", "s", "B_simple"]  # fmt: skip
  # 200 steps x 32 over 4 s less 0.5 eval, 0.5 checkpoint and 1 s compile wait: 3,200/s
  assert table[1] == ["0", "32", "200", "4.0", "3,200", "0.5", "0.5", "1.25", "1,185", "[736,",
                      "3,119]"]  # fmt: skip
  assert table[2][4] == f"{99 * 160 / 2.0:,.0f}" and table[2][-2:] == [">", "7,384"]
  assert table[3][4] == "—" and table[3][-1] == "—"  # one step: no rate; nothing known
  assert "its 90% interval" in lines[-1]


def test_an_unmeasured_run_has_no_noise_column():
  plain = {**SUMMARY, "phases": [phase(0, 32, 10, 1.0)], "sessions": 1}
  lines = run_summary.format_summary(plain).splitlines()
  assert lines[0].endswith("wall time 12.3 s")
  assert "B_simple" not in lines[2] and not any(line.startswith("B_simple") for line in lines)


def test_a_run_measured_on_one_step_in_k_says_so():
  lines = run_summary.format_summary({**SUMMARY, "noise_every": 8}).splitlines()
  assert lines[-1] == (
    "B_simple: measured on one step in 8 where measuring cuts the batch in halves (one "
    "device, no accumulation; noise.every)"
  )
  assert not any("one step in" in line for line in run_summary.format_summary(SUMMARY).split("\n"))
