"""The token clock: a language model's batches and durations, given in tokens.

A language model trains on sequences of T tokens (`dataset.sequence_length`),
and its users count in tokens: a batch of 32,768 tokens, 2B tokens of
training, a warm-up of 20M tokens. So for a text dataset every batch and
duration field is given in tokens, under a name of its own (`TOKEN_FIELDS`:
`num_tokens`, `batch_tokens`, `schedule.warmup_tokens`, ...), and the
example-clock field it stands for is refused, as a token field is for any
other dataset: a config says which clock it counts on, and one field cannot
be read on the wrong one.

Inside, bigbatch counts sequences and epochs as for every dataset, and this
module converts, in this one place: a batch when the config is read (tokens
/ T, which must be whole sequences), a duration once the training split's
size in sequences N is known (tokens / (N T) epochs; `resolve`). A phase
boundary is then a count of examples, as everywhere in bigbatch, so a token
position is sequences x T exactly, and a change of batch can never stretch
the learning-rate schedule (Megatron-Bridge #2609, where iterations were
converted to samples with the final batch size).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bigbatch.spec.fields import ConfigError

__all__ = ["TOKEN_FIELDS", "is_token_clock", "replace_twin", "resolve", "split"]

AUTO = -1  # `plan.max_batch_tokens: auto` (the memory probe), as `plan.max_batch_size`

# token field -> (the example-clock field it stands for, "batch", "duration" or "ramp":
# (tokens, batch tokens) pairs)
TOKEN_FIELDS: dict[str, tuple[str, str]] = {
  "num_tokens": ("num_epochs", "duration"),
  "batch_tokens": ("batch_size", "batch"),
  "eval_every_tokens": ("eval_every_epochs", "duration"),
  "plan.max_batch_tokens": ("plan.max_batch_size", "batch"),
  "plan.min_phase_tokens": ("plan.min_phase_epochs", "duration"),
  "plan.ramp_tokens": ("plan.ramp", "ramp"),
  "plan.adapt.monitor_horizon_tokens": ("plan.adapt.monitor_horizon_epochs", "duration"),
  "noise.horizon_tokens": ("noise.horizon_epochs", "duration"),
  "schedule.warmup_tokens": ("schedule.warmup_epochs", "duration"),
  "schedule.boundaries_tokens": ("schedule.boundaries", "duration"),
  "schedule.every_tokens": ("schedule.every_epochs", "duration"),
  "schedule.cycle_tokens": ("schedule.cycle_epochs", "duration"),
  "schedule.timescale_tokens": ("schedule.timescale_epochs", "duration"),
  "schedule.step_size_tokens": ("schedule.step_size_epochs", "duration"),
}


def _get(config: Mapping[str, Any], dotted: str) -> Any:
  node: Any = config
  for part in dotted.split("."):  # a mapping, or a ConfigDict (no Mapping, but keys())
    if not hasattr(node, "keys") or part not in node.keys():
      return None
    node = node[part]
  return node


def _pop(config: dict[str, Any], dotted: str) -> Any:
  *parents, last = dotted.split(".")
  node: Any = config
  for part in parents:
    node = node.get(part) if isinstance(node, dict) else None
  return node.pop(last, None) if isinstance(node, dict) else None


def _set(config: dict[str, Any], dotted: str, value: Any) -> None:
  *parents, last = dotted.split(".")
  node = config
  for part in parents:
    node = node.setdefault(part, {})
  node[last] = value


def is_token_clock(config: Mapping[str, Any]) -> bool:
  """Whether `config` (a nested mapping) counts in tokens: its dataset is a sequence
  of tokens (`dataset.sequence_length` set)."""
  return _get(config, "dataset.sequence_length") is not None


def split(
  config: dict[str, Any], defaults: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
  """Takes the token fields out of `config` (a nested dict, changed in place).

  Args:
    config: the config as nested dicts.
    defaults: each example-clock field's default (dotted name -> value): a
      language model's config may hold one at its default (a record holds
      every field), not at another value.

  Returns:
    `(config, tokens)`: on the token clock the batches converted to sequences
    in `config` and every token field as given in `tokens` (dotted names);
    else `config` unchanged and `{}`.

  Raises:
    ConfigError: naming a field given on the wrong clock, or a batch of tokens
      that is not whole sequences.
  """
  tokens = {name: _get(config, name) for name in TOKEN_FIELDS}
  tokens = {name: value for name, value in tokens.items() if value is not None}
  if not is_token_clock(config):
    for name, (twin, _) in TOKEN_FIELDS.items():
      if name in tokens:
        raise ConfigError(
          f"{name}: only for a language model (a text dataset with dataset.sequence_length); "
          f"set {twin} instead"
        )
    return config, {}
  length = int(_get(config, "dataset.sequence_length"))
  for name, (twin, kind) in TOKEN_FIELDS.items():
    value = _pop(config, name)
    given = _get(config, twin)
    if given is not None and (twin not in defaults or _same(given) != _same(defaults[twin])):
      raise ConfigError(
        f"{twin}: a language model counts in tokens (dataset.sequence_length is set); "
        f"set {name} instead"
      )
    if kind == "batch" and value is not None:
      _set(config, twin, _sequences(name, value, length))
    if kind == "ramp" and value:  # the batches now; the positions once the corpus is known
      _set(
        config, twin, tuple((at, _sequences(name, b, length)) for at, b in _as_pairs(name, value))
      )
  return config, tokens


def _as_pairs(name: str, value: Any) -> tuple:
  values = tuple(value)
  if values and not isinstance(values[0], list | tuple):  # a flat list, as the command line gives
    values = tuple(zip(values[::2], values[1::2]))
  if not all(isinstance(p, list | tuple) and len(p) == 2 for p in values):
    raise ConfigError(f"{name}: must be (tokens, batch tokens) pairs, got {value!r}")
  return values


def _same(value: Any) -> Any:
  """A value as compared with a default: a list as a tuple (a record's JSON has lists)."""
  return tuple(value) if isinstance(value, list | tuple) else value


def _sequences(name: str, tokens: Any, length: int) -> Any:
  if tokens == AUTO:
    return AUTO
  whole = isinstance(tokens, int | float) and not isinstance(tokens, bool) and tokens > 0
  if not whole or tokens % length:
    raise ConfigError(
      f"{name}: {tokens!r} is not a whole number of sequences of {length} tokens "
      "(dataset.sequence_length)"
    )
  return int(tokens) // length


def resolve(
  config: dict[str, Any], tokens: Mapping[str, Any], tokens_per_epoch: int
) -> dict[str, Any]:
  """`config` (nested dicts, changed in place) with each duration of `tokens` set in
  epochs of `tokens_per_epoch` tokens (N sequences x T)."""
  for name, value in tokens.items():
    twin, kind = TOKEN_FIELDS[name]
    if kind == "ramp":
      ramp = _get(config, twin) or ()
      _set(config, twin, tuple((float(at) / tokens_per_epoch, b) for at, b in ramp))
    if kind != "duration":
      continue
    if isinstance(value, list | tuple):
      _set(config, twin, tuple(float(v) / tokens_per_epoch for v in value))
    elif isinstance(value, int | float) and not isinstance(value, bool):
      _set(config, twin, float(value) / tokens_per_epoch)
    else:
      raise ConfigError(f"{name}: must be a number of tokens, got {value!r}")
  return config


def replace_twin(config: dict[str, Any], name: str, value: Any) -> None:
  """Puts token field `name` in `config` (nested dicts) in place of its twin."""
  _pop(config, TOKEN_FIELDS[name][0])
  _set(config, name, value)
