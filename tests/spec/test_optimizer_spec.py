"""The `optimizer` block: bad input is one line naming the field, before anything is built."""

import pytest

from bigbatch.spec import ConfigError, OptimizerSpec, RunSpec

BASE = {
  "num_epochs": 1,
  "batch_size": 32,
  "schedule": {"name": "constant"},
  "model": {"name": "mlp"},
  "dataset": {"name": "mnist1d", "num_train_examples": 64},
}

BAD = [
  ({"name": "no_such_package.opt:make"},
   "optimizer.name: cannot import 'no_such_package.opt' (ModuleNotFoundError: "),
  ({"name": "optax:no_such_optimizer"},
   "optimizer.name: 'optax' has no attribute 'no_such_optimizer'"),
  ({"name": "plugin_optimizers:not_an_optimizer", "family": "sgd"},
   "optimizer.name: plugin_optimizers:not_an_optimizer returned dict, not an "
   "optax.GradientTransformation"),
  ({"name": "optax:scale_by_adam"},
   "optimizer.name: optax:scale_by_adam takes no learning_rate argument"),
  ({"name": "optax:lion", "eps": 1e-8},
   "optimizer.eps: optax:lion takes no argument 'eps'; it takes b1, b2, mu_dtype, weight_decay"),
  ({"name": "optax:lion", "options": {"nesterov": True}},
   "optimizer.nesterov: optax:lion takes no argument 'nesterov'"),
  ({"name": "optax:lion", "b1": 1.5}, "optimizer.b1: must be in [0, 1), got 1.5"),
  ({"name": "plugin_optimizers:sgdw"},
   "optimizer.family: missing for plugin_optimizers:sgdw; set sgd (its step follows"),
  ({"name": "plugin_optimizers:sgdw", "family": "normalised"},
   "optimizer.family: 'normalised' is not one of sgd, adaptive"),
  ({"name": "lars", "family": "sgd"},
   "optimizer.family: lars is of the adaptive family, not 'sgd' (unset it)"),
  ({"name": "plugin_optimizers:heavy_ball", "family": "sgd", "momentum_arg": "beta"},
   "optimizer.momentum_arg: plugin_optimizers:heavy_ball takes no argument 'beta'"),
  ({"name": "sgd_momentum", "momentum_arg": "momentum"},
   "optimizer.momentum_arg: only for a factory"),
  ({"name": "lion_x"}, "optimizer.name: 'lion_x' is not one of sgd_momentum, adam, adamw"),
  ({"name": "adam", "decay_mask": "kernels"},
   "optimizer.decay_mask: adam has no weight decay (unset it)"),
  ({"name": "adamw", "decay_mask": "(unclosed"},
   "optimizer.decay_mask: '(unclosed' is not a regular expression"),
  ({"name": "optax:sgd", "decay_mask": "kernels"},
   "optimizer.decay_mask: optax:sgd takes no mask or weight_decay_mask"),
  ({"name": "lamb", "trust_mask": 3}, "optimizer.trust_mask: must be one of all, matrices"),
  ({"name": "lars", "trust_ratio": "lamb"}, "optimizer.trust_ratio: 'lamb' is not one of mlperf"),
  ({"name": "adamw", "clip_norm": 0.0}, "optimizer.clip_norm: must be positive (or unset"),
]  # fmt: skip


@pytest.mark.parametrize("optimizer, message", BAD, ids=[m.split(":")[0] + str(i)
                                                          for i, (_, m) in enumerate(BAD)])  # fmt: skip
def test_each_bad_optimizer_field_is_one_line_naming_it(optimizer, message):
  with pytest.raises(ConfigError) as raised:
    RunSpec.read({**BASE, "optimizer": {"learning_rate": 0.1, **optimizer}})
  assert str(raised.value).startswith(message), str(raised.value)
  assert "\n" not in str(raised.value)


def test_the_family_of_optax_factories_is_known_and_a_built_ins_is_its_own():
  families = {
    name: OptimizerSpec(name, 0.1).family
    for name in ("optax:sgd", "optax:adamw", "optax:lars", "optax.contrib:muon", "lars", "lion")
  }
  assert families == {
    "optax:sgd": "sgd",
    "optax:adamw": "adaptive",
    "optax:lars": "adaptive",
    "optax.contrib:muon": "adaptive",
    "lars": "adaptive",
    "lion": "adaptive",
  }
  assert OptimizerSpec("power_sign", 0.1).family == "sgd"  # g scaled by a bounded factor


def test_the_default_decay_mask_is_kernels_for_adamw_lamb_and_lars_only():
  defaults = {n: OptimizerSpec(n, 0.1).decay_mask_or_default for n in ("adamw", "lamb", "lars")}
  assert defaults == {"adamw": "kernels", "lamb": "kernels", "lars": "kernels"}
  assert OptimizerSpec("sgd_momentum", 0.1).decay_mask_or_default == "all"
  assert OptimizerSpec("optax:adamw", 0.1).decay_mask_or_default is None  # optax's own
  given = OptimizerSpec("adamw", 0.1, decay_mask=["kernel$", "bias$"])
  assert given.decay_mask == ("kernel$", "bias$")
