"""`bigbatch recipes`: the shipped recipes, each with its docstring's first line."""

from __future__ import annotations

import ast

from bigbatch.cli import args


def recipes(argv: list[str]) -> int:
  from bigbatch.recipe import RECIPES, recipe_names

  if argv:
    return args.fail("recipes", f"takes no arguments, got {' '.join(argv)}")
  names = recipe_names()
  width = max(len(n) for n in names)
  for name in names:
    # the docstring is read, not run: listing imports nothing of the recipe
    doc = ast.get_docstring(ast.parse((RECIPES / f"{name}.py").read_text())) or ""
    print(f"{name:<{width}}  {doc.strip().splitlines()[0] if doc.strip() else ''}")
  print(f"\n{len(names)} recipes in {RECIPES}; use one with --config NAME[:VARIANT]")
  return 0
