"""MNIST-1D, phases decided at plateaus: the batch grows x5 when the loss stalls.

ReduceLROnPlateau's rule on the smoothed training loss (horizon half an
epoch), checked at each evaluation (every epoch): when it has not improved by
10% for two evaluations, the batch grows x5 (128 -> 640 -> 3,200 -> 16,000,
the fixed increasing plan's batches; past the dataset the learning rate takes
the factor). Nothing tells it where the schedule's steps are. A 10% threshold
because the loss of this model keeps creeping down by a few percent an epoch
long after the noise scale should fall: PyTorch's 1e-4 never fires here.
`--config=configs/mnist1d_plateau.py:adam` (or `:nesterov`, `:sgd`) selects
the optimizer variant.
"""

from bigbatch.config import load_sibling


def get_config(variant=None, strategy="plateau"):
  base = load_sibling(__file__, "mnist1d_base")
  config = base.with_variant(base.get_config(), variant)
  config.eval_every_epochs = 1.0  # a decision can come at each evaluation
  config.plan.strategy = strategy
  config.plan.adapt.update(
    {
      "factor": 5.0,
      "monitor": "train_loss",
      "monitor_horizon_epochs": 0.5,
      "threshold": 0.1,
      "patience": 1,
    }
  )
  return config
