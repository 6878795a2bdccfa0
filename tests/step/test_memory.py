"""The batch-size probe, planning with its cap, and accumulation past it."""

import json
import pathlib

import numpy as np
import pytest

from bigbatch import config as bbconfig
from bigbatch.cli import main
from bigbatch.step import memory
from bigbatch.train.experiment import Experiment

CONFIGS = pathlib.Path(__file__).parents[2] / "configs"


def probe_config(config, workdir=None, log=print):
  return memory.probe(Experiment.for_probe(bbconfig.read(config)), workdir, log)


def mnist_config(**plan):
  config = bbconfig.load_sibling(str(CONFIGS / "x.py"), "mnist1d_hybrid").get_config()
  config.dataset.num_train_examples = 4096
  for key, value in plan.items():
    config.plan[key] = value
  return config


def test_search_finds_the_largest_multiple_under_the_budget():
  def needs(batch):  # 1 MB of parameters, 3 KB per example
    return memory.Measurement(batch, 1_000_000, 0, 3_000 * batch, 0)

  best, tried = memory.search(needs, usable=1_000_000 + 3_000 * 1000, multiple=16)
  assert best == 992  # the largest multiple of 16 with 3 KB x batch <= 3 MB
  assert needs(best + 16).total > 1_000_000 + 3_000 * 1000
  assert {16, 32, 64, 128, 256, 512, 1024} <= {m.per_device_batch for m in tried}  # doubling
  assert memory.search(needs, usable=10**12, multiple=16, limit=600)[0] == 592
  with pytest.raises(
    memory.ProbeError, match=r"^memory: no batch fits: a per-device batch of 16 needs"
  ):
    memory.search(needs, usable=1_000_000, multiple=16)


@pytest.mark.slow  # a long end-to-end run: python -m pytest -m slow
def test_compiled_bytes_grow_linearly_with_the_batch_and_the_cap_fits_the_budget(tmp_path):
  config = mnist_config()
  config.memory.budget_bytes = 6 * 2**20  # about 300 examples per device
  config.memory.margin = 0.0
  logs = []
  result = probe_config(config, workdir=tmp_path, log=logs.append)
  by_batch = {m.per_device_batch: m for m in result.measurements}
  # activations: the temporaries grow linearly; the parameters do not grow
  t16, t32, t64 = (by_batch[b].temporaries for b in (16, 32, 64))
  assert t64 - t32 == pytest.approx(2 * (t32 - t16), rel=0.25)
  assert by_batch[16].aliased > 0  # the donated state
  assert by_batch[16].total < by_batch[64].total < by_batch[128].total
  # the answer: the largest multiple of 16 per device that fits, the next one does not
  assert result.per_device_batch % 16 == 0
  assert by_batch[result.per_device_batch].total <= result.usable
  above = [m for m in result.measurements if m.per_device_batch > result.per_device_batch]
  assert above and all(m.total > result.usable for m in above)
  assert result.max_batch_size == result.per_device_batch * 8
  # cached in the workdir, by what it depends on
  again = probe_config(config, workdir=tmp_path, log=logs.append)
  assert again == result and logs[-1].startswith("memory probe: cached in")
  assert len(json.loads((tmp_path / "memory_probe.json").read_text())) == 1
  config.memory.margin = 0.5
  halved = probe_config(config, workdir=tmp_path, log=logs.append)
  assert halved.per_device_batch < result.per_device_batch
  assert len(json.loads((tmp_path / "memory_probe.json").read_text())) == 2


def test_without_a_memory_analysis_the_probe_says_so_and_measures(tmp_path, monkeypatch):
  config = mnist_config()
  config.dataset.num_train_examples = 512  # limit: 64 per device
  monkeypatch.setattr(memory, "measure_compiled", lambda compiled, batch: None)
  logs = []
  result = probe_config(config, log=logs.append)
  assert any("memory_analysis() gives nothing" in line for line in logs)
  assert all(m.measured for m in result.measurements)
  assert result.per_device_batch == 64


@pytest.mark.slow  # a long end-to-end run: python -m pytest -m slow
def test_auto_caps_the_plan_at_the_probed_batch(tmp_path, capsys):
  args = [
    "plan",
    "--config",
    str(CONFIGS / "mnist1d_hybrid.py"),
    "--workdir",
    str(tmp_path),
    "--config.plan.max_batch_size=auto",
    f"--config.memory.budget_bytes={20 * 2**20}",
  ]
  assert main(args) == 0
  out = capsys.readouterr().out
  cap = int(out.split("max_batch_size ")[1].split()[0].replace(",", ""))
  assert f"plan: hybrid (noise rule approx, cap {cap:,})" in out
  assert cap < 16_000  # the uncapped plan's last batch: memory, not the plan, decided
  batches = [
    int(b.replace(",", "")) for b in out.split("batch sizes: ")[1].split("\n")[0].split(", ")
  ]
  assert max(batches) <= cap
  assert (
    main(
      [
        "probe",
        "--config",
        str(CONFIGS / "mnist1d_hybrid.py"),
        "--workdir",
        str(tmp_path),
        f"--config.memory.budget_bytes={20 * 2**20}",
      ]
    )
    == 0
  )
  assert f"max_batch_size {cap:,}" in capsys.readouterr().out
  assert main([*args[:-1], "--config.memory.budget_bytes=1000"]) == 2
  assert "memory: no batch fits" in capsys.readouterr().err


@pytest.mark.parametrize("rule", ["exact", "approx"])
def test_accumulate_keeps_the_uncapped_plans_noise_scale(rule):
  base = bbconfig.load_sibling(str(CONFIGS / "x.py"), "cifar10_5_2_increase_batch").get_config()
  base.plan.noise_rule = rule
  uncapped = base.copy_and_resolve_references()
  uncapped.plan.strategy, uncapped.plan.max_batch_size = "increase_batch", None
  accumulated = base.copy_and_resolve_references()
  accumulated.plan.strategy = "accumulate"  # cap 5,120 per micro-batch
  a, u = bbconfig.plan_from_config(accumulated), bbconfig.plan_from_config(uncapped)
  assert [p.micro_batches for p in a.phases] == [-(-p.batch_size // 5120) for p in a.phases]
  assert max(p.micro_batches for p in a.phases) > 1
  assert all(p.batch_size <= 5120 or p.batch_size % 5120 == 0 for p in a.phases)
  if rule == "exact":  # both follow the baseline's exact noise scale
    np.testing.assert_allclose(
      [p.noise_scale for p in a.phases], [p.noise_scale for p in u.phases], rtol=1e-9
    )
  else:  # the paper's rule: lr N / B / (1 - m) is kept

    def approx(plan):
      return [
        p.learning_rate * plan.dataset_size / p.batch_size / (1 - p.momentum) for p in plan.phases
      ]

    np.testing.assert_allclose(approx(a), approx(u), rtol=1e-9)
  hybrid = bbconfig.plan_from_config(base)
  assert a.total_steps < hybrid.total_steps  # fewer updates than capping the batch


def test_plan_shows_micro_batches_and_the_trade_off(capsys):
  assert (
    main(
      [
        "plan",
        "--config",
        str(CONFIGS / "cifar10_5_2_increase_batch.py"),
        "--config.plan.strategy=accumulate",
      ]
    )
    == 0
  )
  out = capsys.readouterr().out
  assert "phase  epochs    batch  micro" in out
  assert "accumulation: micro = micro-batches of at most 5,120 per update" in out


def test_training_accumulates_past_the_cap(tmp_path):
  from bigbatch import train

  config = bbconfig.load_sibling(str(CONFIGS / "x.py"), "mnist1d_increase_batch").get_config()
  config.dataset.num_train_examples = 2048
  config.dataset.data_dir = str(tmp_path / "tfds")
  config.num_epochs = 6
  config.batch_size = 32
  config.ghost_batch_size = 4
  config.schedule.boundaries = (2.0, 4.0)
  config.plan.batch_multiple = 32
  config.plan.strategy = "accumulate"
  config.plan.max_batch_size = 160
  config.eval_batch_size = 256
  config.log_every_steps = 1
  summary = train.train_and_evaluate(config, tmp_path / "run", progress=False)
  assert summary["status"] == "completed"
  rows = [
    json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
  ]
  micro = {(r["batch_size"], r["micro_batches"]) for r in rows if "micro_batches" in r}
  assert micro == {(32.0, 1.0), (160.0, 1.0), (800.0, 5.0)}
  # micro-batches of 48 would not split into whole ghost batches on 8 devices
  config.plan.max_batch_size, config.plan.batch_multiple = 48, 16
  with pytest.raises(
    bbconfig.ConfigError, match=r"plan\.max_batch_size: 48 must be a positive multiple of 32"
  ):
    train.train_and_evaluate(config, tmp_path / "bad", progress=False)
