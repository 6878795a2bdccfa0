"""Input: datasets through tensorflow-datasets (images, text in bytes or a tokenizer's
tokens), token files, and the position-based pipeline."""

from bigbatch.data.datasets import (
  DATASETS,
  ArraySource,
  DataError,
  DatasetSpec,
  dataset_spec,
  get_builder,
  load_split,
  spec_for,
)
from bigbatch.data.mnist1d import Mnist1d, Mnist1dConfig
from bigbatch.data.pipeline import epoch_permutation, eval_batches, example_batch, train_batches
from bigbatch.data.text import TEXT_DATASETS, TextCorpus, TextCorpusConfig, TokenSource
from bigbatch.data.token_files import TOKEN_FILES
from bigbatch.data.tokenizers import Tokenizer

__all__ = [
  "DATASETS",
  "TEXT_DATASETS",
  "TOKEN_FILES",
  "ArraySource",
  "DataError",
  "DatasetSpec",
  "Mnist1d",
  "Mnist1dConfig",
  "TextCorpus",
  "TextCorpusConfig",
  "TokenSource",
  "Tokenizer",
  "dataset_spec",
  "epoch_permutation",
  "eval_batches",
  "example_batch",
  "get_builder",
  "load_split",
  "spec_for",
  "train_batches",
]
