"""Schedule- and plan-aware optax optimizers.

Each is an optax `GradientTransformation` built from optax's own pieces and
composes with any optax code (`optax.chain(optax.clip_by_global_norm(1.0),
bigbatch.optim.sgd_momentum(plan, momentum=plan))`). Any other optax
optimizer follows a plan through `plan_aware(factory, plan, momentum=plan)`.
"""

from bigbatch.optim.adam import adam, adamw, amsgrad
from bigbatch.optim.clipping import ClipState, clip_by_global_norm, clip_metrics
from bigbatch.optim.factory import (
  FAMILIES,
  FAMILY,
  MOMENTUM_ARGS,
  check_factory,
  factory_family,
  factory_path,
  find_momentum_arg,
  plan_aware,
  resolve_factory,
)
from bigbatch.optim.hyperparams import Hyperparam
from bigbatch.optim.lamb import lamb
from bigbatch.optim.lars import TRUST_RATIOS, lars, scale_by_lars
from bigbatch.optim.lion_muon import lion, muon
from bigbatch.optim.masks import MASKS, kernels, matrices, parameter_mask
from bigbatch.optim.sgd import sgd_momentum
from bigbatch.optim.sign import (
  SIGN_DECAYS,
  add_sign,
  power_sign,
  scale_by_add_sign,
  scale_by_power_sign,
  sign_decay,
)
from bigbatch.optim.state import current_hyperparams, set_hyperparams, state_shardings

OPTIMIZERS = (
  "sgd_momentum",
  "adam",
  "adamw",
  "amsgrad",
  "power_sign",
  "add_sign",
  "lars",
  "lamb",
  "lion",
  "muon",
)

__all__ = [
  "FAMILIES",
  "FAMILY",
  "MASKS",
  "MOMENTUM_ARGS",
  "OPTIMIZERS",
  "SIGN_DECAYS",
  "TRUST_RATIOS",
  "ClipState",
  "Hyperparam",
  "adam",
  "adamw",
  "add_sign",
  "amsgrad",
  "check_factory",
  "clip_by_global_norm",
  "clip_metrics",
  "current_hyperparams",
  "factory_family",
  "factory_path",
  "find_momentum_arg",
  "kernels",
  "lamb",
  "lars",
  "lion",
  "matrices",
  "muon",
  "parameter_mask",
  "plan_aware",
  "power_sign",
  "resolve_factory",
  "scale_by_add_sign",
  "scale_by_lars",
  "scale_by_power_sign",
  "set_hyperparams",
  "sgd_momentum",
  "sign_decay",
  "state_shardings",
]
