"""lm_tiny: a 3.2M-parameter byte-level transformer on the running Python's standard library.

The language model's baseline: AdamW, a constant batch, the learning rate
decayed in steps. Everything counts in tokens (`bigbatch.spec.clock`):
sequences of 128 bytes (the stdlib's .py files, about 29.7M training tokens
on Python 3.11, 5% of the files held out), a batch of 32 x 128 = 4,096
tokens, 2,048,000 tokens of training -> 500 updates. Warm-up over the first
102,400 tokens (25 steps), then the rate falls by 4 at 30%, 60% and 80% of
the tokens. About 7,000 tokens/s on a 2-core CPU: some five minutes.
"""

from ml_collections import config_dict

from bigbatch.config import default_plan_config, default_schedule_config, set_run_fields
from bigbatch.models.transformer import PRESETS
from bigbatch.recipe import optimizer_config, to_token_clock

SEQUENCE_LENGTH = 128
NUM_TOKENS = 2_048_000


def get_config():
  config = config_dict.ConfigDict()
  config.seed = 0
  config.dataset = config_dict.ConfigDict(
    {"name": "python_stdlib", "sequence_length": SEQUENCE_LENGTH}
  )
  config.dataset.data_dir = config_dict.placeholder(str)  # default: $TFDS_DATA_DIR
  config.dataset.text_dir = config_dict.placeholder(str)  # with name "text": your own text
  # unset: bytes; or a tokenizer.json, a sentencepiece .model, bpe:N (docs/LANGUAGE_MODELS.md)
  config.dataset.tokenizer = config_dict.placeholder(str)
  config.dataset.separator = config_dict.placeholder(int)  # the id that ends a document
  # with name "tokens": a directory of token files, their dtype and vocabulary
  config.dataset.token_dir = config_dict.placeholder(str)
  config.dataset.token_dtype = config_dict.placeholder(str)  # uint16 or uint32
  config.dataset.vocab_size = config_dict.placeholder(int)
  # inputs_segmentation, inputs_position: each token's document and place in it, for a
  # model that takes them (model.call.inputs; docs/MODELS.md)
  config.dataset.features = config_dict.placeholder(tuple)
  tiny = {k: v for k, v in PRESETS["lm_tiny"].items() if k != "vocab_size"}  # the data's 256
  config.model = config_dict.ConfigDict({"name": "transformer", **tiny})
  set_run_fields(config, eval_every_epochs=1.0, eval_batch_size=256, checkpoint_every_steps=100)
  config.eval_examples = 512  # the first 512 held-out sequences (65,536 tokens) at each evaluation
  config.log_every_steps = 10
  config.num_epochs = 1.0
  config.batch_size = 32
  config.optimizer = optimizer_config(
    {"name": "adamw", "learning_rate": 2e-3, "b1": 0.9, "b2": 0.95, "eps": 1e-8,
     "weight_decay": 0.1}
  )  # fmt: skip
  config.schedule = default_schedule_config("step", factor=4.0)
  config.plan = default_plan_config(batch_multiple=8)  # 8 devices
  return to_token_clock(
    config,
    {
      "num_tokens": NUM_TOKENS,
      "batch_tokens": 32 * SEQUENCE_LENGTH,
      "eval_every_tokens": 204_800,
      "schedule.warmup_tokens": 102_400,
      "schedule.boundaries_tokens": tuple(f * NUM_TOKENS for f in (0.3, 0.6, 0.8)),
    },
  )
