"""Objects named by import path (`"package.module:Name"`): a user's model, data or loss."""

from __future__ import annotations

import importlib
from typing import Any


def import_object(path: str, field: str) -> Any:
  """The object `"package.module:Name"` names (`Name` may be dotted: `Outer.Inner`).

  Raises:
    ValueError: one line naming the config `field` and what failed.
  """
  module_name, _, attribute = str(path).partition(":")
  if not module_name or not attribute:
    raise ValueError(f"{field}: {path!r} is not an import path of the form 'package.module:Name'")
  try:
    module = importlib.import_module(module_name)
  except Exception as error:  # whatever the user's module raised on import
    text = " ".join(str(error).split())
    raise ValueError(
      f"{field}: cannot import {module_name!r} ({type(error).__name__}: {text})"
    ) from None
  target = module
  for part in attribute.split("."):
    if not hasattr(target, part):
      raise ValueError(f"{field}: {module_name!r} has no attribute {attribute!r}")
    target = getattr(target, part)
  return target
