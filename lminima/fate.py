"""What became of a member whose refinement did not reach a critical point.

Refinement stops a point that runs off (``"escaping"``: its norm outgrew
``escape_ratio`` times its start) or that is still moving after ``max_iters``
(docs/theory.md#escape-to-infinity). Neither is a finding: a norm ratio alone
misclassifies degenerate critical points far out, and a cap says nothing.
``continue_and_classify`` continues the Levenberg-Marquardt refinement without
the escape stop and decides from the evidence along that continuation:

* ``"critical"``: the continuation reaches ``||g|| <= grad_tol`` and stays:
  ``probe_iters`` further LM steps (no gradient tolerance) move it by at most
  ``settle_rtol * ||theta||``. The point is a genuine (possibly degenerate)
  critical point, wherever it lies, and is certified there. On a path to
  infinity the gradient also falls below any tolerance (saturated units make
  it exponentially small), but the probe steps keep moving the point.
* ``"escaping"``: L never increased along the continuation while ``||theta||``
  grew by at least ``growth``: L decreases along a path on which the
  parameters go to infinity. The asymptotic loss is estimated by fitting
  ``L = L_inf + s / ||theta||`` to the second half of the path (clipped to
  ``[0, L_end]``), a rough extrapolation, not a bound.
* ``"undecided"``: neither, with the reason (the norm grew too little in the
  iterations given, the loss rose, or no step helped).

The evidence (losses and norms at both ends, the gradient norm, for MLPs the
largest hidden pre-activation |Z| at both ends, which grows where units
saturate) is returned with the verdict and recorded in the sweep's rows.

Example:
  >>> import jax, numpy as np
  >>> from lminima import Problem, refine
  >>> # One tanh unit fitting the sign of x: the loss decreases forever as the
  >>> # weight grows (the infimum is approached only at infinity).
  >>> x = np.linspace(-1, 1, 8)[:, None]; y = np.sign(x)
  >>> problem = Problem(lambda p, x: jax.numpy.tanh(x @ p["w"]),
  ...                   {"w": np.ones((1, 1))}, x, y)
  >>> result = refine(problem, max_iters=20)
  >>> fate = continue_and_classify(problem, result, extra_iters=60)
  >>> fate.fate, fate.param_norm_end > 2 * fate.param_norm_start
  ('escaping', True)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from lminima.hessian import flatten_params
from lminima.models import MLP
from lminima.problem import Problem
from lminima.refinement import RefineResult, refine

FATES = ("critical", "escaping", "undecided")

# Relative rise of L along an accepted LM step that is float64 roundoff.
_LOSS_NOISE = 1e-12


@dataclasses.dataclass(frozen=True)
class Fate:
  """The outcome of continuing one member's refinement.

  Attributes:
    fate: one of ``FATES``.
    reason: one line saying what decided it.
    iters: continuation iterations taken.
    params: the point where the continuation stopped (float64).
    loss_start, loss_end: L at the start and the end of the continuation.
    param_norm_start, param_norm_end: ``||theta||`` there.
    grad_norm_end: ``||g||`` at the end.
    loss_monotone: L never rose (beyond roundoff) along the continuation.
    asymptotic_loss: the extrapolated L at ``||theta|| -> infinity`` for
      ``"escaping"``, else None.
    max_abs_preactivation_start, max_abs_preactivation_end: the largest
      hidden |Z| over samples at both ends (MLPs only, else None).
  """
  fate: str
  reason: str
  iters: int
  params: Any
  loss_start: float
  loss_end: float
  param_norm_start: float
  param_norm_end: float
  grad_norm_end: float
  loss_monotone: bool
  asymptotic_loss: float | None
  max_abs_preactivation_start: float | None
  max_abs_preactivation_end: float | None

  def to_row(self) -> dict[str, Any]:
    """The row fields of the sweep (``lminima.records.ROW_FIELDS``)."""
    return {"fate": self.fate, "fate_reason": self.reason,
            "fate_iters": self.iters, "fate_loss": self.loss_end,
            "fate_param_norm": self.param_norm_end,
            "fate_grad_norm": self.grad_norm_end,
            "fate_asymptotic_loss": self.asymptotic_loss,
            "fate_max_abs_preactivation": [self.max_abs_preactivation_start,
                                           self.max_abs_preactivation_end]}


def _max_abs_preactivation(problem: Problem, params: Any) -> float | None:
  if not isinstance(problem.module, MLP) or not problem.module.widths:
    return None
  _, pre, _ = problem.module.apply(params, problem.x, method="forward")
  return float(max(np.max(np.abs(np.asarray(z))) for z in pre))


def _asymptotic_loss(losses: np.ndarray, norms: np.ndarray) -> float:
  """Intercept of L ~ L_inf + s / ||theta|| over the second half, clipped."""
  half = slice(len(losses) // 2, None)
  design = np.stack([np.ones_like(norms[half]), 1.0 / norms[half]], axis=1)
  intercept = np.linalg.lstsq(design, losses[half], rcond=None)[0][0]
  return float(np.clip(intercept, 0.0, losses[-1]))


def continue_and_classify(problem: Problem, result: RefineResult, *,
                          extra_iters: int = 200, grad_tol: float = 1e-10,
                          growth: float = 2.0, probe_iters: int = 5,
                          settle_rtol: float = 1e-3) -> Fate:
  """Continues ``result`` (from ``refine(problem)``) and classifies it.

  Args:
    problem: the member's problem (any point: the continuation starts at
      ``result.params``).
    result: its refinement, stopped at ``"escaping"``, ``"max_iters"`` or
      ``"stalled"`` (a converged result is returned as ``"critical"``).
    extra_iters: LM iterations of the continuation (no escape stop).
    grad_tol: the gradient norm that counts as critical.
    growth: the factor by which ``||theta||`` must grow, along a path on
      which L never rises, to count as ``"escaping"``.
    probe_iters, settle_rtol: the probe of a converged continuation (module
      docstring).

  Returns:
    A ``Fate``.

  Raises:
    ValueError: on ``extra_iters < 1`` or ``growth <= 1``.
  """
  if extra_iters < 1 or not growth > 1:
    raise ValueError(f"continue_and_classify: need extra_iters >= 1 and "
                     f"growth > 1, got {extra_iters} and {growth}")
  start = problem.at(result.params)
  if result.converged:
    run = dataclasses.replace(result, iters=0, loss_history=(result.loss,),
                              param_norm_history=(result.param_norm,))
  else:
    run = refine(start, method="lm", grad_tol=grad_tol,
                 max_iters=extra_iters, escape_ratio=None)
  losses = list(run.loss_history)
  norms = list(run.param_norm_history)
  settled = False
  if run.converged:
    converged_at = start.at(run.params)
    probe = refine(converged_at, method="lm", grad_tol=1e-300,
                   max_iters=probe_iters, escape_ratio=None)
    moved = float(np.linalg.norm(
        np.asarray(flatten_params(probe.params)[0])
        - np.asarray(converged_at.flat)))
    settled = moved <= settle_rtol * max(run.param_norm, 1.0)
    if not settled:  # the probe's steps are part of the path's evidence
      losses += list(probe.loss_history[1:])
      norms += list(probe.param_norm_history[1:])
      run = dataclasses.replace(probe, iters=run.iters + probe.iters)
  losses, norms = np.asarray(losses), np.asarray(norms)
  rises = np.diff(losses) > _LOSS_NOISE * np.abs(losses[:-1])
  monotone = not bool(np.any(rises))
  ratio = norms[-1] / max(norms[0], 1e-300)
  asymptotic = None
  if settled:
    fate = "critical"
    reason = (f"the continuation reached ||g|| = {run.grad_norm:.1e} at "
              f"||theta|| = {norms[-1]:.3g} ({ratio:.2f}x its start) and "
              f"stayed there")
  elif run.stop_reason == "stalled" and run.iters == 0:
    fate, reason = "undecided", "no step decreased L or ||g|| any further"
  elif monotone and ratio >= growth:
    fate = "escaping"
    asymptotic = _asymptotic_loss(losses, norms)
    reason = (f"L fell monotonically from {losses[0]:.6g} to {losses[-1]:.6g}"
              f" while ||theta|| grew {ratio:.1f}x in {run.iters} iterations "
              f"(||g|| = {run.grad_norm:.1e}, still moving)")
  elif not monotone:
    fate = "undecided"
    reason = (f"L rose on {int(np.sum(rises))} of {run.iters} continuation "
              f"steps")
  else:
    fate = "undecided"
    reason = (f"||theta|| grew only {ratio:.2f}x (< {growth}x) in "
              f"{run.iters} iterations while ||g|| = {run.grad_norm:.1e}")
  return Fate(
      fate=fate, reason=reason, iters=run.iters, params=run.params,
      loss_start=float(losses[0]), loss_end=float(losses[-1]),
      param_norm_start=float(norms[0]), param_norm_end=float(norms[-1]),
      grad_norm_end=run.grad_norm, loss_monotone=monotone,
      asymptotic_loss=asymptotic,
      max_abs_preactivation_start=_max_abs_preactivation(start, start.params),
      max_abs_preactivation_end=_max_abs_preactivation(start, run.params))
