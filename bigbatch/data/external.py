"""Datasets of a user's own: any tfds dataset by name, or a Python source by import path.

A tfds dataset other than the built-in three (`dataset.name: fashion_mnist`)
is described by its `builder.info`: the classes of `dataset.label_key`
(a `ClassLabel`, default `label`) and the shape of `dataset.input_key`
(default `image`). A Python source (`dataset.source: "my_pkg.data:load"`)
is a function of the split's name (`train`, or `dataset.eval_split`,
default `test`) returning either a mapping of arrays or a random-access
object with `__len__` and `__getitem__` (grain's `RandomAccessDataSource`,
`tfds.data_source`), whose items map the two keys to an example's input and
label; it needs `dataset.num_classes`.

Both are held in memory as an `ArraySource`, so any example can be put at
any position of the stream: the exact data position, and so a bitwise
resume across batch changes, holds as for the built-in datasets.
`dataset.preprocess` is `scale` (uint8 pixels to [0, 1], the tfds default),
`identity` (float32 as stored; a Python source's default) or the import path
of `fn(example, seed) -> input` in TensorFlow (run by tf.data).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from bigbatch.data.spec import ArraySource, DataError, DatasetSpec, narrow
from bigbatch.importing import import_object

PREPROCESS = ("scale", "identity")


def _import(path: str, field: str) -> Any:
  try:
    return import_object(path, field)
  except ValueError as error:
    raise DataError(str(error)) from None


def _scale(example, seed, key):
  del seed
  return tf.cast(example[key], tf.float32) / 255.0


def _scale_numpy(inputs: np.ndarray) -> np.ndarray:
  return np.asarray(inputs, np.float32) / np.float32(255.0)  # what tf's division gives


def _identity(example, seed, key):
  del seed
  return tf.cast(example[key], tf.float32)


def _identity_numpy(inputs: np.ndarray) -> np.ndarray:
  return np.asarray(inputs, np.float32)


def preprocessing(name: str, key: str) -> tuple[Callable, Callable | None]:
  """`(fn(example, seed) -> input, its NumPy form or None)` for `dataset.preprocess`."""
  if name == "scale":
    return functools.partial(_scale, key=key), _scale_numpy
  if name == "identity":
    return functools.partial(_identity, key=key), _identity_numpy
  if ":" in str(name):
    return _import(name, "dataset.preprocess"), None
  raise DataError(
    f"dataset.preprocess: {name!r} is not one of {', '.join(PREPROCESS)}, nor an import "
    "path 'package.module:function'"
  )


def _input_shape(fn: Callable, key: str, shape: tuple, dtype: Any) -> tuple[int, ...]:
  """The shape `fn` makes of one example's input (traced, not run)."""
  example = {key: tf.TensorSpec(shape, dtype), "label": tf.TensorSpec([], tf.int64)}
  try:
    out = tf.function(fn).get_concrete_function(example, tf.TensorSpec([2], tf.int64))
  except Exception as error:  # whatever the user's function raised while traced
    text = " ".join(str(error).split())
    raise DataError(
      f"dataset.preprocess: fails on one example ({type(error).__name__}: {text})"
    ) from None
  made = out.structured_outputs.shape
  if not made.is_fully_defined():
    raise DataError(f"dataset.preprocess: makes inputs of shape {made}, not a fixed one")
  return tuple(made.as_list())


def tfds_spec(block: Mapping[str, Any], directory: str, builtins: str) -> DatasetSpec:
  """The spec of any tfds dataset, from its `builder.info` (prepared in `directory`)."""
  name = block.get("name")
  try:
    builder = tfds.builder(name, data_dir=directory)
  except Exception as error:  # tfds raises several kinds for a name it does not know
    raise DataError(
      f"dataset.name: {name!r} is not one of {builtins}, nor a tfds dataset "
      f"({type(error).__name__}); or set dataset.source to a Python source"
    ) from None
  features = builder.info.features
  input_key, label_key = block.get("input_key") or "image", block.get("label_key") or "label"
  for field, key in (("input_key", input_key), ("label_key", label_key)):
    if key not in features:
      raise DataError(
        f"dataset.{field}: {key!r} is not a feature of {name}; it has: {', '.join(features)}"
      )
  num_classes = getattr(features[label_key], "num_classes", None)
  if not num_classes:
    raise DataError(f"dataset.label_key: {label_key!r} of {name} is not a tfds ClassLabel")
  shape, dtype = features[input_key].shape, features[input_key].np_dtype
  if shape is None or None in shape:
    raise DataError(f"dataset.input_key: {input_key!r} of {name} has no fixed shape ({shape})")
  # `test`, unless the prepared dataset has only a `validation` split (ImageNet's way)
  splits = builder.info.splits
  only_validation = bool(splits) and "test" not in splits and "validation" in splits
  eval_split = block.get("eval_split") or ("validation" if only_validation else "test")
  spec = _in_memory_spec(block, name, int(num_classes), (tuple(shape), dtype), eval_split, "scale")
  for key in _features(block):
    if key not in features:
      raise DataError(
        f"dataset.features: {key!r} is not a feature of {name}; it has: {', '.join(features)}"
      )
  described = [(k, features[k].shape, features[k].np_dtype) for k in _features(block)]
  return dataclasses.replace(spec, features=_described(described, name))


def _in_memory_spec(
  block: Mapping[str, Any],
  name: str,
  num_classes: int,
  example: tuple,
  eval_split: str,
  default: str,
) -> DatasetSpec:
  """The spec of a dataset held in memory, preprocessed by `dataset.preprocess` (else
  `default`); `example` is one stored input's (shape, dtype)."""
  input_key, label_key = _keys(block)
  fn, host = preprocessing(block.get("preprocess") or default, input_key)
  return DatasetSpec(
    name,
    num_classes,
    _input_shape(fn, input_key, *example),
    block.get("train_split") or "train",
    eval_split,
    True,
    fn,
    fn,
    host_preprocess=host,
    input_key=input_key,
    label_key=label_key,
  )


def _read(source: Any, split: str, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
  """The arrays of a Python source's split under `keys` (the input's, the label's, then
  `dataset.features`): read once a process from an import path; from a function given in
  Python, at each call (it holds them)."""
  if isinstance(source, str):
    return _read_path(source, split, keys)
  if not callable(source):
    raise DataError(
      f"dataset.source: must be an import path or a function of the split, got {type(source).__name__}"
    )
  return _arrays(source, _name(source), split, keys)


@functools.lru_cache(maxsize=4)
def _read_path(path: str, split: str, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
  return _arrays(_import(path, "dataset.source"), path, split, keys)


def _name(source: Any) -> str:
  return source if isinstance(source, str) else getattr(source, "__qualname__", "source")


def _arrays(function, path: str, split: str, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
  where = f"dataset.source: {path}({split!r})"
  source = function(split)
  if isinstance(source, Mapping):
    items = {k: np.asarray(source[k]) for k in keys if k in source}
    missing = [k for k in keys if k not in source]
    size = len(items[keys[0]]) if keys[0] in items else -1  # -1: the key is missing
  else:
    if not (hasattr(source, "__len__") and hasattr(source, "__getitem__")):
      raise DataError(
        f"{where} is a {type(source).__name__}, not random access (__len__, __getitem__)"
      )
    size = len(source)
    first = source[0] if size else {}
    missing = [k for k in keys if k not in first]
    if size and not missing:
      rows = [source[i] for i in range(size)]
      items = {k: np.stack([np.asarray(r[k]) for r in rows]) for k in keys}
  if missing and size:
    field = {keys[0]: "input_key", keys[1]: "label_key"}.get(missing[0], "features")
    raise DataError(f"dataset.{field}: {missing[0]!r} is not a key of {where}'s examples")
  if size == 0:
    raise DataError(f"{where} has no examples (length 0)")
  for key in keys[1:]:
    if len(items[key]) != size:
      raise DataError(f"{where}: {len(items[key])} {key!r} for {size} inputs")
  return items


def _features(block: Mapping[str, Any]) -> tuple[str, ...]:
  return tuple(block.get("features") or ())


def _described(features, where: str) -> tuple[tuple[str, tuple[int, ...], str], ...]:
  """`(name, shape, dtype)` of each feature a batch carries, refusing those XLA cannot take."""
  for name, shape, dtype in features:
    dtype = np.dtype(dtype)
    if dtype.kind not in "biuf" or shape is None or None in shape:
      raise DataError(
        f"dataset.features: {name!r} of {where} is {dtype} of shape {shape}; a feature a "
        "batch carries must be numbers (bool, int, float) of a fixed shape"
      )
  return tuple(
    (name, tuple(int(d) for d in shape), narrow(dtype).str) for name, shape, dtype in features
  )


def _keys(block: Mapping[str, Any]) -> tuple[str, str]:
  return block.get("input_key") or "image", block.get("label_key") or "label"


def source_split(block: Mapping[str, Any], split: str) -> ArraySource:
  """The train or eval split of a Python source, held in memory."""
  input_key, label_key = _keys(block)
  name = (
    (block.get("train_split") or "train")
    if split == "train"
    else (block.get("eval_split") or "test")
  )
  extra = _features(block)
  arrays = _read(block["source"], name, (input_key, label_key, *extra))
  return ArraySource(arrays, input_key, label_key, extra)


def source_spec(block: Mapping[str, Any]) -> DatasetSpec:
  """The spec of a Python source: its examples' shape, and `dataset.num_classes`."""
  num_classes = block.get("num_classes")
  if not isinstance(num_classes, int) or num_classes < 2:
    raise DataError(
      f"dataset.num_classes: a Python source needs its number of classes (>= 2), got {num_classes!r}"
    )
  input_key, label_key = _keys(block)
  extra = _features(block)
  split = block.get("train_split") or "train"
  arrays = _read(block["source"], split, (input_key, label_key, *extra))
  inputs, labels = arrays[input_key], arrays[label_key]
  if labels.min() < 0 or labels.max() >= num_classes:
    raise DataError(
      f"dataset.num_classes: {num_classes}, but dataset.source's labels run from {labels.min()} to {labels.max()}"
    )
  name = block.get("name") or _name(block["source"])
  example = (inputs.shape[1:], inputs.dtype)
  spec = _in_memory_spec(
    block, name, num_classes, example, block.get("eval_split") or "test", "identity"
  )
  described = [(key, arrays[key].shape[1:], arrays[key].dtype) for key in extra]
  return dataclasses.replace(spec, features=_described(described, "dataset.source"))
