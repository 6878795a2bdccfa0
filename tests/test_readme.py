"""The README's Python examples run and print what the README says they print."""

import contextlib
import io
import pathlib
import re

import pytest

README = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
# a ```python block directly followed by the text "prints:" and a ``` block of its output
EXAMPLE = re.compile(r"```python\n((?:(?!```).)*)```\n\n[^`]*?prints:\n\n```\n(.*?)```", re.S)


def examples():
  found = EXAMPLE.findall(README)
  assert found, "the README has no example with its output"
  return found


@pytest.mark.parametrize("code, output", examples())
def test_readme_example_prints_its_documented_output(code, output):
  printed = io.StringIO()
  with contextlib.redirect_stdout(printed):
    exec(compile(code, "README.md", "exec"), {})
  assert printed.getvalue() == output
