"""The `optimizer` block: a built-in optimizer by name, or any optax factory by import path.

A built-in (`OPTIMIZERS`) takes its own fields, each defaulted here. Any
other `name` is the import path of a factory that returns an
`optax.GradientTransformation` (`optax:lion`, `optax.contrib:muon`,
`my_pkg.opt:make`; in Python, the function itself), whose keyword
arguments are the block's other fields (or a nested `options` block). The
factory is imported, its signature read and the optimizer built once here,
so a path that does not import, an argument it does not take or a result
that is no optimizer is a one-line `ConfigError` before anything trains.

Every optimizer has a `family` (`bigbatch.optim.FAMILIES`), which says how a
batch change moves its learning rate: a built-in knows its own, one of
optax's factories is looked up, any other must say. `clip_norm` and
`decay_mask` apply to every optimizer.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
from collections.abc import Mapping
from typing import Any, ClassVar

from bigbatch import optim
from bigbatch.spec import fields
from bigbatch.spec.block import IN_MEMORY, is_block, thaw
from bigbatch.spec.fields import ConfigError, boolean, integer, one_of, real

# Each built-in optimizer's fields besides `name` and `learning_rate`, at their defaults
# (`alpha` None: the paper's base, e for PowerSign and 1 + ... for AddSign; a mask None:
# the optimizer's default, see `DECAY_MASKS`).
OPTIMIZERS: dict[str, dict[str, Any]] = {
  "sgd_momentum": {"momentum": 0.0, "nesterov": False, "weight_decay": 0.0},
  "adam": {"b1": 0.9, "b2": 0.999, "eps": 1e-8},
  "adamw": {"b1": 0.9, "b2": 0.999, "eps": 1e-8, "weight_decay": 0.0},
  "amsgrad": {"b1": 0.9, "b2": 0.999, "eps": 1e-8, "bias_correction": True},
  "power_sign": {
    "beta": 0.9, "alpha": None, "decay": "none", "num_periods": 1.0, "weight_decay": 0.0
  },
  "add_sign": {
    "beta": 0.9, "alpha": None, "decay": "none", "num_periods": 1.0, "weight_decay": 0.0
  },
  "lars": {
    "momentum": 0.9, "nesterov": False, "weight_decay": 0.0, "trust_coefficient": 0.001,
    "eps": 0.0, "trust_ratio": "mlperf", "trust_mask": None,
  },
  "lamb": {"b1": 0.9, "b2": 0.999, "eps": 1e-6, "weight_decay": 0.0, "trust_mask": None},
  "lion": {"b1": 0.9, "b2": 0.99, "weight_decay": 0.0},
  "muon": {
    "beta": 0.95, "ns_steps": 5, "nesterov": True, "eps": 1e-8, "weight_decay": 0.0,
    "adam_b1": 0.9, "adam_b2": 0.999, "adam_weight_decay": 0.0, "consistent_rms": None,
  },
}  # fmt: skip
# The parameters a built-in decays when `decay_mask` is unset (`bigbatch.optim.masks`):
# AdamW, LAMB and LARS leave biases, normalization parameters and embeddings out, as
# language-model recipes and MLPerf do; the others decay every parameter, as optax.
DECAY_MASKS = {"adamw": "kernels", "lamb": "kernels", "lars": "kernels"}
# What LARS and LAMB apply their trust ratio to when `trust_mask` is unset.
TRUST_MASK = "matrices"
# The built-ins that hold b2 and eps, which `sde` and `beta2_halflife` move with the batch.
HOLD_BETAS = ("adam", "adamw", "amsgrad", "lamb")
# The field a plan's momentum feeds, where it is not `b1`.
_MOMENTUM_FIELDS = {
  "sgd_momentum": "momentum",
  "power_sign": "beta",
  "add_sign": "beta",
  "lars": "momentum",
  "muon": "beta",
}
# The fields of every optimizer's block besides `name`, `learning_rate` and its own.
COMMON_FIELDS = ("family", "momentum_arg", "clip_norm", "decay_mask")


def _at_least_one(field: str, value: Any) -> float | None:
  if value is not None and not (fields.real()(field, value) >= 1.0):
    raise ConfigError(f"{field}: must be >= 1, got {value}")
  return None if value is None else float(value)


def _fraction(field: str, value: Any) -> float:
  if not 0.0 <= fields.real()(field, value) < 1.0:
    raise ConfigError(f"{field}: must be in [0, 1), got {value}")
  return float(value)


def _is_positive(field: str, value: Any) -> float:
  if not fields.real()(field, value) > 0:
    raise ConfigError(f"{field}: must be positive, got {value}")
  return float(value)


def _clip(field: str, value: Any) -> float | None:
  if value is not None and not fields.real()(field, value) > 0:
    raise ConfigError(f"{field}: must be positive (or unset: no clipping), got {value}")
  return None if value is None else float(value)


def _mask(field: str, value: Any) -> Any:
  """A mask's config value (`optim.MASKS`, or regular expressions), checked; None: unset."""
  if value is None:
    return None
  try:
    optim.parameter_mask(value, field)
  except ValueError as error:
    raise ConfigError(str(error)) from None
  return value if isinstance(value, str) else tuple(value)


_OPTIMIZER_CHECKS: dict[str, fields.Check] = {
  "weight_decay": real(0.0),
  "nesterov": boolean,
  "eps": real(0.0),
  "bias_correction": boolean,
  "alpha": _at_least_one,
  "decay": one_of(*optim.SIGN_DECAYS),
  "num_periods": _is_positive,
  "trust_coefficient": _is_positive,
  "trust_ratio": one_of(*optim.TRUST_RATIOS),
  "trust_mask": _mask,
  "b2": _fraction,
  "ns_steps": integer(1),
  "adam_b1": _fraction,
  "adam_b2": _fraction,
  "adam_weight_decay": real(0.0),
  "consistent_rms": real(0.0, optional=True),
}


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
  """`optimizer`: a built-in (`OPTIMIZERS`) or a factory (an import path, or in Python the
  function), its `learning_rate`, and its own fields (`options`: a built-in's, each filled in
  from `OPTIMIZERS`' defaults; a factory's keyword arguments). `family` (sgd | adaptive; a
  factory's, where optax's is not known), `momentum_arg` (a factory's argument a plan's
  momentum feeds, where it is not `momentum`, `b1` or `beta`), `clip_norm` (global-norm
  clipping before the update; unset: none) and `decay_mask` (which parameters are decayed:
  all | matrices | kernels | regular expressions over their paths; unset: `DECAY_MASKS`)."""

  name: Any
  learning_rate: float
  options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  family: str | None = None
  momentum_arg: str | None = None
  clip_norm: float | None = None
  decay_mask: Any = None
  factory: Any = dataclasses.field(default=None, init=False, repr=False, compare=False)

  _CHECKS: ClassVar[Mapping[str, fields.Check]] = {"clip_norm": _clip, "decay_mask": _mask}

  def __post_init__(self) -> None:
    if self.name is None or self.name == "":
      raise ConfigError("optimizer.name: missing from the config")
    if self.learning_rate is None:
      raise ConfigError("optimizer.learning_rate: missing from the config")
    # its range is the planner's to check, with the schedule's (`build.plan_of`)
    object.__setattr__(self, "learning_rate", real()("optimizer.learning_rate", self.learning_rate))
    for name, check in self._CHECKS.items():
      object.__setattr__(self, name, check(f"optimizer.{name}", getattr(self, name)))
    if self.is_builtin:
      self._check_builtin()
    else:
      self._check_factory()

  @property
  def is_builtin(self) -> bool:
    """Whether `name` is one of `OPTIMIZERS` (else a factory)."""
    return isinstance(self.name, str) and self.name in OPTIMIZERS

  def _check_builtin(self) -> None:
    allowed = OPTIMIZERS[self.name]
    for key in self.options:
      if key not in allowed:
        names = ", ".join(("learning_rate", *allowed, *COMMON_FIELDS[2:]))
        raise ConfigError(f"optimizer.{key}: not a field of {self.name}; allowed: {names}")
    own = optim.FAMILY[self.name]
    if self.family is not None and self.family != own:
      raise ConfigError(
        f"optimizer.family: {self.name} is of the {own} family, not {self.family!r} (unset it)"
      )
    if self.momentum_arg is not None:
      raise ConfigError(
        f"optimizer.momentum_arg: only for a factory; {self.name}'s momentum is "
        f"{self.momentum_field} (unset it)"
      )
    if self.decay_mask is not None and "weight_decay" not in allowed:
      raise ConfigError(f"optimizer.decay_mask: {self.name} has no weight decay (unset it)")
    options = {**allowed, **{k: v for k, v in self.options.items() if v is not None}}
    for key, check in _OPTIMIZER_CHECKS.items():
      if key in options:
        options[key] = check(f"optimizer.{key}", options[key])
    field = self.momentum_field
    options[field] = _fraction(f"optimizer.{field}", options[field])
    object.__setattr__(self, "options", types.MappingProxyType(options))
    object.__setattr__(self, "family", own)
    if "weight_decay" in allowed and self.decay_mask is None:
      # recorded as resolved, so that a checkpoint says what its run decayed
      object.__setattr__(self, "decay_mask", DECAY_MASKS.get(self.name, "all"))

  def _check_factory(self) -> None:
    if isinstance(self.name, str) and ":" not in self.name:
      raise ConfigError(
        f"optimizer.name: {self.name!r} is not one of {', '.join(OPTIMIZERS)}, nor the "
        "import path of an optax optimizer 'module:factory' (e.g. optax:lion)"
      )
    options = {k: v for k, v in self.options.items() if v is not None}
    try:
      factory = optim.resolve_factory(self.name)
      arg = optim.check_factory(factory, options, self.learning_rate, self.momentum_arg)
    except ValueError as error:
      raise ConfigError(str(error)) from None
    object.__setattr__(self, "factory", factory)
    path = optim.factory_path(factory)
    if arg is not None and arg in options:
      options[arg] = _fraction(f"optimizer.{arg}", options[arg])
    object.__setattr__(self, "options", types.MappingProxyType(options))
    if self.family is None:
      family = optim.factory_family(factory)
      if family is None:
        raise ConfigError(
          f"optimizer.family: missing for {path}; set sgd (its step follows the gradient's "
          "size: the g-rule) or adaptive (it does not: Adam's rules)"
        )
      object.__setattr__(self, "family", family)
    one_of(*optim.FAMILIES)("optimizer.family", self.family)
    if self.decay_mask is not None and self.mask_arg is None:
      raise ConfigError(f"optimizer.decay_mask: {path} takes no mask or weight_decay_mask")

  @property
  def display_name(self) -> str:
    """The built-in's name, or the factory's shortest import path."""
    return self.name if self.is_builtin else optim.factory_path(self.factory)

  @property
  def momentum_field(self) -> str | None:
    """The field (a factory's argument) a plan's momentum feeds; None: it has none."""
    if self.is_builtin:
      return _MOMENTUM_FIELDS.get(self.name, "b1")
    arg = optim.find_momentum_arg(self.factory, self.momentum_arg)
    return arg if arg is not None and self._factory_momentum(arg) is not None else None

  def _factory_momentum(self, arg: str) -> float | None:
    """A factory's momentum: its option, else its default if that is a number."""
    if arg in self.options:
      return float(self.options[arg])
    parameter = inspect.signature(self.factory).parameters.get(arg)
    default = None if parameter is None else parameter.default
    number = isinstance(default, int | float) and not isinstance(default, bool)
    return float(default) if number else None

  @property
  def momentum(self) -> float:
    """The optimizer's momentum: `momentum` for SGD and LARS, `b1` for the Adam family,
    LAMB and Lion, `beta` for PowerSign, AddSign and Muon, a factory's momentum argument
    (0 where it has none); what the plan's momentum feeds (see `build.momentum_of`)."""
    field = self.momentum_field
    if field is None:
      return 0.0
    return float(self.options[field]) if self.is_builtin else self._factory_momentum(field)

  @property
  def holds_betas(self) -> bool:
    """Whether `b2` and `eps` can follow the batch (Adam's `sde`, `beta2_halflife`)."""
    return self.is_builtin and self.name in HOLD_BETAS

  @property
  def mask_arg(self) -> str | None:
    """A factory's argument that takes the decay mask (`mask`, `weight_decay_mask`)."""
    parameters = inspect.signature(self.factory).parameters
    return next((a for a in ("mask", "weight_decay_mask") if a in parameters), None)

  @property
  def decay_mask_or_default(self) -> str | Any:
    """`decay_mask` as given, or a built-in's default (`DECAY_MASKS`; filled in when the
    spec is made); a factory's own default: None."""
    return self.decay_mask

  @classmethod
  def read(cls, block: Any) -> OptimizerSpec:
    if not is_block(block):
      raise ConfigError("optimizer: missing from the config")
    values = {k: block[k] for k in block.keys()}
    name, learning_rate = values.pop("name", None), values.pop("learning_rate", None)
    common = {k: values.pop(k) for k in COMMON_FIELDS if k in values}
    nested = values.pop("options", None)
    if nested is not None:  # a factory's keyword arguments, as one block
      if not is_block(nested):
        raise ConfigError(f"optimizer.options: must be a block of fields, got {nested!r}")
      for key in nested.keys():
        if key in values:
          raise ConfigError(f"optimizer.{key}: given twice, in the block and in its options")
        values[key] = nested[key]
    return cls(name, learning_rate, values, **common)

  def to_dict(self) -> dict[str, Any]:
    common = {"clip_norm": self.clip_norm, "decay_mask": thaw(self.decay_mask)}
    if self.is_builtin:
      return {"name": self.name, "learning_rate": self.learning_rate, **self.options, **common}
    path = optim.factory_path(self.factory)
    options = {k: _recorded(v) for k, v in self.options.items()}
    return {
      "name": IN_MEMORY if "<" in path else path,
      "learning_rate": self.learning_rate,
      "options": options,
      "family": self.family,
      "momentum_arg": self.momentum_arg,
      **common,
    }


def _recorded(value: Any) -> Any:
  """An option as a record holds it: a function as its import path."""
  if callable(value) and not isinstance(value, type):
    path = optim.factory_path(value)
    return IN_MEMORY if "<" in path else path
  return thaw(value)
