"""lm_mini: a 231k-parameter transformer on BPE tokens of the running Python's standard library.

The language-model study where a batch ramp can pay (docs/RESULTS_LM.md). The
byte model's critical batch stays at its baseline's batch over lm_tiny's short
budget; on BPE tokens it starts below a small batch and grows some 20-fold in
2M tokens. So: a byte-level BPE of 2,048 tokens (`bpe:2048`, trained on the
training split once and cached in the data dir), a model sized to train
10,240,000 tokens in under ten minutes on a 2-core CPU (`lm_mini`: width 64,
2 layers, 2 heads, rotary positions; measured alone: about 38,000 training
tokens/s, docs/RESULTS_LM.md), and a baseline batch of 16 x 128 = 2,048
tokens: 5,000 updates. AdamW (lr 2e-3, b2 0.95, weight decay 0.1, not tuned for
this model), warm-up over the first 1% of the tokens, the rate / 4 at 30%, 60%
and 80% of them. Held-out: the first 256 validation sequences every 512,000
tokens; B_simple smoothed over 1,024,000 tokens.
"""

from bigbatch.config import load_sibling
from bigbatch.models.transformer import PRESETS

BATCH = 16
NUM_TOKENS = 10_240_000


def get_config():
  config = load_sibling(__file__, "lm_tiny_base").get_config()
  config.dataset.tokenizer = "bpe:2048"
  mini = {k: v for k, v in PRESETS["lm_mini"].items() if k != "vocab_size"}  # the tokenizer's
  config.model.update(mini)
  config.eval_examples = 256
  config.eval_batch_size = 256
  config.checkpoint_every_steps = 500
  config.noise.horizon_tokens = 1_024_000
  config.num_tokens = NUM_TOKENS
  config.batch_tokens = BATCH * config.dataset.sequence_length
  config.eval_every_tokens = 512_000
  config.schedule.warmup_tokens = NUM_TOKENS // 100
  config.schedule.boundaries_tokens = tuple(f * NUM_TOKENS for f in (0.3, 0.6, 0.8))
  return config
