"""lm_tiny, increasing batch: each decay of the baseline's rate by 4 becomes batch x 4.

Under Adam's square-root rule (`plan.adam_rule: sqrt`; Seesaw) the rate is
divided by 2 where the baseline's is divided by 4: batches of 4,096 ->
16,384 -> 65,536 -> 262,144 tokens, 196 updates against the baseline's 500.
A batch of 262,144 tokens needs some 35 GB on a CPU, so batches past 32,768
tokens are computed as micro-batches of it (`accumulate`: the same updates;
on a device that holds them, `--config.plan.strategy=increase_batch`). Other
rules: `--config.plan.adam_rule=paper|sde|beta2_halflife`.
"""

from bigbatch.config import load_sibling


def get_config():
  config = load_sibling(__file__, "lm_tiny_base").get_config()
  config.plan.strategy = "accumulate"
  config.plan.max_batch_tokens = 32_768  # 256 sequences of 128
  config.plan.adam_rule = "sqrt"
  return config
