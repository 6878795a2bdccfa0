"""lm_tiny with Lion (Chen et al. 2023; `optax.lion`) in place of AdamW: the same batch and tokens.

Lion steps along a sign, so each element moves by the full rate: its authors
take a rate 3 to 10 times AdamW's smaller and a weight decay as many times
larger, to keep `lr x wd`. Here lr 3e-4 (AdamW's 2e-3 / 6.7) and wd 0.7
(`lr x wd` = 2.1e-4, AdamW's 2e-4), b1 0.9, b2 0.99; starting points, not
tuned. A plan's momentum feeds `b1`. Its family is `adaptive`:
`--config.plan.adam_rule=sqrt` for a growing batch.
"""

from ml_collections import config_dict

from bigbatch.config import load_sibling, optimizer_config


def get_config():
  config = load_sibling(__file__, "lm_tiny_base").get_config()
  config.optimizer = optimizer_config(
    {
      "name": "lion",
      "learning_rate": 3e-4,
      "b1": 0.9,
      "b2": 0.99,
      "weight_decay": 0.7,
      "decay_mask": "kernels",  # as AdamW's: no biases, norms or embeddings
      "clip_norm": config_dict.placeholder(float),
    }
  )
  return config
