"""The datasets bigbatch trains on, read through tensorflow-datasets.

MNIST-1D (the embedded default) and the text corpora (`python_stdlib`, a
`text` directory; see `text`, and `tokenizers` for `dataset.tokenizer`) are generated into the tfds data dir the
first time they are asked for. CIFAR-10 and ImageNet (`imagenet2012`) are read
from a data dir the user prepared with tfds (`prepare_command`); a dataset
that is not there is refused at once with where tfds looked and how to prepare it.
A directory of token files (`tokens`) is read where it is (`token_files`).
Any other tfds dataset, and a Python source, come through `external`.

Each split is a random-access *source* (examples by index), so that the
input pipeline can put any example at any position of the stream: small
datasets are held as arrays, ImageNet is read from its ArrayRecord files one
batch at a time (`records.RecordSource`), text is cut into sequences of
byte tokens by index (`text.TokenSource`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shlex
from collections.abc import Mapping
from typing import Any

import tensorflow_datasets as tfds

from bigbatch.data import external, text, token_files, tokenizers
from bigbatch.data import preprocess as pre
from bigbatch.data.mnist1d import Mnist1d, Mnist1dConfig
from bigbatch.data.preprocess import (  # noqa: F401  (re-exported: the datasets' statistics)
  CIFAR10_MEAN,
  CIFAR10_STD,
  IMAGENET_MEAN,
  IMAGENET_SIZE,
  IMAGENET_STD,
)
from bigbatch.data.records import RecordSource
from bigbatch.data.spec import ArraySource, DataError, DatasetSpec

DATASETS = {
  "mnist1d": DatasetSpec(
    "mnist1d",
    10,
    (40,),
    "train",
    "test",
    True,
    pre.identity,
    pre.identity,
    host_preprocess=pre.identity_numpy,
    input_key="signal",
  ),
  "cifar10": DatasetSpec(
    "cifar10", 10, (32, 32, 3), "train", "test", True, pre.cifar_train, pre.cifar_eval
  ),
  "imagenet2012": DatasetSpec(
    "imagenet2012",
    1000,
    (IMAGENET_SIZE, IMAGENET_SIZE, 3),
    "train",
    "validation",
    False,
    pre.imagenet_train,
    pre.imagenet_eval,
    device_normalisation=(IMAGENET_MEAN, IMAGENET_STD),
  ),
}


def dataset_spec(name: str, image_size: int | None = None) -> DatasetSpec:
  """The spec of `dataset.name`, or a `DataError` listing the choices.

  `image_size` (ImageNet only; default 224) is the side of the training crop
  and of the eval centre crop, e.g. 299 for Inception-ResNet-V2.
  """
  if name not in DATASETS:
    raise DataError(f"dataset.name: {name!r} is not one of {', '.join(DATASETS)}")
  spec = DATASETS[name]
  if image_size is None or image_size == spec.input_shape[0]:
    return spec
  if name != "imagenet2012" or not 32 <= int(image_size) <= 1024:
    raise DataError(
      f"dataset.image_size: {image_size!r} is not allowed; only imagenet2012 takes one (32 to 1024)"
    )
  size = int(image_size)
  return dataclasses.replace(
    spec,
    input_shape=(size, size, 3),
    train_preprocess=functools.partial(pre.imagenet_train, size=size),
    eval_preprocess=functools.partial(pre.imagenet_eval, size=size),
  )


def spec_for(config_dataset: Mapping[str, Any]) -> DatasetSpec:
  """The spec of a config's `dataset` block: a built-in dataset, any tfds dataset
  (from its `builder.info`), or a Python source (`dataset.source`; see `external`).

  Raises:
    DataError: naming the field.
  """
  if config_dataset.get("source"):
    return external.source_spec(config_dataset)
  name = config_dataset.get("name")
  if name in DATASETS:
    if config_dataset.get("features"):
      raise DataError(
        f"dataset.features: {name} carries only its inputs and labels; features come from "
        "a text or token dataset, a tfds dataset by name, or a dataset.source"
      )
    return dataset_spec(name, config_dataset.get("image_size"))
  if config_dataset.get("image_size") is not None:
    raise DataError(f"dataset.image_size: only imagenet2012 takes one, not {name!r}")
  if name in text.TEXT_DATASETS:
    return text.text_spec(config_dataset, get_builder(config_dataset))
  if name == token_files.TOKEN_FILES:
    return token_files.token_spec(config_dataset, _checked_data_dir(config_dataset))
  return external.tfds_spec(config_dataset, data_dir(config_dataset), ", ".join(DATASETS))


def data_dir(config_dataset: Mapping[str, Any]) -> str:
  """`dataset.data_dir`, else `$TFDS_DATA_DIR`, else tfds's default (~/tensorflow_datasets)."""
  return os.path.expanduser(
    config_dataset.get("data_dir")
    or os.environ.get("TFDS_DATA_DIR")
    or os.path.join("~", "tensorflow_datasets")
  )


def get_builder(config_dataset: Mapping[str, Any]) -> tfds.core.DatasetBuilder:
  """The tfds builder of a config's `dataset` block.

  MNIST-1D is generated (once) at `dataset.num_train_examples` training
  examples from `dataset.generator_seed`, a text corpus (once) from the files
  it lists now; any other dataset must already be prepared in the data dir.

  Raises:
    DataError: for an unknown or unprepared dataset, saying where tfds
      looked and how to prepare it.
  """
  if not config_dataset.get("source") and config_dataset.get("name") in text.TEXT_DATASETS:
    tokenizers.check_early(config_dataset)  # before the corpus is prepared
    directory = _checked_data_dir(config_dataset)
    config = text.corpus_config(config_dataset)
    return _prepared(
      lambda: text.TextCorpus(data_dir=directory, config=config), text.TFDS_NAME, directory
    )
  spec = spec_for(config_dataset)
  directory = _checked_data_dir(config_dataset)
  if spec.tfds_name == "mnist1d":
    wanted = Mnist1dConfig(
      num_train_examples=int(config_dataset.get("num_train_examples", 50_000)),
      seed=int(config_dataset.get("generator_seed", 42)),
    )
    predefined = {c.name for c in Mnist1d.BUILDER_CONFIGS}  # tfds wants those by name

    def make():
      return Mnist1d(
        data_dir=directory, config=wanted.name if wanted.name in predefined else wanted
      )

    return _prepared(make, "mnist1d", directory)
  return tfds.builder(spec.tfds_name, data_dir=directory)


def _checked_data_dir(config_dataset: Mapping[str, Any]) -> str:
  directory = data_dir(config_dataset)
  if os.path.exists(directory) and not os.path.isdir(directory):
    raise DataError(f"dataset.data_dir: {directory} exists and is not a directory")
  return directory


def _prepared(make, name: str, directory: str) -> tfds.core.DatasetBuilder:
  """`make()`'s builder of a dataset bigbatch generates, generated the first time."""
  builder = make()
  if not builder.is_prepared():
    try:
      builder.download_and_prepare()
    except FileExistsError:  # another process (same data dir) finished first
      builder = make()
      if not builder.is_prepared():
        raise
    except OSError as error:  # generating needs a data dir it can write
      reason = error.strerror or str(error).splitlines()[0]
      raise DataError(
        f"dataset.data_dir: cannot generate {name} in {directory}: {reason}"
      ) from None
  return builder


def prepare_command(name: str, directory: str, in_memory: bool = True) -> str:
  """The shell command that prepares dataset `name` in data dir `directory`.

  tfds's own `tfds build` imports apache_beam, which bigbatch does not install,
  so the command calls the builder from Python. ImageNet is written as
  ArrayRecord (read by index) from the archives in DIRECTORY/downloads/manual.
  """
  file_format = "" if in_memory else ', file_format="array_record"'
  code = (
    f"import tensorflow_datasets as tfds; "
    f"tfds.builder({json.dumps(name)}, data_dir={json.dumps(directory)}{file_format})"
    f".download_and_prepare()"
  )
  return f"python -c {shlex.quote(code)}"


def _not_prepared(
  spec: DatasetSpec, builder: tfds.core.DatasetBuilder, directory: str
) -> DataError:
  manual = (
    f" (put ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in "
    f"{directory}/downloads/manual first)"
    if spec.tfds_name == "imagenet2012"
    else ""
  )
  return DataError(
    f"dataset.name: {spec.tfds_name} is not prepared in {builder.data_dir}; prepare it with "
    f"`{prepare_command(spec.tfds_name, directory, spec.in_memory)}`{manual}, or set "
    f"dataset.data_dir (or $TFDS_DATA_DIR) to where it is"
  )


def load_split(config_dataset: Mapping[str, Any], split: str) -> ArraySource | RecordSource:
  """The train or eval split (`split` is "train" or "eval") of a `dataset` block."""
  if config_dataset.get("source"):
    return external.source_split(config_dataset, split)
  if config_dataset.get("name") in text.TEXT_DATASETS:
    return text.token_source(config_dataset, get_builder(config_dataset), split)
  if config_dataset.get("name") == token_files.TOKEN_FILES:
    return token_files.token_split(config_dataset, _checked_data_dir(config_dataset), split)
  spec = spec_for(config_dataset)
  builder = get_builder(config_dataset)
  name = spec.train_split if split == "train" else spec.eval_split
  try:
    if spec.in_memory:
      # the split as one batch; `as_dataset(batch_size=-1)` aborts under tfds's mock data
      whole = builder.as_dataset(split=name).batch(1 << 40)
      arrays = next(iter(tfds.as_numpy(whole)))
      return ArraySource(arrays, spec.input_key, spec.label_key, spec.feature_names)
    return RecordSource.from_tfds(builder.as_data_source(split=name), spec.input_key)
  except (AssertionError, FileNotFoundError, NotImplementedError, ValueError) as error:
    if not builder.is_prepared() or "could not find" in str(error).lower():
      raise _not_prepared(spec, builder, data_dir(config_dataset)) from None
    raise DataError(
      f"dataset.name: {spec.tfds_name} in {builder.data_dir} cannot be read by index "
      f"({str(error).splitlines()[0]}); prepare it as ArrayRecord in another data dir with "
      f"`{prepare_command(spec.tfds_name, '<another data dir>', False)}`"
    ) from None
