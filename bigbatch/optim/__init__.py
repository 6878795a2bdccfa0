"""Schedule- and plan-aware optax optimizers.

Each is an optax `GradientTransformation` built from optax's own pieces and
composes with any optax code (`optax.chain(optax.clip_by_global_norm(1.0),
bigbatch.optim.sgd_momentum(plan, momentum=plan))`).
"""

from bigbatch.optim.adam import adam, adamw, amsgrad
from bigbatch.optim.hyperparams import Hyperparam
from bigbatch.optim.sgd import sgd_momentum
from bigbatch.optim.state import current_hyperparams, state_shardings

OPTIMIZERS = ("sgd_momentum", "adam", "adamw", "amsgrad")

__all__ = [
  "OPTIMIZERS",
  "Hyperparam",
  "adam",
  "adamw",
  "amsgrad",
  "current_hyperparams",
  "sgd_momentum",
  "state_shardings",
]
