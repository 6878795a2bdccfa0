"""The base of the specs: a block of typed fields, read from a mapping and written back.

A spec is a frozen dataclass whose fields are checked when it is made
(`fields`' checks, each naming the config field), so a spec written in
Python is checked as one read from a config is. `import_path` is how a
record holds a field that is a class or a function.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping
from typing import Any, ClassVar

from bigbatch.spec import fields
from bigbatch.spec.fields import ConfigError

IN_MEMORY = "<in-memory>"  # what a record says of a source that is an object, not a path


def import_path(value: Any) -> Any:
  """`value` as a record can hold it: a class or function as its `module:name` import
  path, another object as `<in-memory>`, a string or number as it is."""
  if value is None or isinstance(value, str | int | float | bool | tuple | list):
    return value
  module, name = getattr(value, "__module__", None), getattr(value, "__qualname__", "")
  if module and name and "<" not in name and module != "__main__":
    return f"{module}:{name}"
  return IN_MEMORY


def freeze(value: Any) -> Any:
  if isinstance(value, Mapping) or (hasattr(value, "keys") and not isinstance(value, type)):
    return types.MappingProxyType({k: freeze(value[k]) for k in value.keys()})
  if isinstance(value, list | tuple):
    return tuple(freeze(v) for v in value)
  return value


def thaw(value: Any) -> Any:
  if isinstance(value, Mapping):
    return {k: thaw(v) for k, v in value.items()}
  if dataclasses.is_dataclass(value) and not isinstance(value, type):
    return value.to_dict()
  return value


def is_block(value: Any) -> bool:
  return isinstance(value, Mapping) or (hasattr(value, "keys") and hasattr(value, "__getitem__"))


class Block:
  """A block of fixed fields: checked when made, read from a mapping, written back."""

  _PREFIX: ClassVar[str] = ""
  _CHECKS: ClassVar[Mapping[str, fields.Check]] = {}
  _NAMES: ClassVar[Mapping[str, str]] = {}  # field -> its config name, where they differ

  def __post_init__(self) -> None:
    for name, check in self._CHECKS.items():
      object.__setattr__(self, name, check(self.field(name), getattr(self, name)))

  @classmethod
  def field(cls, name: str) -> str:
    """The config field that holds `name`."""
    return cls._NAMES.get(name, f"{cls._PREFIX}{name}")

  @classmethod
  def read(cls, block: Any) -> Any:
    """The spec of a config block (a mapping); a field it leaves out takes its default.

    Raises:
      ConfigError: naming an unknown field, a missing one, or a bad value.
    """
    if block is None:
      block = {}
    if not is_block(block):
      raise ConfigError(f"{cls._PREFIX.rstrip('.')}: must be a block of fields, got {block!r}")
    names = [f.name for f in dataclasses.fields(cls)]
    for key in block.keys():
      if key not in names:
        raise ConfigError(f"{cls._PREFIX}{key}: unknown field; allowed: {', '.join(names)}")
    for f in dataclasses.fields(cls):
      if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
        if block.get(f.name) is None:
          raise ConfigError(f"{cls.field(f.name)}: missing from the config")
    return cls(**{key: freeze(block[key]) for key in block.keys()})

  def to_dict(self) -> dict[str, Any]:
    return {f.name: thaw(getattr(self, f.name)) for f in dataclasses.fields(self)}
