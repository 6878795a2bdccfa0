"""Snapshot ensembles: one snapshot per cycle end, kept apart, exact under resume, and
`bigbatch ensemble` against the mean of softmaxes computed by hand.

The run: the small MNIST-1D run (`small_run`) with SGDR restarting every half
epoch for 2 epochs at batch 32: 4 cycles of 16 steps.
"""

import json
import pathlib

import jax
import numpy as np
import pytest
from small_run import CONFIG, overrides, small_config, start

from bigbatch import config as bbconfig
from bigbatch import data
from bigbatch import train as bbtrain
from bigbatch.cli import main
from bigbatch.cli.ensemble import format_ensemble
from bigbatch.train import build
from bigbatch.train.experiment import Experiment
from bigbatch.workdir import checkpoint as ckpt
from bigbatch.workdir import snapshots as snaps

SGDR = {
  "schedule.name": "sgdr",
  "schedule.cycle_epochs": 0.5,
  "num_epochs": 2,
  "plan.strategy": "decay_lr",
  "keep_checkpoints": 1,
  "noise.measure": False,
}
CYCLE_ENDS = [16, 32, 48, 64]  # 32 steps an epoch
SMALL_MODEL = {"model.channels": (8, 8), "model.strides": (2, 2)}  # in-process runs only


def _spec_and_schedule(config):
  spec = bbconfig.read(config)
  return spec, build.schedule_of(spec)


def train(data_dir, workdir, **options):
  config = small_config(data_dir, **SGDR, **SMALL_MODEL)
  return bbtrain.train_and_evaluate(
    config, workdir, devices=jax.devices()[:1], progress=False, **options
  )


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
  """The run, stopped inside the third cycle (as if preempted) and resumed to the end."""
  workdir = tmp_path_factory.mktemp("sgdr")
  train(data_dir, workdir, stop_at_step=40)
  before = snapshot_records(workdir)
  summary = train(data_dir, workdir)
  return workdir, summary, before


def snapshot_records(workdir):
  store = snaps.open_store(pathlib.Path(workdir) / "snapshots")
  try:
    return [store.record(step) for step in store.all_steps()]
  finally:
    store.close()


@pytest.mark.parametrize(
  "fields, ends",
  [
    (
      {"schedule.name": "sgdr", "schedule.cycle_epochs": 1.0, "schedule.cycle_mult": 2.0},
      (1, 3, 5),
    ),
    (
      {"schedule.name": "sgdr", "schedule.cycle_epochs": 1.0, "schedule.warmup_epochs": 0.5},
      (1.5, 2.5, 3.5, 4.5, 5),
    ),
    ({"schedule.name": "triangular2", "schedule.step_size_epochs": 1.0}, (2, 4, 5)),
    ({"schedule.name": "cosine"}, ()),
    ({"schedule.name": "sgdr", "schedule.cycle_epochs": 1.0, "snapshots": "off"}, ()),
  ],
)
def test_cycle_ends_follow_the_schedule(data_dir, fields, ends):
  config = small_config(data_dir, num_epochs=5, **fields)
  assert snaps.snapshot_epochs(*_spec_and_schedule(config)) == pytest.approx(ends)


def test_on_with_a_schedule_that_does_not_restart_is_refused(data_dir):
  config = small_config(data_dir, snapshots="on")  # the small run's step decay
  with pytest.raises(bbconfig.ConfigError, match="snapshots: 'on' needs a restarting schedule"):
    snaps.snapshot_epochs(*_spec_and_schedule(config))


def test_one_snapshot_per_cycle_end_kept_apart_from_the_checkpoints(trained):
  workdir, summary, _ = trained
  records = snapshot_records(workdir)
  assert [r["step"] for r in records] == CYCLE_ENDS
  assert [r["cycle"] for r in records] == [1, 2, 3, 4]
  assert [r["epoch"] for r in records] == [0.5, 1.0, 1.5, 2.0]
  assert records[0]["config"]["schedule"]["name"] == "sgdr"
  checkpoints = ckpt.Checkpoints(workdir / "checkpoints")
  assert checkpoints.all_steps() == [64]  # keep_checkpoints=1 rotated the rest away
  final = checkpoints.record(64)["fingerprint"]
  checkpoints.close()
  # the last snapshot holds the final state's parameters and statistics, bit for bit
  last = records[-1]["fingerprint"]
  assert last and all(final[name] == value for name, value in last.items())
  assert summary["status"] == "completed"


def test_a_resumed_run_keeps_the_snapshots_taken_before_it_stopped(trained):
  workdir, _, before = trained
  assert [r["step"] for r in before] == CYCLE_ENDS[:2]
  # the snapshots written before the stop are those the finished run has (the
  # bitwise comparison with an uninterrupted run, under SIGKILL, is the slow test below)
  assert snapshot_records(workdir)[:2] == before


def by_hand(workdir, steps):
  """Each snapshot's softmax outputs on the test split, unsharded, in NumPy."""
  store = snaps.open_store(pathlib.Path(workdir) / "snapshots")
  setup = Experiment.from_record(store.record(steps[0]), jax.devices()[:1])
  members = [store.restore(step, setup.variables_target()) for step in steps]
  store.close()
  source = setup.eval_source
  (batch,) = data.eval_batches(source, setup.dataset, batch_size=len(source))
  probs = [
    np.asarray(jax.nn.softmax(setup.model.apply(v, batch["inputs"], train=False)), np.float64)
    for v in members
  ]
  return probs, batch["labels"]


def run_ensemble(capsys, *flags):
  status = main(["ensemble", *flags])
  captured = capsys.readouterr()
  return status, captured.out, [line for line in captured.err.splitlines() if "error" in line]


def test_the_ensemble_is_the_mean_of_the_snapshots_softmaxes(trained, capsys):
  workdir = trained[0]
  status, out, _ = run_ensemble(capsys, "--workdir", str(workdir), "--last", "3", "--json")
  assert status == 0
  result = json.loads(out)
  assert [row["step"] for row in result["snapshots"]] == CYCLE_ENDS[1:]
  probs, labels = by_hand(workdir, CYCLE_ENDS[1:])
  for row, p in zip(result["snapshots"], probs):
    assert row["eval_accuracy"] == np.mean(p.argmax(-1) == labels)
    assert row["eval_loss"] == pytest.approx(
      -np.log(p[np.arange(len(labels)), labels]).mean(), 1e-5
    )
  mean = np.mean(probs, axis=0)
  assert result["ensemble"]["members"] == 3
  assert result["ensemble"]["eval_accuracy"] == np.mean(mean.argmax(-1) == labels)
  expected_loss = -np.log(mean[np.arange(len(labels)), labels]).mean()
  assert result["ensemble"]["eval_loss"] == pytest.approx(expected_loss, rel=1e-5)
  # the members disagree: the ensemble is not any one of them
  assert all(row["eval_loss"] != result["ensemble"]["eval_loss"] for row in result["snapshots"])


def test_an_ensemble_of_one_is_that_snapshots_own_evaluation(trained, capsys):
  workdir, summary, _ = trained
  status, out, _ = run_ensemble(capsys, "--workdir", str(workdir), "--last", "1", "--json")
  assert status == 0
  result = json.loads(out)
  (member,) = result["snapshots"]
  assert member["step"] == 64
  assert member["eval_accuracy"] == result["ensemble"]["eval_accuracy"]
  assert member["eval_accuracy"] == summary["final_test_accuracy"]
  assert member["eval_loss"] == pytest.approx(result["ensemble"]["eval_loss"], rel=1e-6)
  assert member["eval_loss"] == pytest.approx(summary["final_test_loss"], rel=1e-6)


def test_the_table_puts_the_ensemble_under_its_snapshots():
  rows = [
    {"step": 16, "epoch": 0.5, "cycle": 1, "eval_accuracy": 0.5, "eval_loss": 1.25},
    {"step": 32, "epoch": 1.0, "cycle": 2, "eval_accuracy": 0.625, "eval_loss": 1.0},
  ]
  ensemble = {"members": 2, "eval_accuracy": 0.75, "eval_loss": 0.875}
  assert format_ensemble(rows, ensemble).splitlines() == [
    "snapshot      step   epoch  test accuracy  test loss",
    "cycle 1         16    0.50         0.5000     1.2500",
    "cycle 2         32    1.00         0.6250     1.0000",
    "ensemble    last 2                 0.7500     0.8750",
    "ensemble: the mean of the last 2 snapshots' softmax outputs",
  ]


@pytest.mark.parametrize(
  "flags, message",
  [
    (["--last", "0"], "--last: must be between 1 and 4"),
    (["--last", "5"], "--last: must be between 1 and 4"),
    (["--last", "two"], "--last"),
    (["--workdir", "{empty}"], "snapshots does not exist: train with a restarting schedule"),
    (["--workdir", "{empty}/snapshots"], "snapshots does not exist"),
    (["--json"], "--workdir is required"),
  ],
)
def test_bad_ensemble_input_is_one_line(trained, tmp_path, capsys, flags, message):
  if "--workdir" not in flags and "--json" not in flags:
    flags = ["--workdir", str(trained[0]), *flags]
  flags = [flag.format(empty=tmp_path) for flag in flags]
  status, _, errors = run_ensemble(capsys, *flags)
  assert status == 2 and len(errors) == 1, errors
  assert errors[0].startswith("bigbatch ensemble: error: ")
  assert message in errors[0]


def test_a_workdir_whose_snapshots_directory_is_empty_is_one_line(tmp_path, capsys):
  (tmp_path / "snapshots").mkdir()
  status, _, errors = run_ensemble(capsys, "--workdir", str(tmp_path))
  assert status == 2 and len(errors) == 1 and "holds no snapshot" in errors[0], errors


def test_a_bad_snapshots_field_is_one_line(data_dir, tmp_path, capsys):
  flags = ["--workdir", str(tmp_path), "--noprogress"]
  config = ["--config", CONFIG, *overrides(data_dir)]
  assert main(["train", *config, *flags, "--config.snapshots=sometimes"]) == 2
  assert "snapshots: 'sometimes' is not one of auto, on, off" in capsys.readouterr().err
  assert main(["train", *config, *flags, "--config.snapshots=on"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "snapshots: 'on' needs a restarting schedule" in err[0]


@pytest.mark.slow
def test_killed_at_a_snapshot_and_resumed_keeps_the_same_snapshots(data_dir, tmp_path):
  """SIGKILL right after a snapshot (the checkpoint of its step not saved), then on the
  step after the next one, then to the end: the snapshots of an uninterrupted run."""
  flags = [f"--config.{field}={value}" for field, value in SGDR.items()]
  runs = {"reference": [None], "killed": ["snapshot@32", "step@49", None]}
  for name, faults in runs.items():
    for fault in faults:
      proc = start(tmp_path / name, data_dir, *flags, fault=fault)
      output, _ = proc.communicate(timeout=300)
      assert (proc.returncode == 0) == (fault is None), output[-2000:]
  ours, reference = (snapshot_records(tmp_path / name) for name in runs)
  assert [r["step"] for r in ours] == CYCLE_ENDS
  assert [r["fingerprint"] for r in ours] == [r["fingerprint"] for r in reference]
