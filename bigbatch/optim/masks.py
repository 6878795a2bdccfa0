"""Which parameters a weight decay or a trust ratio applies to, by shape or by name.

Large-batch recipes leave some parameters out of the weight decay (and LARS
and LAMB out of the trust ratio): MLPerf's ResNet-50 skips biases and
batch-norm parameters, BERT's LAMB skips LayerNorm and biases, language-model
recipes skip embeddings too. Flax names no parameter kind in its tree, so the
masks here read what a tree does say:

* `matrices`: every parameter of two or more dimensions: kernels and
  embedding tables, not biases or normalization scales and offsets (vectors).
* `kernels`: the matrices whose path names no embedding (no key containing
  `embed`): what AdamW, LAMB and LARS decay by default in a config.
* `all`: every parameter.
* regular expressions: the parameters whose path (`Dense_0/kernel`, keys
  joined by `/`) one of them matches (`re.search`).

A mask is an optax mask: a function of the parameters returning a tree of
booleans, True where the transformation applies. `parameter_mask` turns a
config's value into one; `checked` refuses, when the optimizer is initialised
on the whole parameter tree, a pattern that names no parameter.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import optax

MASKS = ("all", "matrices", "kernels")


def _key(entry: Any) -> str:
  for attribute in ("key", "name", "idx"):
    if hasattr(entry, attribute):
      return str(getattr(entry, attribute))
  return str(entry)


def paths(params: Any) -> Any:
  """Each leaf's path as `a/b/kernel`, in a tree shaped as `params`."""
  return jax.tree_util.tree_map_with_path(
    lambda path, _: "/".join(_key(entry) for entry in path), params
  )


def _ndim(leaf: Any) -> int:
  return len(getattr(leaf, "shape", ()))


def matrices(params: Any) -> Any:
  """True for every parameter of two or more dimensions (not biases, not norm scales)."""
  return jax.tree.map(lambda leaf: _ndim(leaf) >= 2, params)


def kernels(params: Any) -> Any:
  """True for the `matrices` whose path names no embedding (no key with `embed`)."""
  return jax.tree.map(
    lambda leaf, path: _ndim(leaf) >= 2 and "embed" not in path.lower(), params, paths(params)
  )


def _everything(params: Any) -> Any:
  return jax.tree.map(lambda _: True, params)


def _patterns(value: Any, field: str) -> tuple[re.Pattern, ...]:
  texts = (value,) if isinstance(value, str) else value
  if not isinstance(texts, list | tuple) or not texts or not all(isinstance(t, str) for t in texts):
    raise ValueError(
      f"{field}: must be one of {', '.join(MASKS)} or regular expressions, got {value!r}"
    )
  compiled = []
  for text in texts:
    try:
      compiled.append(re.compile(text))
    except re.error as error:
      raise ValueError(f"{field}: {text!r} is not a regular expression ({error})") from None
  return tuple(compiled)


def parameter_mask(value: str | Sequence[str], field: str) -> Callable[[Any], Any]:
  """The optax mask a config's value names: one of `MASKS`, or regular expressions.

  Args:
    value: `all`, `matrices`, `kernels`, or one regular expression or several,
      matched against each parameter's path (`paths`).
    field: the config field, for error messages.

  Returns:
    A function of the parameters returning a tree of booleans.

  Raises:
    ValueError: naming `field`, for a value that is none of these.
  """
  named = {"all": _everything, "matrices": matrices, "kernels": kernels}
  if isinstance(value, str) and value in named:
    return named[value]
  patterns = _patterns(value, field)

  def by_name(params: Any) -> Any:
    return jax.tree.map(lambda path: any(p.search(path) for p in patterns), paths(params))

  by_name.patterns = patterns  # what `checked` looks for
  return by_name


def _check(mask: Callable[[Any], Any], field: str, params: Any, error: type) -> None:
  patterns = getattr(mask, "patterns", ())
  names = jax.tree.leaves(paths(params))
  if not names:  # optax's placeholder tree (`optax.tree_map_params`): nothing to check
    return
  for pattern in patterns:
    if not any(pattern.search(name) for name in names):
      shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
      raise error(f"{field}: {pattern.pattern!r} names no parameter; parameters: {shown}")


def checked(
  tx: optax.GradientTransformation,
  masks: Mapping[str, Callable[[Any], Any]],
  error: type[Exception] = ValueError,
) -> optax.GradientTransformationExtraArgs:
  """`tx`, whose `init` first refuses a mask (by config field) that names no parameter.

  The check needs the whole parameter tree, which only `init` sees (inside
  optax's partitions, a mask sees part of it); the state is `tx`'s own, so a
  checkpoint of `tx` restores into it.

  Raises:
    error: at `init`, naming the field and the parameters there are (a
      `ConfigError` where the masks come from a config).
  """
  if not any(getattr(mask, "patterns", ()) for mask in masks.values()):
    return optax.with_extra_args_support(tx)
  tx = optax.with_extra_args_support(tx)

  def init(params):
    for field, mask in masks.items():
      _check(mask, field, params, error)
    return tx.init(params)

  return optax.GradientTransformationExtraArgs(init, tx.update)


def full_mask(mask: Any, params: Any) -> Any:
  """`mask` (None: every leaf; a function of the parameters; a tree, or a prefix of
  one, of booleans) as a tree of booleans shaped as `params`."""
  if mask is None:
    return _everything(params)
  tree = mask(params) if callable(mask) else mask
  return jax.tree.map(lambda flag, sub: jax.tree.map(lambda _: bool(flag), sub), tree, params)


def add_decayed_weights(
  weight_decay: float | jax.Array, mask: Any = None
) -> optax.GradientTransformation:
  """`optax.add_decayed_weights(weight_decay, mask)` (`g + wd w` where `mask` says), with the
  empty state of an unmasked decay.

  optax wraps a masked decay in `optax.masked`, whose state differs from the unmasked one's
  in its tree though neither holds an array; a checkpoint written with one then cannot be
  restored into the other. bigbatch's optimizers decay through this, so that a mask (a
  config's default among them) never changes what a checkpoint holds.
  """
  if mask is None:
    return optax.add_decayed_weights(weight_decay)

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("add_decayed_weights: needs the parameters")
    decayed = full_mask(mask, params)
    updates = jax.tree.map(
      lambda g, w, on: (g + weight_decay * w).astype(g.dtype) if on else g,
      updates,
      params,
      decayed,
    )
    return updates, state

  return optax.GradientTransformation(optax.init_empty_state, update_fn)
