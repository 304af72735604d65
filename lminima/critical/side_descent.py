"""Descent on one side of kinks, over its region: damped SQP.

A side s of the kinks gives a smooth piece L_s, equal to L on its region
``R_s = {s_k z_k(theta) >= 0}`` (``lminima.critical.pieces``). ``descend``
minimizes L_s over R_s from the side's point: Levenberg-Marquardt steps
(the exact Hessian of the Lagrangian, shifted positive definite) under the
linearized kinks, each a least-distance program solved by nonnegative least
squares (``_qp_step``); Gauss-Newton corrections keep every end in R_s where
the kinks are curved; a Newton polish of the KKT conditions ends it
(docs/theory.md#kinks, "Moving"). ``lminima.critical.kinks`` follows the
sides that are not stationary with it.
"""

from __future__ import annotations

import numpy as np
import scipy.optimize

from lminima.core.tolerances import LOSS_ROUNDOFF_RTOL, Tolerances
from lminima.critical import pieces
from lminima.critical.refinement import serial_blas

_CONSTRAINT_ROUNDS = 8
_CORRECTIONS = 5
_MAX_TRIALS = 40
_DESCENT_ITERS = 300
_STALL_STEPS = 10
_STALL_FRACTION = 1e-2
_POLISH_STEPS = 5


def _qp_step(lam: np.ndarray, vecs: np.ndarray, mu: float, grad: np.ndarray,
             normals: np.ndarray, values: np.ndarray
             ) -> tuple[np.ndarray, float, np.ndarray]:
  """The step ``d`` minimizing ``q(d) = g.d + d.(H + mu I) d / 2`` subject to
  ``values + normals d >= 0`` (``H = vecs diag(lam) vecs^T``, ``H + mu I``
  positive definite; ``d = 0`` is feasible), its decrease ``-q(d)``, and the
  constraints' multipliers (``g + (H + mu I) d = normals^T multipliers``).

  With ``R = diag(sqrt(lam + mu)) vecs^T``, ``c = R^-T g`` and ``u = R d + c``,
  ``q = (||u||^2 - ||c||^2) / 2``: the least-distance program ``min ||u||``
  subject to ``E u >= f``, ``E = normals R^-1``, ``f = E c - values``, solved
  by nonnegative least squares (Lawson and Hanson, Solving Least Squares
  Problems, ch. 23): the residual rho of ``min_{w >= 0} ||[E^T; f^T] w -
  e_{n+1}||`` gives ``u = -rho[:n] / rho[n]`` and the multipliers
  ``-w / rho[n]`` (with f scaled to unit size, and both scaled back)."""
  scale = 1.0 / np.sqrt(lam + mu)
  c = scale * (vecs.T @ grad)
  u, multipliers = np.zeros_like(c), np.zeros(len(values))
  # The program is linear in (g, values): solved at unit size, since NNLS
  # fits e_{n+1} poorly with a last row f far below the normals' scale.
  size = max(float(np.linalg.norm(c)), float(np.max(values, initial=0.0)),
             np.finfo(float).tiny)
  if len(values):
    e = (normals @ vecs) * scale
    matrix = np.vstack([e.T, (e @ c - values)[None] / size])
    target = np.zeros(len(c) + 1)
    target[-1] = 1.0
    w = scipy.optimize.nnls(matrix, target, maxiter=50 * matrix.shape[1])[0]
    rho = matrix @ w - target
    if rho[-1] < 0:  # d = 0 is feasible, so rho[n] < 0 up to rounding
      u, multipliers = -size * rho[:-1] / rho[-1], -size * w / rho[-1]
  return (vecs @ (scale * (u - c)), 0.5 * float(c @ c - u @ u),
          multipliers)


def descend(side: pieces.Side, tol: Tolerances) -> np.ndarray:
  """Descent on the piece over its region, ``min L_s`` subject to ``s_k
  z_k >= 0``: sequential quadratic programming with Levenberg-Marquardt
  damping, as ``refinement``'s LM (the exact Hessian, of the Lagrangian
  here, shifted positive definite, ``mu = shift + nu ||g||``, ``nu`` adapted
  by the ratio of L_s's actual to predicted decrease), each step under the
  linearized constraints (``_qp_step``). The constraints are the kinked
  arguments, those within ``kink_tol`` of their kink, and every argument a
  trial step takes out of the region (the step is solved again with them,
  up to ``_CONSTRAINT_ROUNDS`` times); where the kinks are curved (beyond the
  first hidden layer), Gauss-Newton corrections bring the arguments the
  step left below -``kink_tol`` back to 0, and the Lagrangian's Hessian
  (the last step's multipliers) bends the steps along them. Where the
  predicted decrease is below L's roundoff, a step counts if it lowers the
  first-order residual. It ends when no step counts, or on a crawl, when
  the last ``_STALL_STEPS`` steps gained less than ``_STALL_FRACTION`` of
  the descent's gain (the continuation's next move examines the sides
  again), then the Newton polish of the KKT conditions (``polish``)."""
  piece, flat = side.piece, np.asarray(side.piece.flat)
  loss, grad = piece.loss_and_grad_at(flat)
  nu, held, multipliers = 1.0, np.zeros_like(side.kinked), np.zeros(0)
  losses = [loss]
  with serial_blas():  # eigh and nnls of n_params: threads only wait
    for _ in range(_DESCENT_ITERS):
      if (len(losses) > _STALL_STEPS and losses[-_STALL_STEPS - 1] - loss
          < _STALL_FRACTION * (losses[0] - loss)):
        break  # a crawl: the continuation's next move may find a way out
      hess = side.lagrangian_hessian(flat, held, multipliers)
      binding = held.copy()
      binding[held] = multipliers > 0
      if binding.any():
        # Curvature across the binding kinks, where the step cannot go, is
        # not to damp the step along them: a penalty there, of the
        # Hessian's scale, turns negative curvature across into positive.
        normals = side.normals(flat, binding)
        normals /= np.linalg.norm(normals, axis=1, keepdims=True)
        hess = hess + np.abs(hess).sum(1).max() * normals.T @ normals
      lam, vecs = np.linalg.eigh(hess)
      values = side.values(flat)
      active = side.kinked | (values <= tol.kink_tol)
      shift = max(0.0, -float(lam[0]))
      grad_norm = float(np.linalg.norm(grad))
      for _ in range(_MAX_TRIALS):
        candidate, predicted, trial_multipliers = _constrained_trial(
            side, flat, values, active, grad, lam, vecs,
            shift + nu * grad_norm, tol)
        if predicted <= LOSS_ROUNDOFF_RTOL * loss:
          # L's roundoff cannot judge the step; the first-order residual
          # does, as in LM's rule for noise (refinement.lm_accept).
          accept = very_good = candidate is not None and (
              _first_order_residual(side, candidate, tol)
              < _first_order_residual(side, flat, tol))
          break
        new_loss = (np.inf if candidate is None
                    else piece.loss_and_grad_at(candidate)[0])
        ratio = (loss - new_loss) / predicted
        accept, very_good = ratio > 0.1, ratio > 0.75
        if accept:
          break
        nu = max(4.0 * nu, 1e-8)
      if not accept:
        break
      nu = nu / 4 if very_good else nu
      flat, held, multipliers = candidate, active, trial_multipliers
      loss, grad = piece.loss_and_grad_at(flat)
      losses.append(loss)
  return polish(side, flat, tol)


def _first_order_residual(side: pieces.Side, flat: np.ndarray,
                          tol: Tolerances) -> float:
  """``||g_s - sum_k mu_k n_k||`` at ``flat``, over the arguments within
  ``kink_tol`` of their kink, ``mu >= 0`` by nonnegative least squares."""
  near = np.abs(side.values(flat)) <= tol.kink_tol
  return pieces.cone_fit(side.normals(flat, near),
                         side.piece.loss_and_grad_at(flat)[1])[1]


def _constrained_trial(side: pieces.Side, flat: np.ndarray,
                       values: np.ndarray, active: np.ndarray,
                       grad: np.ndarray, lam: np.ndarray, vecs: np.ndarray,
                       mu: float, tol: Tolerances
                       ) -> tuple[np.ndarray | None, float, np.ndarray]:
  """One trial of ``descend``: the point in the side's region (or
  None where the corrections did not bring it back), the predicted decrease
  and the multipliers of ``active``, which it grows in place with the
  arguments the step crossed."""
  for _ in range(_CONSTRAINT_ROUNDS):
    # Arguments within kink_tol on the far side count as on the kink, where
    # d = 0 is feasible.
    step, predicted, multipliers = _qp_step(
        lam, vecs, mu, grad, side.normals(flat, active),
        np.maximum(values[active], 0.0))
    candidate = flat + step
    crossed = (side.values(candidate) < -tol.kink_tol) & ~active
    if not crossed.any():
      break
    active |= crossed
  return _into_region(side, candidate, tol), predicted, multipliers


def _into_region(side: pieces.Side, flat: np.ndarray, tol: Tolerances
                 ) -> np.ndarray | None:
  """``flat``, with the arguments below -``kink_tol`` brought back to 0 by
  Gauss-Newton corrections (``_CORRECTIONS`` at most), or None where they
  did not: a step under linearized kinks leaves curved ones behind."""
  held = np.zeros_like(side.kinked)
  for _ in range(_CORRECTIONS):
    values = side.values(flat)
    below = values < -tol.kink_tol
    if not below.any():
      return flat
    # Those as close to the boundary as the worst is beyond it, and those
    # brought back, are held at 0: correcting the others does not push them
    # out.
    held |= values <= -values.min()
    flat = flat + np.linalg.lstsq(side.normals(flat, held), -values[held],
                                  rcond=None)[0]
  return None


def polish(side: pieces.Side, flat: np.ndarray, tol: Tolerances) -> np.ndarray:
  """Newton on the KKT conditions of the piece, the arguments at their kink
  with a positive multiplier held there (``_POLISH_STEPS`` steps, each kept
  only if L_s does not rise, brought back into the region), on the
  Hessian of the Lagrangian (the kinks of deeper layers are curved): the
  descent's damped steps converge only linearly where its shift is large,
  and the criticality tolerance is about 1e-9 of the gradient's scale."""
  loss = side.piece.loss_and_grad_at(flat)[0]
  for _ in range(_POLISH_STEPS):
    values = side.values(flat)
    near = np.abs(values) <= tol.kink_tol
    jacobian = side.normals(flat, near)
    grad = side.piece.loss_and_grad_at(flat)[1]
    # Held: the arguments whose multiplier is positive; the rest leave
    # their kink into the side.
    multipliers = pieces.cone_fit(jacobian, grad)[0]
    normals = jacobian[multipliers > 0]
    held = near.copy()
    held[near] = multipliers > 0
    hess = side.lagrangian_hessian(flat, held, multipliers[multipliers > 0])
    # Shifted to positive semidefinite, as LM does: a step toward a minimum.
    hess = hess + max(0.0, -float(np.linalg.eigvalsh(hess)[0])) * np.eye(
        flat.size)
    kkt = np.block([[hess, normals.T],
                    [normals, np.zeros((len(normals), len(normals)))]])
    step = np.linalg.lstsq(
        kkt, -np.concatenate([grad, values[near][multipliers > 0]]),
        rcond=None)[0][:flat.size]
    candidate = _into_region(side, flat + step, tol)
    if candidate is None:
      break
    new_loss = side.piece.loss_and_grad_at(candidate)[0]
    if not new_loss <= loss * (1 + LOSS_ROUNDOFF_RTOL):
      break
    flat, loss = candidate, new_loss
  return flat
