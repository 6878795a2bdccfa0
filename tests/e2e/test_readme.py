"""The README's and the docs' examples run and print what they say they print."""

import contextlib
import io
import os
import pathlib
import re

import pytest
from xla_env import xla_flags

ROOT = pathlib.Path(__file__).parents[2]
README = (ROOT / "README.md").read_text()
DOCUMENTS = {
  p.name: p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
}
# a ```python block directly followed by the text "prints:" and a ``` block of its output
EXAMPLE = re.compile(r"```python\n((?:(?!```).)*)```\n\n[^`]*?prints:\n\n```\n(.*?)```", re.S)


def examples():
  found = [(name, *e) for name, text in DOCUMENTS.items() for e in EXAMPLE.findall(text)]
  assert found, "no document has an example with its output"
  return found


@pytest.mark.parametrize("document, code, output", examples())
def test_an_example_prints_its_documented_output(document, code, output):
  printed = io.StringIO()
  with contextlib.redirect_stdout(printed):
    exec(compile(code, document, "exec"), {})
  assert printed.getvalue() == output


def test_the_readmes_plan_is_what_bigbatch_plan_prints(capsys):
  from bigbatch.cli import main

  shown = re.search(r"```\n(plan: hybrid \(noise rule approx, cap 5,120\).*?)```", README, re.S)
  assert main(["plan", "--config", "cifar10_5_2_increase_batch"]) == 0
  assert capsys.readouterr().out == shown.group(1)


def project_file(name: str) -> str:
  """The README's code block that starts with `# my_project/NAME`."""
  blocks = re.findall(r"```python\n(# my_project/(\S+)\n.*?)```", README, re.S)
  return next(code for code, file in blocks if file == name)


def run_project(tmp_path, files, argv, cwd):
  """Writes the README's `files` into `tmp_path/my_project` and runs `python ARGV` in `cwd`
  (a folder of tmp_path) on one CPU device; returns what it printed."""
  import subprocess
  import sys

  project = tmp_path / "my_project"
  project.mkdir()
  for name in files:
    (project / name).write_text(project_file(name))
  env = {**os.environ, "XLA_FLAGS": xla_flags(1)}
  done = subprocess.run(
    [sys.executable, *argv], cwd=tmp_path / cwd, env=env, capture_output=True, text=True
  )
  assert done.returncode == 0, done.stderr[-3000:]
  return done


@pytest.mark.slow  # a long end-to-end run: python -m pytest -m slow
def test_the_readmes_own_model_and_data_train_through_bigbatch_train(tmp_path):
  code = "import sys; from bigbatch.cli import main; sys.exit(main(sys.argv[1:]))"
  # from another directory: the modules beside the config file are found all the same
  args = ["train", "--config", "my_project/config.py", "--workdir", str(tmp_path / "run")]
  args += ["--noprogress", f"--config.dataset.data_dir={tmp_path / 'tfds'}"]
  done = run_project(tmp_path, ("task.py", "config.py"), ["-c", code, *args], ".")
  assert "batch sizes: 32, 160, 800" in done.stdout
  accuracy = float(re.search(r"final test accuracy (\S+),", done.stdout).group(1))
  assert accuracy > 0.9


def test_the_readmes_python_api_example_trains_the_same_plan(tmp_path):
  done = run_project(tmp_path, ("task.py", "train.py"), ["train.py"], "my_project")
  accuracy, updates = re.search(r"^(\S+) in (\d+) updates$", done.stdout, re.M).groups()
  assert float(accuracy) > 0.9
  stated = re.search(r"test accuracy of \S+ in (\d+) updates", README.replace("\n", " "))
  assert int(updates) == int(stated.group(1))  # the plan the config file trains
  hooked = re.findall(r"^epoch (\S+): test accuracy (\S+)$", done.stdout, re.M)
  # every evaluation once the epoch reached crosses each 2 epochs, and the final one where
  # the plan ends: 24,512 examples, its last phase's 10 steps of 800 ending 64 short of 6
  epochs = [float(epoch) for epoch, _ in hooked]
  assert [int(e // 2) for e in epochs[:2]] == [1, 2]
  assert epochs[2:] == [pytest.approx(24_512 / 4_096, abs=0.005)]
  assert abs(float(hooked[-1][1]) - float(accuracy)) <= 0.005  # the final evaluation's
