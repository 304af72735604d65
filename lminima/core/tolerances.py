"""Every tolerance of refinement, fate, certificate and claims, in one place.

Tolerances on quantities with units are relative to their own scale
(docs/theory.md#certificates):

* The gradient. Near a point where the Hessian is H, the quadratic model
  gives ``L(theta) - L_min >= ||g||^2 / (2 ||H||)``, so ``||g|| <=
  sqrt(2 ||H|| L)`` is the largest gradient compatible with a loss L. A point
  is critical when ``||g|| <= grad_rtol * sqrt(2 ||H|| L)``: the gradient is
  a tiny fraction of what the loss's own size allows, at every loss scale.
  Where L itself is at rounding, the gradient's rounding floor takes over:
  ``grad_floor * sqrt(2 ||H|| L_ref)``, with ``L_ref`` the loss of the zero
  predictor (``Problem.reference_loss``; c ||Y||^2 for the squared loss), the
  scale of the terms that round.
* Eigenvalues: relative to ``max |lambda|`` (``eig_rtol``).
* Loss: zero loss means ``L <= zero_loss_rtol * L_ref`` (residuals at the
  rounding of the targets); a decrease found by the descent probe is
  relative to ``max(L, zero floor)`` and refutes a minimum above
  ``descent_rtol``.
* Claims: identity gaps relative to L (with a floor at the rounding of a
  projection), the subspace bound relative to L*_linear.

Example:
  >>> tol = Tolerances()
  >>> # a gradient of 1e-9 at L = 1e-17 is far from critical ...
  >>> bool(1e-9 <= tol.grad_tolerance(1e-17, 1.0, 0.5))
  False
  >>> # ... and a gradient of 1e-11 at L = 0.1 is critical
  >>> bool(1e-11 <= tol.grad_tolerance(0.1, 1.0, 0.5))
  True
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class Tolerances:
  """The tolerances shared by refinement, fate, certificate and claims.

  Attributes:
    grad_rtol: critical when ``||g|| <= grad_rtol * sqrt(2 ||H|| L)``.
    grad_floor: ... or ``||g|| <= grad_floor * sqrt(2 ||H|| L_ref)``, the
      rounding of the gradient (a few hundred machine epsilons).
    zero_loss_rtol: ``L <= zero_loss_rtol * L_ref`` is zero loss.
    eig_rtol: eigenvalues within ``eig_rtol * max |lambda|`` of 0 are flat;
      below ``-eig_rtol * max |lambda|`` negative.
    kink_tol: a non-differentiable activation's argument within this of
      its kink (absolute: pre-activations of standardized data are O(1)).
    descent_rtol: a relative decrease of L above this, found by the descent
      probe, refutes a minimum.
    probe_iters: iterations of the descent probe (per start).
    probe_starts: the probe's starts: the point itself, then points at
      distance ``probe_radius_rtol * max(1, ||theta||)`` in fixed random
      directions (which find descent that begins at third order, where
      the gradient and the Hessian vanish).
    probe_radius_rtol: see ``probe_starts``.
    proof_radius_rtol: radius of the ball of the second-order proof, as a
      fraction of ``max(1, ||theta||)`` (at least 4 Newton steps).
    growth: a continuation whose ``||theta||`` grows by this factor while L
      never rises is escaping.
    escape_fall, escape_spread, escape_points: the slow escape
      (``lminima.critical.escape.gap_tracking``): over at least
      ``escape_points`` iterations at the end of a path along which L never
      rose and ``||theta||`` grew, ``||g|| / (L - L_inf)`` stayed within a
      factor ``escape_spread`` while ``L - L_inf`` fell by ``escape_fall``.
    identity_rtol: the identities' gaps relative to ``max(L,
      identity_floor_rtol * L_ref)``: the floor puts the tolerance at the
      rounding of a projection of Y (about 1e-16 L_ref) where L is tiny.
    identity_floor_rtol: see ``identity_rtol``.
    euler_rtol: the Euler residual relative to ``||vec Yhat||``.
    inclusion_tol: the relative residual of projecting a design onto col(D)
      below which the inclusion holds.
    bound_rtol: the subspace bound ``L <= L*_linear (1 + bound_rtol)``.
  """
  grad_rtol: float = 1e-9
  grad_floor: float = 1e-13
  zero_loss_rtol: float = 1e-28
  eig_rtol: float = 1e-6
  kink_tol: float = 1e-8
  descent_rtol: float = 1e-9
  probe_iters: int = 30
  probe_starts: int = 2
  probe_radius_rtol: float = 1e-3
  proof_radius_rtol: float = 1e-6
  growth: float = 2.0
  escape_fall: float = 10000.0
  escape_spread: float = 3.0
  escape_points: int = 20
  identity_rtol: float = 1e-8
  identity_floor_rtol: float = 1e-8
  euler_rtol: float = 1e-8
  inclusion_tol: float = 1e-6
  bound_rtol: float = 1e-8

  def __post_init__(self):
    bad = [f"{f.name}={getattr(self, f.name)!r}"
           for f in dataclasses.fields(self)
           if not (np.isfinite(getattr(self, f.name))
                   and getattr(self, f.name) >= 0)]
    for name in ("growth", "escape_fall", "escape_spread"):
      if not getattr(self, name) > 1:
        bad.append(f"{name}={getattr(self, name)!r} (must exceed 1)")
    for name in ("probe_iters", "probe_starts", "escape_points"):
      value = getattr(self, name)
      if not value >= 1 or int(value) != value:
        bad.append(f"{name}={value!r} (an integer >= 1)")
    if bad:
      raise ValueError("Tolerances: need finite non-negative values; got "
                       + ", ".join(bad))

  def to_dict(self) -> dict[str, Any]:
    """The values, for a result row."""
    return dataclasses.asdict(self)

  def grad_tolerance(self, loss, curvature, ref_loss, xp=np):
    """The largest ``||g||`` of a critical point at loss ``loss`` where
    ``||H|| = curvature`` (elementwise; ``xp=jax.numpy`` in programs)."""
    scale = xp.sqrt(2.0 * xp.maximum(curvature, 0.0))
    return scale * xp.maximum(
        self.grad_rtol * xp.sqrt(xp.maximum(loss, 0.0)),
        self.grad_floor * xp.sqrt(xp.maximum(ref_loss, 0.0)))

  def zero_floor(self, ref_loss: float) -> float:
    """The loss at rounding: ``zero_loss_rtol * L_ref``."""
    return self.zero_loss_rtol * ref_loss

  def is_zero_loss(self, loss: float, ref_loss: float) -> bool:
    return bool(loss <= self.zero_floor(ref_loss))

  def relative_decrease(self, loss: float, lower: float,
                        ref_loss: float) -> float:
    """``(L - L_lower) / max(L, zero floor)``."""
    return float((loss - lower) / max(loss, self.zero_floor(ref_loss),
                                      np.finfo(np.float64).tiny))

  def eig_tolerance(self, lam_min: float, lam_max: float) -> float:
    return self.eig_rtol * max(abs(lam_min), abs(lam_max))


LOSS_ROUNDOFF_RTOL = 1e-12
"""A relative change of L below this is float64 roundoff: a rise along an
accepted step, or a decrease that is no progress
(``lminima.critical.outcomes``, ``lminima.critical.kinks``)."""

DEFAULT = Tolerances()
"""The tolerances used wherever none are given."""
