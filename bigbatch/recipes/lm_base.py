"""The blocks the language-model recipes share (not a recipe of its own).

A transformer preset on text, AdamW, a step schedule and a plan, all counted
in tokens (`bigbatch.spec.clock`): `gpt2_small.py` and `lm_1b.py` call
`language_model(...)`.
"""

from ml_collections import config_dict

from bigbatch.config import default_plan_config, default_schedule_config, set_run_fields
from bigbatch.models.transformer import PRESETS
from bigbatch.recipe import optimizer_config, to_token_clock


def language_model(
  *,
  dataset: str,
  preset: str,
  sequence_length: int,
  learning_rate: float,
  batch_multiple: int,
  eval_batch_size: int,
  eval_examples: int,
  checkpoint_every_steps: int,
  tokens: dict,
):
  """A language model's config: `preset`'s fields, AdamW (b2 0.95, weight decay 0.1), the
  rate halved at `schedule.boundaries_tokens` (in `tokens`), a `hybrid` ramp under Adam's
  square-root rule, and the token fields `tokens` (`to_token_clock`)."""
  config = config_dict.ConfigDict()
  config.seed = 0
  config.dataset = config_dict.ConfigDict({"name": dataset, "sequence_length": sequence_length})
  config.dataset.data_dir = config_dict.placeholder(str)  # default: $TFDS_DATA_DIR
  config.dataset.text_dir = config_dict.placeholder(str)  # with name "text": your corpus
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
  config.model = config_dict.ConfigDict({"name": "transformer", **PRESETS[preset]})
  set_run_fields(
    config,
    eval_every_epochs=1.0,
    eval_batch_size=eval_batch_size,
    checkpoint_every_steps=checkpoint_every_steps,
  )
  config.eval_examples = eval_examples
  config.num_epochs = 1.0
  config.batch_size = 1
  config.optimizer = optimizer_config(
    {"name": "adamw", "learning_rate": learning_rate, "b1": 0.9, "b2": 0.95, "eps": 1e-8,
     "weight_decay": 0.1}
  )  # fmt: skip
  config.schedule = default_schedule_config("step", factor=2.0)
  config.plan = default_plan_config(batch_multiple=batch_multiple)
  config.plan.strategy = "hybrid"
  config.plan.adam_rule = "sqrt"
  return to_token_clock(config, tokens)


def get_config():
  return None  # the blocks of the recipes beside it, not a recipe
