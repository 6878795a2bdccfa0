"""lm_tiny with LAMB (You et al. 2019) in place of AdamW: the same batch, tokens and schedule.

LAMB is Adam's step with bias correction and the decoupled decay, scaled per
layer by `||w|| / ||r + wd w||`; LayerNorm parameters, biases and the
embedding take no decay and no ratio (BERT's exclusions; `decay_mask` and
`trust_mask` override them). Its step is a fraction of each layer's norm, so
its rate is not AdamW's: 0.01 here, with BERT's weight decay 0.01; both are
starting points, not tuned. Its family is `adaptive`: with a growing batch,
`--config.plan.adam_rule=sqrt|sde|beta2_halflife` (`plan.adam_rule`).
"""

from ml_collections import config_dict

from bigbatch.config import load_sibling, optimizer_config


def get_config():
  config = load_sibling(__file__, "lm_tiny_base").get_config()
  config.optimizer = optimizer_config(
    {
      "name": "lamb",
      "learning_rate": 1e-2,
      "b1": 0.9,
      "b2": 0.95,
      "eps": 1e-6,
      "weight_decay": 0.01,
      "decay_mask": config_dict.placeholder(str),  # unset: kernels
      "trust_mask": config_dict.placeholder(str),  # unset: matrices
      "clip_norm": 1.0,
    }
  )
  return config
