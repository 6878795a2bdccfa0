"""A non-editable install: the wheel holds the recipes, and an installed copy finds them."""

import json
import os
import pathlib
import subprocess
import sys
import zipfile

ROOT = pathlib.Path(__file__).parents[2]

INSTALLED_CHECK = """
import json, pathlib, sys
import bigbatch, bigbatch.recipe as recipe
from bigbatch.cli import args, main
where = pathlib.Path(sys.argv[1]).resolve()
assert pathlib.Path(bigbatch.__file__).resolve().is_relative_to(where), bigbatch.__file__
default = args.config_path(args.with_recipe_path(["--config", recipe.DEFAULT_RECIPE]))
assert pathlib.Path(default).resolve().is_relative_to(where), default
print(json.dumps({"default": default, "recipes": recipe.recipe_names()}))
sys.exit(main(["plan", "--config", "mnist1d_increase_batch", "--json"]))
"""


def test_the_wheel_holds_every_recipe_and_an_installed_copy_resolves_the_default(tmp_path):
  build = subprocess.run(
    [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    + ["-w", str(tmp_path / "dist"), str(ROOT)],
    capture_output=True,
    text=True,
  )
  assert build.returncode == 0, build.stderr
  (wheel,) = (tmp_path / "dist").glob("bigbatch-*.whl")
  names = zipfile.ZipFile(wheel).namelist()
  shipped = sorted(n.split("/")[-1][:-3] for n in names if n.startswith("bigbatch/recipes/"))
  assert shipped == sorted(p.stem for p in (ROOT / "bigbatch" / "recipes").glob("*.py"))
  assert "mnist1d_increase_batch" in shipped and not any(n.startswith("tests/") for n in names)

  target = tmp_path / "site"
  install = subprocess.run(
    [
      sys.executable,
      "-m",
      "pip",
      "install",
      "--no-deps",
      "-q",
      "--target",
      str(target),
      str(wheel),
    ],
    capture_output=True,
    text=True,
  )
  assert install.returncode == 0, install.stderr
  # from a directory with no checkout in it, the installed copy ahead of the editable one
  env = {**os.environ, "PYTHONPATH": str(target), "JAX_PLATFORMS": "cpu"}
  run = subprocess.run(
    [sys.executable, "-c", INSTALLED_CHECK, str(target)],
    cwd=tmp_path,
    env=env,
    capture_output=True,
    text=True,
  )
  assert run.returncode == 0, run.stderr[-2000:]
  first, plan = run.stdout.split("\n", 1)
  found = json.loads(first)
  assert found["default"] == str(target / "bigbatch" / "recipes" / "mnist1d_increase_batch.py")
  assert found["recipes"] == shipped
  phases = json.loads(plan)["phases"]
  assert [p["batch_size"] for p in phases] == [128, 640, 3200, 16000]
