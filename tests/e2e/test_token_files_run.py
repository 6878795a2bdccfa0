"""A language model on token files through `bigbatch train`: the tokenizer's vocabulary
reaches the model, bits per byte come from the bytes its tokens stand for, and a SIGKILL
right after a batch change of the ramp resumes bitwise.

The tokens: generated code-like text encoded by a byte-level BPE of 280 tokens, in two
nanoGPT-style `.bin` shards (uint16), validation held out by document. The model is
lm_tiny's architecture shrunk (2 layers of width 32) on sequences of 16 tokens: batches of
8 -> 32 sequences at the baseline's decay (`lm_tiny_increase_batch`). The uninterrupted run
and the resumed one run in this process on one device (as the killed one does), so only the
run that is killed pays for a process of its own; the three runs are `slow`, and what the
default suite checks needs no training.
"""

import math
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from small_run import metrics_rows
from xla_env import xla_flags

from bigbatch.data import bpe, tokenizers
from bigbatch.models import init_rngs
from bigbatch.spec import RunSpec
from bigbatch.train import train_and_evaluate
from bigbatch.train.experiment import Experiment
from bigbatch.workdir import checkpoint as ckpt

T = 16
VOCAB = 280  # under the 292 tokens the corpus has pairs for
CODE = "import sys; from bigbatch.cli import main; sys.exit(main(sys.argv[1:]))"
FIELDS = {
  "dataset.name": "tokens",
  "dataset.sequence_length": T,
  "dataset.token_dtype": "uint16",
  "model.num_layers": 2,
  "model.width": 32,
  "model.num_heads": 2,
  "model.context_length": T,
  "num_tokens": 4_096,
  "batch_tokens": 8 * T,
  "eval_every_tokens": 2_048,
  "eval_examples": 32,
  "eval_batch_size": 32,
  "schedule.warmup_tokens": 256,
  "schedule.boundaries_tokens": (2_048,),
  "log_every_steps": 4,
  "checkpoint_every_steps": 4,
  "noise.measure": False,  # a step with less to compile: what is tested here is the data
}
WORDS = ["def", "return", "self", "x", "y", "import", "for", "in", "if", "else", "(", ")", "é"]


@pytest.fixture(scope="module")
def token_dir(tmp_path_factory):
  """Two shards of BPE tokens of 40 generated documents, and the tokenizer that made them."""
  directory = tmp_path_factory.mktemp("tokens")
  rng = np.random.default_rng(0)
  texts = ["\n".join(" ".join(rng.choice(WORDS, size=8)) for _ in range(40)) for _ in range(40)]
  tokenizer = bpe.train(texts, VOCAB)
  tokenizer.save(str(directory / "tokenizer.json"))
  ids = [np.append(i, tokenizer.separator) for i in tokenizer.encode([t.encode() for t in texts])]
  (directory / "shards").mkdir()
  for shard, part in enumerate((ids[:25], ids[25:])):
    np.concatenate(part).astype("<u2").tofile(directory / "shards" / f"shard_{shard}.bin")
  return directory


def fields(token_dir, data_dir):
  return {**FIELDS, "dataset.token_dir": str(token_dir / "shards"),
          "dataset.tokenizer": str(token_dir / "tokenizer.json"), "dataset.data_dir": data_dir}  # fmt: skip


def config(token_dir, data_dir):
  from bigbatch.recipe import load_recipe

  recipe = load_recipe("lm_tiny_increase_batch").get_config()
  recipe.update_from_flattened_dict(fields(token_dir, data_dir))
  return recipe


def run(workdir, token_dir, data_dir, fault=None):
  env = {**os.environ, "XLA_FLAGS": xla_flags(1)}
  env.pop("BIGBATCH_FAULT", None)
  if fault:
    env["BIGBATCH_FAULT"] = fault
  flags = []
  for field, value in fields(token_dir, data_dir).items():
    text = f"({','.join(map(str, value))})" if isinstance(value, tuple) else str(value)
    flags.append(f"--config.{field}={text}")
  args = ["train", "--config", "lm_tiny_increase_batch", "--workdir", str(workdir), "--noprogress"]
  done = subprocess.run(
    [sys.executable, "-c", CODE, *args, *flags], env=env, capture_output=True, text=True,
    timeout=600,
  )  # fmt: skip
  return done.returncode, done.stdout + done.stderr


def fingerprint(workdir):
  checkpoints = ckpt.Checkpoints(pathlib.Path(workdir) / "checkpoints")
  step = checkpoints.latest_step()
  record = checkpoints.record(step)
  checkpoints.close()
  return step, record["fingerprint"], record.get("final_eval"), record["plan"]


def train_here(workdir, token_dir, data_dir):
  one = jax.devices()[:1]  # as the killed process, which sees one device
  return train_and_evaluate(config(token_dir, data_dir), workdir, devices=one, progress=False)


@pytest.fixture(scope="module")
def whole(token_dir, data_dir, tmp_path_factory):
  """The uninterrupted run."""
  workdir = tmp_path_factory.mktemp("whole")
  return workdir, train_here(workdir, token_dir, data_dir)


def test_token_files_reach_the_model_with_their_tokenizers_vocabulary_and_bytes(
  token_dir, data_dir
):
  experiment = Experiment.from_spec(RunSpec.read(config(token_dir, data_dir)))
  assert experiment.dataset.num_classes == VOCAB
  params = jax.eval_shape(
    lambda: experiment.model.init(init_rngs(jax.random.key(0)), np.zeros((1, T), np.int32))
  )["params"]
  shapes = {tuple(leaf.shape) for leaf in jax.tree.leaves(params)}
  assert (VOCAB, 32) in shapes  # the embedding has a row for each of the tokenizer's ids
  # the loss counts each sequence's bytes: those its targets stand for under the tokenizer
  tokenizer = tokenizers.load_file("huggingface", str(token_dir / "tokenizer.json"))
  inputs, labels = experiment.train_source.gather(np.arange(4))
  logits = np.random.default_rng(0).normal(size=(4, T, VOCAB)).astype(np.float32)
  per_example, metrics = experiment.loss_fn(logits, {"inputs": inputs, "labels": labels})
  stands = [sum(len(tokenizer.decode([t])) if t else 1 for t in row) for row in labels]
  np.testing.assert_allclose(metrics["bytes_per_token"], np.array(stands) / T, rtol=1e-6)
  np.testing.assert_allclose(
    metrics["bits_per_byte"], per_example * T / math.log(2) / np.array(stands), rtol=1e-5
  )


# about a minute on 2 shared cores (three runs, one in a process of its own): past what the
# default suite may add
@pytest.mark.slow
def test_killed_mid_ramp_on_token_files_resumes_bitwise(whole, token_dir, data_dir, tmp_path):
  workdir, _ = whole
  _, _, _, plan = fingerprint(workdir)
  change = next(p for p in plan["phases"] if p["batch_size"] == 32)["first_step"] + 1
  killed = tmp_path / "killed"
  code, output = run(killed, token_dir, data_dir, fault=f"step@{change}")
  assert code == -9, output[-2000:]  # SIGKILL at the first update of batch 32
  assert fingerprint(killed)[0] < change  # resumed from a checkpoint before the kill
  train_here(killed, token_dir, data_dir)
  assert fingerprint(killed)[:3] == fingerprint(workdir)[:3]
  evaluated = [r for r in metrics_rows(workdir) if "eval_loss" in r]
  assert evaluated and evaluated[-1]["eval_loss"] < math.log(VOCAB)
  for row in evaluated:  # the loss in bits over the bytes all the evaluated targets stand for
    per_token = row["eval_bytes_per_token"]
    assert 1.5 < per_token < 6
    assert row["eval_bits_per_byte"] == pytest.approx(row["eval_loss"] / math.log(2) / per_token)
  by_step = {r["step"]: r for r in metrics_rows(workdir)}
  for row in metrics_rows(killed):
    for key, value in row.items():
      if key not in ("examples_per_second", "tokens_per_second"):
        assert value == by_step[row["step"]][key], (row["step"], key)


def test_a_model_vocabulary_smaller_than_the_datas_is_one_line(token_dir, data_dir):
  from bigbatch.spec import ConfigError
  from bigbatch.train import build

  recipe = config(token_dir, data_dir)
  recipe.model.vocab_size = 256
  with pytest.raises(ConfigError, match=(
    rf"^model\.vocab_size: 256 is smaller than the data's vocabulary of {VOCAB} ids "
    r"\(dataset\.tokenizer or dataset\.vocab_size\); unset it to take the data's$"
  )):  # fmt: skip
    Experiment.from_spec(RunSpec.read(recipe))
  recipe.model.vocab_size = 512  # larger (padded): taken as it is
  assert build.model_of(RunSpec.read(recipe), VOCAB) is not None
