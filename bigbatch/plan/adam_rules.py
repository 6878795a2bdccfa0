"""Adam's hyperparameters when the batch changes: the rules a plan can follow.

The paper's rule, `g = lr (N/B - 1) / (1 - m)`, is SGD's: it holds the
learning rate while the batch takes a decay. For Adam-type optimizers
(Adam, AdamW, AMSGrad) the literature gives other rules, each a choice of
`plan.adam_rule`:

* `paper`: the paper's section 5.1, which runs Adam on the same batch steps as
  SGD: the learning rate is held while the batch grows by a decay's factor.
* `sqrt`: batch x k with lr x sqrt(k) (Malladi et al. 2022's square-root
  rule; what OLMo-core and nanochat do). The quantity held is lr^2 / B, so a
  decay of the learning rate by a is replaced by batch x a and lr / sqrt(a)
  (Seesaw, 2025).
* `sde`: the whole rule of Malladi et al.'s stochastic differential equation:
  lr x sqrt(k), 1 - b1 -> k (1 - b1), 1 - b2 -> k (1 - b2) and eps / sqrt(k).
  The betas are clipped at 0 where k (1 - b) passes 1 (the SDE needs
  k (1 - b) small; the plan says where it clipped).
* `beta2_halflife`: the learning rate held as under `paper`, and b2's
  half-life kept fixed in tokens (examples): b2 -> b2^k (Marek et al. 2025).

k is the ratio of the batch to the baseline's (a plan) or to the phase
before (a decision taken while training). Each rule is a `Rule`: the power
`lr_power` of k that the learning rate takes (1 for `paper`, 1/2 for the
square-root rules) and how b1, b2 and eps move.
"""

from __future__ import annotations

import dataclasses
import math

__all__ = ["ADAM_RULES", "AdamHyperparams", "Rule", "rule"]

ADAM_RULES = ("paper", "sqrt", "sde", "beta2_halflife")


@dataclasses.dataclass(frozen=True)
class AdamHyperparams:
  """b1 (the plan's momentum), b2 and eps of one phase, and whether a beta was clipped."""

  b1: float
  b2: float
  eps: float
  clipped: bool = False


@dataclasses.dataclass(frozen=True)
class Rule:
  """One of `ADAM_RULES` (None: SGD's, the paper's own)."""

  name: str | None

  @property
  def lr_power(self) -> float:
    """The power of the batch ratio k in the learning rate's multiplier: with the
    noise's factor `f(B) = N/B` (or N/B - 1), lr x (f(B0)/f(B))^lr_power keeps the
    rule's quantity (lr / B for the paper's, lr^2 / B for the square-root rules)."""
    return 0.5 if self.name in ("sqrt", "sde") else 1.0

  @property
  def moves_betas(self) -> bool:
    """Whether b2 or eps follow the batch (and so must live in the optimizer's state)."""
    return self.name in ("sde", "beta2_halflife")

  def hyperparams(self, ratio: float, b1: float, b2: float, eps: float) -> AdamHyperparams:
    """b1, b2 and eps at a batch `ratio` times the reference batch.

    Args:
      ratio: k, the batch over the reference batch (> 0).
      b1, b2, eps: the values at the reference batch.
    """
    if self.name == "sde":
      new_b1, new_b2 = 1.0 - ratio * (1.0 - b1), 1.0 - ratio * (1.0 - b2)
      clipped = new_b1 < 0.0 or new_b2 < 0.0
      return AdamHyperparams(max(new_b1, 0.0), max(new_b2, 0.0), eps / math.sqrt(ratio), clipped)
    if self.name == "beta2_halflife":
      return AdamHyperparams(b1, b2**ratio, eps)
    return AdamHyperparams(b1, b2, eps)

  def momentum(self, ratio: float, b1):
    """b1 at `ratio` (a number or an array: a schedule's value inside a jitted step)."""
    if self.name != "sde":
      return b1
    moved = 1.0 - ratio * (1.0 - b1)
    return moved * (moved > 0.0)  # clipped at 0, as `hyperparams`

  def describe(self) -> str:
    """The rule in a line, for the plan's table."""
    return {
      None: "SGD: the paper's rule (lr held while the batch takes a decay)",
      "paper": "adam_rule paper: lr held while the batch takes a decay (the paper's 5.1; "
      "the same noise at batch x k: lr x k)",
      "sqrt": "adam_rule sqrt: batch x k with lr x sqrt(k); a decay by a -> batch x a, "
      "lr / sqrt(a) (Seesaw)",
      "sde": "adam_rule sde: batch x k with lr x sqrt(k), 1-b1 and 1-b2 x k, eps / sqrt(k) "
      "(Malladi et al.); a decay by a -> batch x a (Seesaw)",
      "beta2_halflife": "adam_rule beta2_halflife: lr held while the batch takes a decay "
      "(batch x k: lr x k); b2 -> b2^k, its half-life fixed in examples (Marek et al.)",
    }[self.name]


def rule(name: str | None) -> Rule:
  """The `Rule` of `plan.adam_rule` (None: SGD's).

  Raises:
    ValueError: naming `plan.adam_rule`.
  """
  if name is not None and name not in ADAM_RULES:
    raise ValueError(f"plan.adam_rule: {name!r} is not one of {', '.join(ADAM_RULES)}")
  return Rule(name)
