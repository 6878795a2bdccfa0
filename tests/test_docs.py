"""The documents' links: every relative link in README.md and docs/*.md names a file that
exists, and an anchor names a heading of that file; the examples said to run do."""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]+\]\(([^)\s]+)\)")


def anchors(path: pathlib.Path) -> set[str]:
  """GitHub's anchors of a Markdown file's headings (code blocks left out)."""
  text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
  found = set()
  for title in re.findall(r"^#{1,6} (.*)$", text, flags=re.M):
    found.add(re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-"))
  return found


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.name)
def test_every_relative_link_names_a_file_and_heading_that_exist(document):
  text = re.sub(r"```.*?```", "", document.read_text(), flags=re.S)
  broken = []
  for target in LINK.findall(text):
    if target.startswith(("http://", "https://", "mailto:")):
      continue
    file, _, anchor = target.partition("#")
    path = (document.parent / file).resolve() if file else document
    if not path.exists():
      broken.append(f"{target}: no such file")
    elif anchor and path.suffix == ".md" and anchor not in anchors(path):
      broken.append(f"{target}: no such heading in {path.name}")
  assert not broken, f"{document.name}: " + "; ".join(broken)


def test_the_readme_is_a_front_door():
  assert len((ROOT / "README.md").read_text().splitlines()) <= 300


def modules_with_all() -> list[str]:
  """Every module of the package that declares `__all__`, by its dotted name."""
  names = []
  for path in sorted((ROOT / "bigbatch").rglob("*.py")):
    if "recipes" in path.parts or not re.search(r"^__all__ = ", path.read_text(), re.M):
      continue
    parts = path.relative_to(ROOT).with_suffix("").parts
    names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
  return names


def test_the_api_document_lists_each_modules_all():
  import importlib

  text = (ROOT / "docs" / "API.md").read_text()
  listed = dict(re.findall(r"^### `([\w.]+)`\n\nExports: (.*)\.$", text, re.M))
  assert set(listed) == set(modules_with_all()), "docs/API.md lists other modules"
  for name, names in listed.items():
    documented = re.findall(r"`(\w+)`", names)
    assert documented == list(importlib.import_module(name).__all__), name


# (document, heading): sections whose Python blocks run as they stand
RUNNABLE = [
  ("MODELS.md", "A pmap-style ResNet"),
  ("MODELS.md", "`GhostBatchNorm` in a model of yours"),
  ("MODELS.md", "MFU for a language model of yours: `training_flops_per_token`"),
  ("MODELS.md", "B_simple in a training loop of yours: `bigbatch.step.gradients`"),
  ("MODELS.md", "An annotated transformer on a three-axis mesh"),
]


def python_blocks(path: pathlib.Path, heading: str) -> list[str]:
  """The ```python blocks of the section `heading` (up to the next heading as high)."""
  text = path.read_text()
  match = re.search(rf"^(#+) {re.escape(heading)}$", text, re.M)
  assert match, f"{path.name}: no heading {heading!r}"
  level = len(match.group(1))
  rest = text[match.end() :]
  end = re.search(rf"^#{{1,{level}}} ", re.sub(r"```.*?```", lambda m: "x" * len(m[0]), rest,
                                                 flags=re.S), re.M)  # fmt: skip
  section = rest[: end.start()] if end else rest
  return re.findall(r"^```python\n(.*?)^```", section, re.M | re.S)


@pytest.mark.parametrize("document, heading", RUNNABLE, ids=[h for _, h in RUNNABLE])
def test_a_documented_example_runs_as_it_stands(document, heading, capsys):
  blocks = python_blocks(ROOT / "docs" / document, heading)
  assert blocks, f"{document}: {heading!r} has no Python example"
  for block in blocks:
    exec(compile(block, f"{document}: {heading}", "exec"), {"__name__": "example"})
