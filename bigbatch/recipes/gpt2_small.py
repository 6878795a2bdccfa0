"""GPT-2 small (124,439,808 parameters) on sequences of 1,024, for one accelerator or more.

AdamW (lr 6e-4, b2 0.95, weight decay 0.1) with a ramp: 524,288 tokens a
batch (512 x 1,024, GPT-3 small's), doubled where the baseline would halve
the rate (at 30% and 60% of 1B tokens), under Adam's square-root rule: the
rate falls by sqrt(2) instead; at 2,097,152 tokens (the cap) the rate takes
the rest (`hybrid`). Warm-up over the first 10M tokens. bf16 on GPU/TPU.

The vocabulary is GPT-2's 50,257, so the model is GPT-2 small exactly (its
size and FLOPs); the offline corpus's bytes use its first 256 rows. Point
`dataset.name=text --config.dataset.text_dir=DIR` at your own text; the
standard library (about 30M tokens) is there for a measurement of speed.
"""

from bigbatch.config import load_sibling

SEQUENCE_LENGTH = 1_024
NUM_TOKENS = 1_000_000_000


def get_config():
  return load_sibling(__file__, "lm_base").language_model(
    dataset="python_stdlib",
    preset="gpt2_small",
    sequence_length=SEQUENCE_LENGTH,
    learning_rate=6e-4,
    batch_multiple=8,
    eval_batch_size=64,
    eval_examples=256,  # 262,144 held-out tokens at each evaluation
    checkpoint_every_steps=500,
    tokens={
      "num_tokens": NUM_TOKENS,
      "batch_tokens": 512 * SEQUENCE_LENGTH,
      "eval_every_tokens": 50_000_000,
      "plan.max_batch_tokens": 2_048 * SEQUENCE_LENGTH,
      "schedule.warmup_tokens": 10_000_000,
      "schedule.boundaries_tokens": (0.3 * NUM_TOKENS, 0.6 * NUM_TOKENS, 0.8 * NUM_TOKENS),
    },
  )
