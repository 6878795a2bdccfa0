"""lm_tiny with Muon (`optax.contrib.muon`) in place of AdamW: the same batch and tokens.

Muon orthogonalises the momentum of each matrix (Newton-Schulz, 5 steps,
beta 0.95, Nesterov); optax's rule gives every 2-D leaf to Muon (the
embedding too) and the rest (biases, norms) to AdamW at the same rate. With
`consistent_rms` 0.2, Muon's update has AdamW's RMS (Liu et al. 2025), so
AdamW's rate of 2e-3 serves both paths; weight decay 0.1 on the matrices,
none on the rest; starting points, not tuned. A plan's momentum feeds `beta`.
Its family is `adaptive`: `--config.plan.adam_rule=sqrt` for a growing batch.
"""

from ml_collections import config_dict

from bigbatch.config import load_sibling, optimizer_config


def get_config():
  config = load_sibling(__file__, "lm_tiny_base").get_config()
  config.optimizer = optimizer_config(
    {
      "name": "muon",
      "learning_rate": 2e-3,
      "beta": 0.95,
      "ns_steps": 5,
      "consistent_rms": 0.2,
      "weight_decay": 0.1,
      "adam_b1": 0.9,
      "adam_b2": 0.95,
      "adam_weight_decay": 0.0,
      "clip_norm": config_dict.placeholder(float),
    }
  )
  return config
