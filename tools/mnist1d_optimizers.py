"""MNIST-1D's decaying-lr recipe with the optimizers built for large batches (a config file).

`--config tools/mnist1d_optimizers.py:VARIANT`, VARIANT one of `momentum`
(the recipe's SGD, unchanged), `lars`, `adamw` or `lamb`; the batch, rate,
plan and schedule are set on the command line as for any recipe. Used by
tools/study_optimizers.py, so that each of its runs is one `bigbatch train`
that anyone can repeat.

Only the optimizer block changes, every other field is `mnist1d_decay_lr`'s.
The settings beside the rate are each optimizer's usual ones, not tuned here:
- LARS: MLPerf's trust coefficient 0.001 and ratio, momentum 0.9 and the
  recipe's weight decay 5e-4 (the ratio puts the decay inside the step, as
  SGD's), biases and batch-norm parameters excluded (the default masks);
- AdamW: b1 0.9, b2 0.999, eps 1e-8 (Adam's defaults, as the 5.1 Adam runs);
- LAMB: the same b1, b2, eps 1e-6 (You et al.'s);
- AdamW and LAMB both with BERT-LAMB's decoupled weight decay 0.01 (times the
  rate, on kernels only), so the two differ by the trust ratio alone.
"""

from ml_collections import config_dict

from bigbatch.recipe import load_recipe

OPTIMIZERS = {
  "momentum": None,  # the recipe's sgd_momentum(lr 0.1, m 0.9, wd 5e-4)
  "lars": {
    "name": "lars",
    "learning_rate": 1.0,
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "trust_coefficient": 0.001,
    "trust_ratio": "mlperf",
  },
  "adamw": {
    "name": "adamw",
    "learning_rate": 1e-3,
    "b1": 0.9,
    "b2": 0.999,
    "eps": 1e-8,
    "weight_decay": 0.01,
  },
  "lamb": {
    "name": "lamb",
    "learning_rate": 1e-2,
    "b1": 0.9,
    "b2": 0.999,
    "eps": 1e-6,
    "weight_decay": 0.01,
  },
}


def get_config(variant=None):
  config = load_recipe("mnist1d_decay_lr").get_config()
  variant = variant or "momentum"
  if variant not in OPTIMIZERS:
    raise ValueError(f"config variant: {variant!r} is not one of {', '.join(OPTIMIZERS)}")
  if OPTIMIZERS[variant] is not None:
    config.optimizer = config_dict.ConfigDict(OPTIMIZERS[variant])
  return config
