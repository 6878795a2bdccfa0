"""lm_tiny, phases decided while training: the batch grows x4 when the measured B_simple
is confidently above 8 x the batch (its lower bound), under Adam's square-root rule.

Each decision cuts the noise as one of the baseline's decays would (batch x 4,
lr / 2 under `sqrt`); with B_simple known, the rate is not raised for the part
of the batch past it (Surge). Evaluations every 204,800 tokens decide.
"""

from bigbatch.config import load_sibling


def get_config():
  config = load_sibling(__file__, "lm_tiny_base").get_config()
  config.plan.strategy = "noise"
  config.plan.adam_rule = "sqrt"
  config.plan.adapt.factor = 4.0
  config.plan.adapt.noise_ratio = 8.0
  config.plan.min_phase_tokens = 204_800
  return config
