"""MNIST-1D, phases decided by the measured gradient noise scale.

The batch grows x5 when the lower bound of the smoothed B_simple's 95%
interval (horizon half an epoch of examples: late in training the estimate
of |G|² at batch 128 is too noisy over a tenth of an epoch) reaches 8 times
the batch, or when |G|² stays unresolved through a whole phase, after at
least one epoch in the phase and for a predicted saving of steps of 5% or
more; the batch stops at 16,000 (the fixed increasing plan's largest), past
which the learning rate takes the factor. Nothing tells it where the
schedule's steps are. Why 8: at 16 one seed in three never decided (the
lower bound stayed under 2,048 at batch 128) and trained at the first noise
scale throughout; at 8 the three seeds decided at epochs 4-5, 8-9 and 9-12,
0.9904 ± 0.0006 in 2,173 updates (docs/RESULTS.md). McCandlish's 1 (B =
B_simple, the step-optimal batch) grows too early: lowering the noise scale
that early costs accuracy.
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
  config.plan.adapt.update({"factor": 5.0, "noise_ratio": 8.0, "min_gain": 0.05})
  return config
