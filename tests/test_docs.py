"""The documents' links: every relative link in README.md and docs/*.md names a file that
exists, and an anchor names a heading of that file."""

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
