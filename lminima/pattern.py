"""The loss of a relu / leaky_relu MLP with its activation pattern held fixed.

On the region of parameter space where every hidden pre-activation keeps its
sign, a (leaky) relu network equals the network with each unit's activation
replaced by a fixed per-sample slope ``s_ij`` (1 where ``Z_ij > 0``, 0 or
the leaky slope where ``Z_ij < 0``):

    h^(l) = Z^(l) * S^(l),

a smooth function of the parameters. Training of homogeneous networks often
ends exactly on a kink (some ``Z_ij = 0``), where the loss is not
differentiable and Levenberg-Marquardt stalls. ``refine_in_pattern``
refines the smooth pattern-fixed loss from such a point: if it converges to
a point that keeps the pattern strictly (every ``|Z_ij|`` above the kink
tolerance, signs unchanged), that point is a differentiable critical point of
the true loss, where the ordinary certificate applies; if the refinement
leaves the pattern, no critical point lies inside it
(docs/theory.md#certificates).

The pattern enters as extra input columns (``PatternApply``), so members of
one shape share one compiled objective whatever their pattern.

Example:
  >>> import jax, numpy as np
  >>> from lminima import Problem
  >>> from lminima.models import MLP
  >>> model = MLP(d_in=2, widths=(3,), d_out=1, activation="relu")
  >>> x = np.random.default_rng(0).standard_normal((8, 2))
  >>> problem = Problem.for_module(model, model.init_params(
  ...     jax.random.PRNGKey(0)), x, x[:, :1] ** 2)
  >>> fixed = pattern_problem(problem)
  >>> bool(abs(fixed.loss - problem.loss) < 1e-12)  # same loss at the point
  True
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from lminima import models
from lminima.problem import Problem
from lminima.refinement import RefineResult, refine
from lminima.tolerances import Tolerances


@dataclasses.dataclass(frozen=True)
class PatternApply:
  """``(params, [X, S^(1), ..., S^(H)]) -> Yhat`` of ``module`` with its
  activation replaced by the slopes ``S`` read from the extra columns."""
  module: models.MLP

  def __call__(self, params: Any, x_and_slopes: Any) -> Any:
    d_x = self.module.d_in
    x = x_and_slopes[:, :d_x]
    bounds = np.cumsum([d_x, *self.module.widths])
    slopes = [x_and_slopes[:, a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    linear = dataclasses.replace(self.module, activation="identity")
    return linear.apply(params, x, slopes)


def slopes(problem: Problem) -> list[np.ndarray]:
  """The activation's slope per sample and hidden unit at the problem's
  point (0 or the leaky slope where ``Z < 0``, 1 where ``Z >= 0``)."""
  module = problem.module
  _, pre, _ = module.apply(problem.params, problem.x, method="forward")
  low = models.LEAKY_RELU_SLOPE if module.activation == "leaky_relu" else 0.0
  return [np.where(np.asarray(z) >= 0, 1.0, low) for z in pre]


def has_pattern(problem: Problem) -> bool:
  """Whether the problem's model is an MLP with kinked activations."""
  return (isinstance(problem.module, models.MLP)
          and problem.module.activation in models.KINKED_ACTIVATIONS
          and bool(problem.module.widths))


def pattern_problem(problem: Problem) -> Problem:
  """The pattern-fixed problem at the problem's point (module docstring)."""
  x = np.asarray(problem.x).reshape(problem.m, -1)
  return Problem(PatternApply(problem.module), problem.params,
                 np.hstack([x, *slopes(problem)]), problem.y,
                 normalization=problem.normalization,
                 loss=problem.objective.loss, intercept=problem.intercept,
                 memory_budget_bytes=problem.memory_budget_bytes)


def refine_in_pattern(problem: Problem, tol: Tolerances, max_iters: int
                      ) -> tuple[RefineResult, bool]:
  """Refines the pattern-fixed loss from the problem's point.

  Returns ``(result, inside)``: ``inside`` when the refinement converged to
  a point whose own pattern is the one held fixed, every pre-activation at
  least ``tol.kink_tol`` from its kink: there the true loss is smooth and
  equals the pattern-fixed one, so the point is a critical point of the true
  loss.
  """
  fixed = pattern_problem(problem)
  result = refine(fixed, method="lm", tol=tol, max_iters=max_iters,
                  escape_ratio=None)
  if not result.converged:
    return result, False
  end = problem.at(result.params)
  kept = all(np.array_equal(a, b) for a, b in zip(slopes(end),
                                                  slopes(problem)))
  margin = end.min_abs_kink_input()
  return result, bool(kept and margin is not None and margin > tol.kink_tol)
