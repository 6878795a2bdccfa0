"""MNIST-1D, phases decided by the measured gradient noise scale.

The batch grows x5 when the smoothed B_simple (horizon half an epoch of
examples: late in training the estimate of |G|² at batch 128 is too noisy
over a tenth of an epoch) reaches 16 times the batch, after at least one
epoch in the phase and for a predicted saving of steps of 5% or more; the
batch stops at 16,000 (the fixed increasing plan's largest), past which the
learning rate would take the factor. Nothing tells it where the schedule's
steps are. Why 16 and not McCandlish's 1 (B = B_simple, the step-optimal
batch): at 4 the batch already grew from epoch 2 and the run ended 0.4
points less accurate (docs/RESULTS.md); lowering the noise scale that early
costs accuracy.
"""

from bigbatch.config import load_sibling


def get_config(variant=None):
  base = load_sibling(__file__, "mnist1d_base")
  config = base.with_variant(base.get_config(), variant)
  config.eval_every_epochs = 1.0  # decisions are taken at evaluations
  config.noise.horizon_epochs = 0.5
  config.plan.strategy = "noise"
  config.plan.min_phase_epochs = 1.0
  config.plan.max_batch_size = 16_000  # the fixed increasing plan's largest batch
  config.plan.adapt.update({"factor": 5.0, "noise_ratio": 16.0, "min_gain": 0.05})
  return config
