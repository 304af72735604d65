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
  from power iteration); each side, or all at once where each sample's
  kinks have normals independent of the other samples' (``pieces.Structure``),
  or beyond ``max_sides`` without that structure a sample, which can find a
  way down but decides nothing else.
* Descent: the sides with the largest residuals are followed by
  sequential quadratic programming on L_s subject to ``s_k z_k >= 0``
  (``lminima.critical.side_descent``: LM steps under the linearized kinks,
  each a nonnegative least-squares problem), which slides along the kinks
  where LM stalls, then a Newton polish of the KKT conditions.
* Second order, where every side is first-order stationary: with the
  structure, the Lagrangian's Hessian on the critical subspaces
  (``pieces.critical_sides``: where the kinks with a positive multiplier
  stay at 0), its negative directions followed; else the certificate's
  descent probe (``certify.descent_probe``) on each enumerated side's
  piece. Then descent on L itself from perturbed starts at
  the probe's radius (``certify.probe_starts``, 8 times as many: kinks make
  small basins), region by region as the continuation moves, which crosses
  the kinks where L-BFGS-B stalls on the first one it meets.

Every end point counts only by the true L, at its lowest on the segment from
theta_0 (a piece's minimizer may lie outside its region). Verdicts:

* ``descends``: a side went lower by more than ``descent_rtol`` (relative),
  or, where one is not first-order stationary, by more than roundoff; the
  point is returned, and the continuation goes on from it;
* ``kink_min``: every side (enumerated, or bounded at once) is first-order
  stationary, or stationary to L's precision (a side above the tolerance
  whose descent gained only roundoff, at the point and again at the
  descent's polished end), and the probes found nothing lower than
  ``descent_rtol`` (no probe where L is zero up to rounding, the global
  minimum value): a nonsmooth local minimum, with that evidence;
* ``undecided``: otherwise (a sample of sides found no way down, also after
  one polish of the point on the worst of them; negative curvature on a
  critical subspace without a lower value along it; or, off kinks, a
  region not stationary whose descent gained no more than roundoff, twice);
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

from lminima.core.problem import Problem
from lminima.core.tolerances import DEFAULT, LOSS_ROUNDOFF_RTOL, Tolerances
from lminima.critical import certify, pieces, refinement, side_descent

VERDICTS = ("kink_min", "descends", "undecided", "differentiable")

MAX_SIDES = 256
"""The most sides enumerated one by one (``decide_kink``'s default)."""

_DESCENT_SIDES = 3  # sides followed, largest residual first
_SEGMENT_HALVINGS = 30
_SAMPLED_PROBES = 8
# Kinks make small basins: a perturbed start at the probe's radius may lie in
# a neighbouring one. The certificate's probe_starts, times this, explore them.
_KINK_PROBE_STARTS = 8
_START_MOVES = 20  # region moves of the descent from one perturbed start
# Sides whose critical subspaces are checked at second order where zero
# multipliers combine (pieces.critical_sides); beyond, sides are sampled.
_MAX_CRITICAL_SIDES = 32


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


def _side_descent(problem: Problem, side: pieces.Side, tol: Tolerances
                  ) -> tuple[np.ndarray, np.ndarray, float]:
  """The descent's end on a side that is not stationary
  (``side_descent.descend``), and the lowest true L on the segment to it."""
  end = side_descent.descend(side, tol)
  return (end, *_lowest_on_segment(problem, end))


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
    if ((structure.bound <= residual_tol and not structure.degenerate
         and pieces.critical_sides(structure, _MAX_CRITICAL_SIDES) is not None)
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


def _decided_at(problem: Problem, end: np.ndarray, tol: Tolerances,
                max_sides: int, lm_max_params: int, *, at_noise: bool
                ) -> KinkDecision | None:
  """The decision at ``end``, a polished point, where L there is no higher
  than at the problem's point up to roundoff; else None."""
  if not problem.loss_and_grad_at(end)[0] <= problem.loss * (
      1 + LOSS_ROUNDOFF_RTOL):
    return None
  return _decide(problem.at(problem.unravel(jnp.asarray(end))), tol,
                 max_sides, lm_max_params, polished=True, at_noise=at_noise)


def _decide(problem: Problem, tol: Tolerances, max_sides: int,
            lm_max_params: int, *, polished: bool, at_noise: bool = False
            ) -> KinkDecision:
  mask, base, residual_tol = _kinks_at(problem, tol)
  loss, ref_loss = problem.loss, problem.reference_loss
  structure, sides, facts = _examine(problem, base, mask, max_sides,
                                     residual_tol)
  stationary = facts["residual_max"] <= residual_tol or (
      at_noise and mask.any())
  if stationary and not facts["all_sides"] and not polished:
    # A sample of sides, all stationary: the structure's bound, a sum of
    # the samples' residuals, can exceed the tolerance where each is
    # roundoff and the arguments lie up to kink_tol from 0. Decided instead
    # at the point polished on the worst side (its kinks at 0), once.
    end = side_descent.polish(sides[0], np.asarray(problem.flat), tol)
    decision = (None if np.array_equal(end, problem.flat) else _decided_at(
        problem, end, tol, max_sides, lm_max_params, at_noise=False))
    if decision is not None:
      return decision
  critical = (pieces.critical_sides(structure, _MAX_CRITICAL_SIDES)
              if structure is not None and not structure.degenerate else None)
  if stationary and structure is not None and critical is None:
    # Stationary to L's precision, where the structure bounds the sides'
    # residuals but cannot cover their second order: a sample.
    structure, facts["all_sides"] = None, False
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
  curvature, n_critical = None, 0
  if stationary and structure is not None and not at_zero:
    # Every side stationary: a way down keeps the kinks with a positive
    # multiplier at 0 to second order (pieces.critical_sides).
    curvatures = []
    for bits, free in critical:
      free_args = np.zeros_like(mask)
      free_args[mask] = free  # bits run in the order of np.nonzero(mask)
      side = (sides[0] if np.array_equal(bits, structure.worst)
              else pieces.side_at(problem, base, mask, bits))
      curvatures.append(pieces.critical_curvature(side, free_args, tol))
    n_critical = len(curvatures)
    curvature = min(curvatures, key=lambda c: c[0] + c[1])
    radius = tol.probe_radius_rtol * max(1.0, float(np.linalg.norm(best)))
    for lam, eig_tol, direction in curvatures:
      for sign in ((1.0, -1.0) if lam < -eig_tol else ()):
        point, value = _lowest_on_segment(problem, best + sign * radius
                                          * direction)
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
  if not stationary and decrease <= LOSS_ROUNDOFF_RTOL and not at_noise:
    # Residuals above the tolerance, with descent at roundoff. The descent
    # and the polish may have met the first-order conditions at a point as
    # low as this one (up to roundoff): decided there instead. Where the
    # same happens there, no step lowers L beyond its roundoff: the point
    # is stationary to L's precision, and decided as a stationary one.
    decision = _decided_at(problem, ends[0] if ends else best, tol,
                           max_sides, lm_max_params, at_noise=polished)
    if decision is not None:
      return decision
  sides_text = (f"{facts['n_sides']} sides of {facts['n_kinks']} kinks"
                + ("" if facts["all_sides"] else " (a sample)"))
  first_order = (
      f"first-order stationary (residual <= {facts['residual_max']:.1e}, "
      f"tolerance {residual_tol:.1e}" if not at_noise else
      f"stationary to L's precision (residual <= "
      f"{facts['residual_max']:.1e}, above the tolerance {residual_tol:.1e}, "
      f"but descent along the worst side gained only roundoff, twice")
  where = (f"the critical subspaces of {n_critical} sides (some multipliers "
           f"zero)" if structure is not None and structure.zero_multipliers
           else "the kinks' manifold")
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
        f"{first_order}), but the Lagrangian's Hessian on {where} "
        f"has lambda_min {curvature[0]:.1e} < -{curvature[1]:.1e} and no lower "
        f"value was found along it")
  elif stationary and facts["all_sides"]:
    starts = (f"region-by-region descent from "
              f"{_KINK_PROBE_STARTS * tol.probe_starts - 1} perturbed starts")
    verdict, reason = "kink_min", (
        f"all {sides_text} are {first_order}"
        + (", bounded over every side" if structure is not None else "")
        + ") and "
        + ("L is zero (up to rounding)" if at_zero else
           f"the Lagrangian's Hessian on {where} has lambda_min "
           f"{curvature[0]:.1e} >= -{curvature[1]:.1e}, and {starts} found "
           f"no lower value (relative decrease {decrease:.1e})"
           if structure is not None else
           f"neither the descent probe on each nor {starts} found a lower "
           f"value (relative decrease {decrease:.1e})"))
  elif stationary:
    verdict, reason = "undecided", (
        f"{sides_text}: all {first_order}) and no way down found "
        f"by the probe on {len(followed)}, but not every side was examined")
  else:
    verdict, reason = "undecided", (
        f"a side is not first-order stationary (residual "
        f"{sides[0].residual:.1e} > {residual_tol:.1e}) but descent along it "
        f"lowered L by only {decrease:.1e}, roundoff")
  return KinkDecision(verdict=verdict, reason=reason, decrease=decrease,
                      loss=float(best_loss),
                      params=problem.unravel(jnp.asarray(best)), **facts)
