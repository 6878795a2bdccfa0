"""A 1.3B-parameter language model for a TPU pod, parameters sharded (fsdp) over 8 chips.

24 layers of width 2,048 (16 heads, rotary positions, vocabulary 50,304):
1,311,625,216 parameters. 26B tokens (20 a parameter, Chinchilla's), sequences
of 2,048; the batch ramps 1,048,576 -> 4,194,304 tokens (DeepSeek-V3 grew
its batch 5x over its first 469B tokens) where the baseline would halve the
rate, at 20% and 50% of the tokens, under Adam's square-root rule; past the
cap the rate takes the rest. AdamW (lr 3e-4, b2 0.95, weight decay 0.1),
warm-up over 500M tokens, bf16 compute. Mesh: every chip splits the batch,
8 of them also shard each parameter and its optimizer state.

Set `--config.dataset.text_dir=DIR` to your corpus (the standard library's
30M tokens would be read 870 times).
"""

from bigbatch.config import load_sibling

SEQUENCE_LENGTH = 2_048
NUM_TOKENS = 26_000_000_000


def get_config():
  config = load_sibling(__file__, "lm_base").language_model(
    dataset="text",  # set dataset.text_dir to your corpus
    preset="lm_1b",
    sequence_length=SEQUENCE_LENGTH,
    learning_rate=3e-4,
    batch_multiple=64,
    eval_batch_size=256,
    eval_examples=1_024,
    checkpoint_every_steps=1_000,
    tokens={
      "num_tokens": NUM_TOKENS,
      "batch_tokens": 512 * SEQUENCE_LENGTH,
      "eval_every_tokens": 1_000_000_000,
      "plan.max_batch_tokens": 2_048 * SEQUENCE_LENGTH,
      "schedule.warmup_tokens": 500_000_000,
      "schedule.boundaries_tokens": (0.2 * NUM_TOKENS, 0.5 * NUM_TOKENS, 0.8 * NUM_TOKENS),
    },
  )
  config.mesh.fsdp = 8  # each parameter and its optimizer state over 8 chips
  return config
