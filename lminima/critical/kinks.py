"""Points on kinks: decided as nonsmooth minima, or shown a way down.

Where arguments z_k, k in K, of piecewise-linear activations (relu,
leaky_relu) sit at their kink (``|z_k| <= kink_tol``), L is not
differentiable, and LM, whose model breaks across the kink, stalls there.
Near such a point theta_0 the loss is piecewise smooth: each side s of the
kinks gives a smooth piece L_s, equal to L on the closure of its region R_s
(``lminima.critical.pieces``), and theta_0 is a local minimum of L iff it is
one of every L_s on R_s (docs/theory.md#kinks).

* First order: every side's residual (``lminima.critical.pieces``), against
  the criticality tolerance (``Tolerances.grad_tolerance`` with ``||H||``
  from power iteration); each side, or all at once where the kinks are
  linear with independent normals, or beyond ``max_sides`` without that
  structure a sample, which can find a way down but decides nothing else.
* Descent: the sides with the largest residuals are followed by
  sequential quadratic programming on L_s subject to ``s_k z_k >= 0``
  (``_piece_descent``: LM steps under the linearized kinks, each a
  nonnegative least-squares problem), which slides along the kinks where LM
  stalls, then a Newton polish of the KKT conditions.
* Second order, where every side is first-order stationary: the
  certificate's descent probe (``certify.descent_probe``) on each
  enumerated side's piece, and descent on L itself from perturbed starts at
  the probe's radius (``certify.probe_starts``, 8 times as many: kinks make
  small basins), region by region as the continuation moves, which crosses
  the kinks where L-BFGS-B stalls on the first one it meets.

Every end point counts only by the true L, at its lowest on the segment from
theta_0 (a piece's minimizer may lie outside its region). Verdicts:

* ``descends``: a side went lower by more than ``descent_rtol`` (relative),
  or, where one is not first-order stationary, by more than roundoff; the
  point is returned, and the continuation goes on from it;
* ``kink_min``: every side (enumerated, or bounded at once) is first-order
  stationary, and the probes found nothing lower than ``descent_rtol`` (no
  probe where L is zero up to rounding, the global minimum value): a
  nonsmooth local minimum, with that evidence;
* ``undecided``: otherwise (a sample of sides found no way down; negative
  curvature on the kinks' manifold without a lower value along it; or a
  side not first-order stationary whose descent gained no more than
  roundoff, also after one polish of the point);
* ``differentiable``: on no kink, first-order stationary, and the descent
  from the perturbed starts found nothing lower (the smooth certificate's
  probe does not cross kinks; a plateau of dead units next to a kink that
  leads down passes it): the smooth certificate decides.

Off kinks there is one side, the point's own region: a point that is not
stationary descends over its region the same way, which ends on the region's
boundary (on kinks) or at a critical point of its piece. Repeated, this is
the continuation of ``lminima.critical.outcomes`` for kinked models, where
LM, its model broken at every kink it crosses, crawls.

Example:
  >>> import jax, numpy as np
  >>> from lminima.core.models import MLP
  >>> from lminima.core.problem import Problem
  >>> # One relu unit with zero weights sits on its kink on every sample, and
  >>> # turning it on lowers the loss: not a minimum.
  >>> model = MLP(d_in=1, widths=(1,), d_out=1, activation="relu")
  >>> x = np.linspace(-1, 1, 6)[:, None]
  >>> variables = jax.tree_util.tree_map(np.zeros_like, model.init_params(
  ...     jax.random.PRNGKey(0), np.float64))
  >>> problem = Problem.for_module(model, variables, x, np.abs(x))
  >>> decide_kink(problem).verdict
  'descends'
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
import numpy as np
import scipy.optimize

from lminima.core.problem import Problem
from lminima.core.tolerances import DEFAULT, LOSS_ROUNDOFF_RTOL, Tolerances
from lminima.critical import certify, pieces, refinement
from lminima.critical.refinement import serial_blas

VERDICTS = ("kink_min", "descends", "undecided", "differentiable")

MAX_SIDES = 256
"""The most sides enumerated one by one (``decide_kink``'s default)."""

_DESCENT_SIDES = 3  # sides followed, largest residual first
_SEGMENT_HALVINGS = 30
_CONSTRAINT_ROUNDS = 8
_CORRECTIONS = 5
_MAX_TRIALS = 40
_DESCENT_ITERS = 300
_STALL_STEPS = 10
_STALL_FRACTION = 1e-2
_POLISH_STEPS = 5
_SAMPLED_PROBES = 8
# Kinks make small basins: a perturbed start at the probe's radius may lie in
# a neighbouring one. The certificate's probe_starts, times this, explore them.
_KINK_PROBE_STARTS = 8
_START_MOVES = 20  # region moves of the descent from one perturbed start


@dataclasses.dataclass(frozen=True)
class KinkDecision:
  """What the kink analysis found at a point (module docstring).

  Attributes:
    verdict: one of ``VERDICTS``.
    reason: one line saying why.
    n_kinks: |K|, the kinked arguments within ``kink_tol`` of 0.
    n_sides: sides examined.
    all_sides: whether those were all ``2^|K|``.
    residual_max: the largest first-order residual ``||r||`` over them.
    residual_tol: the criticality tolerance it is compared with.
    decrease: the largest relative decrease of L found.
    loss: L at ``params``.
    params: the lowest point found (theta_0 when nothing went lower).
  """
  verdict: str
  reason: str
  n_kinks: int
  n_sides: int
  all_sides: bool
  residual_max: float
  residual_tol: float
  decrease: float
  loss: float
  params: Any

  def to_dict(self) -> dict[str, Any]:
    """The ``kink_*`` fields of a sweep row."""
    return {"kink_verdict": self.verdict, "kink_n": self.n_kinks,
            "kink_sides": self.n_sides, "kink_all_sides": self.all_sides,
            "kink_residual_max": self.residual_max,
            "kink_residual_tol": self.residual_tol,
            "kink_decrease": self.decrease}


def _lowest_on_segment(problem: Problem, end: np.ndarray
                       ) -> tuple[np.ndarray, float]:
  """The lowest true L on ``theta_0 + 2^-j (end - theta_0)``, j >= 0."""
  start = np.asarray(problem.flat)
  best, best_loss = start, problem.loss
  for j in range(_SEGMENT_HALVINGS):
    candidate = start + 0.5 ** j * (end - start)
    loss = problem.loss_and_grad_at(candidate)[0]
    if loss < best_loss:
      best, best_loss = candidate, loss
  return best, best_loss


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


def _piece_descent(side: pieces.Side, tol: Tolerances) -> np.ndarray:
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
  again), then the Newton polish of the KKT conditions (``_polish``)."""
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
  return _polish(side, flat, tol)


def _first_order_residual(side: pieces.Side, flat: np.ndarray,
                          tol: Tolerances) -> float:
  """``||g_s - sum_k mu_k n_k||`` at ``flat``, over the arguments within
  ``kink_tol`` of their kink, ``mu >= 0`` by nonnegative least squares."""
  near = np.abs(side.values(flat)) <= tol.kink_tol
  normals = side.normals(flat, near)
  grad = side.piece.loss_and_grad_at(flat)[1]
  if not len(normals):
    return float(np.linalg.norm(grad))
  return float(scipy.optimize.nnls(normals.T, grad)[1])


def _constrained_trial(side: pieces.Side, flat: np.ndarray,
                       values: np.ndarray, active: np.ndarray,
                       grad: np.ndarray, lam: np.ndarray, vecs: np.ndarray,
                       mu: float, tol: Tolerances
                       ) -> tuple[np.ndarray | None, float, np.ndarray]:
  """One trial of ``_piece_descent``: the point in the side's region (or
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


def _side_descent(problem: Problem, side: pieces.Side, tol: Tolerances
                  ) -> tuple[np.ndarray, np.ndarray, float]:
  """The descent's end on a side that is not stationary
  (``_piece_descent``), and the lowest true L on the segment to it."""
  end = _piece_descent(side, tol)
  return (end, *_lowest_on_segment(problem, end))


def _polish(side: pieces.Side, flat: np.ndarray, tol: Tolerances) -> np.ndarray:
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
    multipliers = (scipy.optimize.nnls(jacobian.T, grad)[0]
                   if near.any() else np.zeros(0))
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


def decide_kink(problem: Problem, *, tol: Tolerances | None = None,
                max_sides: int = MAX_SIDES, lm_max_params: int = 5000
                ) -> KinkDecision:
  """Decides a point on kinks (module docstring).

  Args:
    problem: the objective at a point, of a module that gives its pieces
      (``pieces.supports_kinks``).
    tol: the shared tolerances (``lminima.core.tolerances.DEFAULT``).
    max_sides: the most sides examined; with more, a sample.
    lm_max_params: the descent probe's LM bound (``certify.descent_probe``).

  Returns:
    A ``KinkDecision``.

  Raises:
    ValueError: the module gives no pieces, or ``max_sides < 2``.
  """
  tol = DEFAULT if tol is None else tol
  if not pieces.supports_kinks(problem):
    raise ValueError("decide_kink: the module gives no smooth pieces "
                     "(kink_slopes, piece, piece_kink_inputs; see "
                     "lminima.core.models)")
  if max_sides < 2:
    raise ValueError(f"decide_kink: need max_sides >= 2, got {max_sides}")
  return _decide(problem, tol, max_sides, lm_max_params, polished=False)


def _examine(problem: Problem, base: np.ndarray, mask: np.ndarray,
             max_sides: int, residual_tol: float
             ) -> tuple[pieces.Structure | None, list[pieces.Side], dict[str, Any]]:
  """The first-order test of the sides: every side at once where the
  structure allows it, else each of them (or a sample), stopping once
  ``_DESCENT_SIDES`` have a way down. Returns the structure (or None), the
  sides examined (largest residual first) and the decision's facts."""
  bit_vectors, all_sides = pieces.sides_to_examine(mask, max_sides)
  structure = (None if all_sides
               else pieces.sample_structure(problem, base, mask, residual_tol))
  if structure is not None:
    worst = structure.worst_side
    if ((structure.strict and structure.bound <= residual_tol)
        or worst.residual > residual_tol):
      # All stationary, or the worst side has a way down and is followed.
      return structure, [worst], dict(
          n_kinks=int(mask.sum()), n_sides=2 ** int(mask.sum()),
          all_sides=True, residual_max=max(structure.bound, worst.residual),
          residual_tol=residual_tol)
  sides = []
  for bits in bit_vectors:
    sides.append(pieces.side_at(problem, base, mask, bits))
    if sum(s.residual > residual_tol for s in sides) >= _DESCENT_SIDES:
      all_sides = False
      break
  sides.sort(key=lambda s: -s.residual)
  return None, sides, dict(
      n_kinks=int(mask.sum()), n_sides=len(sides), all_sides=all_sides,
      residual_max=sides[0].residual, residual_tol=residual_tol)


def _kinks_at(problem: Problem, tol: Tolerances
              ) -> tuple[np.ndarray, np.ndarray, float]:
  """The arguments at their kink (m, k), every argument's slope on its own
  side, and the criticality tolerance of the first-order residuals."""
  z = problem.kink_inputs().reshape(problem.m, -1)
  below_slope, above_slope = problem.module.kink_slopes
  return (np.abs(z) <= tol.kink_tol, np.where(z > 0, above_slope, below_slope),
          float(tol.grad_tolerance(problem.loss,
                                   refinement.curvature_estimate(problem),
                                   problem.reference_loss)))


def _region_descent(problem: Problem, start: np.ndarray, tol: Tolerances,
                    max_sides: int) -> np.ndarray:
  """Descent on L from ``start`` region by region, as the continuation
  moves: along the side with the largest first-order residual, at
  most ``_START_MOVES`` times, until every side examined is stationary or a
  move gains no more than roundoff. L-BFGS-B on L stalls on the first kink
  it meets, a few 1e-6 above the lowest point nearby."""
  point = problem.at(problem.unravel(jnp.asarray(start)))
  for _ in range(_START_MOVES):
    mask, base, residual_tol = _kinks_at(point, tol)
    sides = _examine(point, base, mask, max_sides, residual_tol)[1]
    if sides[0].residual <= residual_tol:
      break
    end, value = _side_descent(point, sides[0], tol)[1:]
    if not value < point.loss * (1 - LOSS_ROUNDOFF_RTOL):
      break
    point = point.at(point.unravel(jnp.asarray(end)))
  return np.asarray(point.flat)


def _descent_from_starts(problem: Problem, tol: Tolerances, max_sides: int
                         ) -> tuple[np.ndarray, float]:
  """The lowest point, and its L, of the region-by-region descents from the
  probe's perturbed starts (``_KINK_PROBE_STARTS`` times as many), stopping
  at the first that goes lower than ``descent_rtol``."""
  best, best_loss = np.asarray(problem.flat), problem.loss
  for start in certify.probe_starts(
      problem, tol, _KINK_PROBE_STARTS * tol.probe_starts)[1:]:
    end = _region_descent(problem, start, tol, max_sides)
    value = problem.loss_and_grad_at(end)[0]
    if value < best_loss:
      best, best_loss = end, value
    if tol.relative_decrease(problem.loss, best_loss,
                             problem.reference_loss) > tol.descent_rtol:
      break
  return best, best_loss


def _decide(problem: Problem, tol: Tolerances, max_sides: int,
            lm_max_params: int, *, polished: bool) -> KinkDecision:
  mask, base, residual_tol = _kinks_at(problem, tol)
  loss, ref_loss = problem.loss, problem.reference_loss
  structure, sides, facts = _examine(problem, base, mask, max_sides,
                                     residual_tol)
  stationary = facts["residual_max"] <= residual_tol
  if stationary and not mask.any():
    # The smooth certificate's probe does not cross kinks: a plateau of
    # dead units next to a kink that leads down passes it.
    best, best_loss = (
        (problem.flat, loss) if tol.is_zero_loss(loss, ref_loss)
        else _descent_from_starts(problem, tol, max_sides))
    decrease = tol.relative_decrease(loss, best_loss, ref_loss)
    if decrease > tol.descent_rtol:
      return KinkDecision(
          verdict="descends", reason=f"on no kink and stationary, but descent "
          f"from a perturbed start went lower by {decrease:.1e}",
          decrease=decrease, loss=float(best_loss),
          params=problem.unravel(jnp.asarray(best)), **facts)
    return KinkDecision(
        verdict="differentiable", reason=f"on no kink, ||g|| "
        f"{sides[0].residual:.1e} <= {residual_tol:.1e}, and descent from "
        f"{_KINK_PROBE_STARTS * tol.probe_starts - 1} perturbed starts found "
        f"no lower value", decrease=decrease, loss=loss,
        params=problem.params, **facts)
  at_zero = stationary and tol.is_zero_loss(loss, ref_loss)
  # A sample of sides cannot make a kink_min: a few probes look for a way
  # down there, not all of them.
  followed = ([] if at_zero or (stationary and structure is not None)
              else sides if stationary and facts["all_sides"]
              else sides[:_SAMPLED_PROBES] if stationary
              else [s for s in sides if s.residual > residual_tol])
  best, best_loss, how = np.asarray(problem.flat), loss, "a side"
  curvature = None
  if stationary and structure is not None and not at_zero:
    # Strictly complementary on every side: only the manifold where every
    # kinked argument stays at 0 (where all pieces agree) can lead down.
    curvature = pieces.manifold_curvature(sides[0], structure.tangent, tol)
    if curvature[0] < -curvature[1]:
      radius = tol.probe_radius_rtol * max(1.0, float(np.linalg.norm(best)))
      for sign in (1.0, -1.0):
        point, value = _lowest_on_segment(
            problem, best + sign * radius * curvature[2])
        if value < best_loss:
          best, best_loss, how = point, value, "negative curvature"
  ends = []
  for side in followed:
    if stationary:
      point, value = _lowest_on_segment(problem, np.asarray(problem.at(
          certify.descent_probe(side.piece, tol, lm_max_params).params).flat))
    else:
      end, point, value = _side_descent(problem, side, tol)
      ends.append(end)
    if value < best_loss:
      best, best_loss = point, value
    if tol.relative_decrease(loss, best_loss, ref_loss) > tol.descent_rtol:
      break
  if stationary and not at_zero and tol.relative_decrease(
      loss, best_loss, ref_loss) <= tol.descent_rtol:
    # Across all sides at once, as the certificate's probe does off kinks:
    # descent on L itself from the probe's perturbed starts.
    end, value = _descent_from_starts(problem, tol, max_sides)
    if value < best_loss:
      best, best_loss, how = end, value, "descent from a perturbed start"
  decrease = tol.relative_decrease(loss, best_loss, ref_loss)
  if not stationary and decrease <= LOSS_ROUNDOFF_RTOL and not polished:
    # Residuals of a few tolerances, with descent at roundoff: the descent
    # and the polish met the first-order conditions at a point as low as
    # this one (up to roundoff); it is decided instead, once.
    end = ends[0] if ends else best
    if problem.loss_and_grad_at(end)[0] <= loss * (1 + LOSS_ROUNDOFF_RTOL):
      return _decide(problem.at(problem.unravel(jnp.asarray(end))), tol,
                     max_sides, lm_max_params, polished=True)
  sides_text = (f"{facts['n_sides']} sides of {facts['n_kinks']} kinks"
                + ("" if facts["all_sides"] else " (a sample)"))
  # A side not stationary is followed on any decrease above roundoff (the
  # continuation's progress); a stationary one needs descent_rtol, the
  # certificate's refutation of a minimum.
  if decrease > (tol.descent_rtol if stationary else LOSS_ROUNDOFF_RTOL):
    verdict, reason = "descends", (
        f"{how} went lower by {decrease:.1e} ({facts['n_kinks']} kinks, "
        f"first-order residual {sides[0].residual:.1e}, tolerance "
        f"{residual_tol:.1e})")
  elif curvature is not None and curvature[0] < -curvature[1]:
    verdict, reason = "undecided", (
        f"all {facts['n_sides']} sides of {facts['n_kinks']} kinks are "
        f"first-order stationary, but the Hessian on the kinks' manifold has "
        f"lambda_min {curvature[0]:.1e} < -{curvature[1]:.1e} and no lower "
        f"value was found along it")
  elif stationary and facts["all_sides"]:
    starts = (f"region-by-region descent from "
              f"{_KINK_PROBE_STARTS * tol.probe_starts - 1} perturbed starts")
    verdict, reason = "kink_min", (
        f"all {sides_text} are first-order stationary (residual <= "
        f"{facts['residual_max']:.1e}, tolerance {residual_tol:.1e}"
        + (", bounded over every side, every multiplier positive"
           if structure is not None else "") + ") and "
        + ("L is zero (up to rounding)" if at_zero else
           f"the Hessian on the kinks' manifold has lambda_min "
           f"{curvature[0]:.1e} >= -{curvature[1]:.1e}, and {starts} found "
           f"no lower value (relative decrease {decrease:.1e})"
           if structure is not None else
           f"neither the descent probe on each nor {starts} found a lower "
           f"value (relative decrease {decrease:.1e})"))
  elif stationary:
    verdict, reason = "undecided", (
        f"{sides_text}: all first-order stationary and no way down found "
        f"by the probe on {len(followed)}, but not every side was examined")
  else:
    verdict, reason = "undecided", (
        f"a side is not first-order stationary (residual "
        f"{sides[0].residual:.1e} > {residual_tol:.1e}) but descent along it "
        f"lowered L by only {decrease:.1e}, roundoff")
  return KinkDecision(verdict=verdict, reason=reason, decrease=decrease,
                      loss=float(best_loss),
                      params=problem.unravel(jnp.asarray(best)), **facts)
