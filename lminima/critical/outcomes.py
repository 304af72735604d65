"""One outcome per member, decided once: refine, certify, continue.

``decide_member(problem)`` is what the sweep does with every trained member
that did not diverge (docs/theory.md#escape-to-infinity):

1. Refine (``lminima.refine``, with the escape stop) to the shared
   criticality test of ``lminima.core.tolerances``.
2. If refinement converged, certify there (``lminima.certificate``, with its
   second-order proof or descent probe). ``local_min``, ``saddle`` and
   ``non_differentiable`` are outcomes (the last only for models that give no
   smooth pieces). For those, a ``local_min`` stands only where the kink
   decision's descent from perturbed starts, which crosses kinks as the
   certificate's probe does not, finds nothing lower. A ``not_minimum``
   point (the probe went lower), a point on a kink, or a point that did not
   converge is continued:
3. The continuation: Levenberg-Marquardt without the escape stop and
   without the gradient stop (the probe's lesson: a small gradient can
   mislead) for up to ``fate_iters`` iterations from where step 2 left off
   (the probe's lowest point). For models that give their smooth pieces
   (relu and leaky_relu MLPs), where LM's model breaks at every kink it
   crosses, the continuation moves region by region instead
   (``lminima.critical.kinks``): from a point on kinks along a side that
   goes lower, from a point off them by descent over its region, each move one
   iteration of the budget, until the kink decision decides a point or
   finds it stationary off kinks, where LM and the certificate take over;
   where that certificate's probe goes lower (``not_minimum``), it moves on
   from the probe's point, one more iteration.
   It ends in exactly one of
   * the certificate's verdict where LM stopped because no step went lower,
     when that is ``local_min``, ``saddle`` or ``non_differentiable``;
   * ``kink_min``: on a kink, no side of it goes lower (a nonsmooth local
     minimum, with the kink decision's evidence);
   * ``escaping``: along the whole path (refinement, then continuation) L
     never rose (beyond roundoff) while ``||theta||`` grew by
     ``tol.growth`` (for MLPs with positively homogeneous units, whose
     rescalings leave L unchanged, the balanced norm of
     ``lminima.core.rescaling``, the least on the point's rescaling orbit):
     L decreases along a path to infinity. Its limit
     ``L_inf`` is bracketed above by the last value reached
     (``fate_loss``); ``fate_asymptotic_loss`` is an extrapolation of
     ``L = L_inf + s / ||theta||`` over the second half of the path, labelled
     as such, not a bound. Also ``escaping``: a path along which L never
     rose and whose end is a slow escape (``escape.gap_tracking``: ``||g||``
     proportional to ``L - L_inf`` while the gap falls by orders of
     magnitude, which no path converging to a critical point of an analytic
     loss shows); refinement and continuation stop as soon as that is seen
     (``refine``'s ``stop_when``), and a ``local_min`` found only by the
     probe on such a path is not accepted. A member whose L tends to 0
     this way is escaping, never a local minimum and never zero-loss; one
     whose path ends at a certified minimum (``local_min``, ``kink_min``)
     at finite loss is that minimum, however far the path went;
   * ``undecided``, with the reason (the norm grew too little, the loss rose,
     LM stopped where the certificate decided nothing, or the kink decision
     decided nothing).

Verdict and outcome cannot disagree: the outcome is the verdict of the point
the member's row records whenever a certificate decided it.

Example:
  >>> import jax, numpy as np
  >>> from lminima import Problem
  >>> # One tanh unit fitting the sign of x: the loss decreases forever as the
  >>> # weight grows (the infimum is approached only at infinity).
  >>> x = np.linspace(-1, 1, 8)[:, None]; y = np.sign(x)
  >>> problem = Problem(lambda p, x: jax.numpy.tanh(x @ p["w"]),
  ...                   {"w": np.ones((1, 1))}, x, y)
  >>> decision = decide_member(problem, max_iters=20, fate_iters=60)
  >>> decision.outcome, decision.param_norm_end > 2 * decision.param_norm_start
  ('escaping', True)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from lminima.core.models import MLP
from lminima.core.problem import Problem
from lminima.core.tolerances import DEFAULT, Tolerances
from lminima.critical import certify, escape, kinks, pieces
from lminima.critical.refinement import RefineResult, refine

OUTCOMES = ("local_min", "kink_min", "saddle", "non_differentiable",
            "escaping", "undecided", "diverged", "failed")
"""Every member's outcome, in the report's order (``diverged`` and
``failed`` are the sweep's: training diverged, or the analysis raised)."""

DECIDED_BY_CERTIFICATE = ("local_min", "saddle", "non_differentiable")



@dataclasses.dataclass(frozen=True)
class Decision:
  """The outcome of one member.

  Attributes:
    outcome: one of ``OUTCOMES`` (not ``diverged`` / ``failed``).
    reason: one line saying what decided it.
    params: the member's final point (float64): the certified one, or where
      the continuation stopped.
    refined: the refinement's result.
    certificate: the certificate that decided the outcome (or the last one
      taken), else None.
    continued: whether the continuation ran.
    iters: iterations along the path (refinement and continuation).
    loss_start, loss_end: L at the path's start (the trained point) and end.
    param_norm_start, param_norm_end: ``||theta||`` there.
    grad_norm_end: ``||g||`` at the end.
    loss_monotone: L never rose (beyond roundoff) along the path.
    asymptotic_loss: for ``escaping``, the extrapolated L_inf (not a bound).
    max_abs_preactivation_start, max_abs_preactivation_end: the largest
      hidden |Z| over samples at both ends (MLPs only, else None).
    kink: the last kink decision of the continuation
      (``lminima.critical.kinks``), else None.
  """
  outcome: str
  reason: str
  params: Any
  refined: RefineResult
  certificate: certify.Certificate | None
  continued: bool
  iters: int
  loss_start: float
  loss_end: float
  param_norm_start: float
  param_norm_end: float
  grad_norm_end: float
  loss_monotone: bool
  asymptotic_loss: float | None
  max_abs_preactivation_start: float | None
  max_abs_preactivation_end: float | None
  kink: kinks.KinkDecision | None = None

  def to_row(self) -> dict[str, Any]:
    """The row fields of the sweep (``lminima.study.records.ROW_FIELDS``)."""
    row = {"outcome": self.outcome, "outcome_reason": self.reason,
           "refine_iters": self.refined.iters,
           "refine_stop_reason": self.refined.stop_reason,
           "refine_method": self.refined.method,
           "param_norm_start": self.refined.param_norm_start}
    if self.continued:
      row.update(fate_iters=self.iters, fate_loss=self.loss_end,
                 fate_param_norm=self.param_norm_end,
                 fate_grad_norm=self.grad_norm_end,
                 fate_asymptotic_loss=self.asymptotic_loss,
                 fate_max_abs_preactivation=[
                     self.max_abs_preactivation_start,
                     self.max_abs_preactivation_end])
    if self.kink is not None:
      row.update(self.kink.to_dict())
    if self.outcome in DECIDED_BY_CERTIFICATE:
      row.update(self.certificate.to_dict())
      row["cert_method"] = row.pop("method")
      for key in ("loss", "grad_norm", "n_params"):
        row.pop(key)  # the row's refined values, recorded by the sweep
    return row


def _max_abs_preactivation(problem: Problem, params: Any) -> float | None:
  if not isinstance(problem.module, MLP) or not problem.module.widths:
    return None
  _, pre, _ = problem.module.apply(params, problem.x, method="forward")
  return float(max(np.max(np.abs(np.asarray(z))) for z in pre))


def decide_member(problem: Problem, *, tol: Tolerances | None = None,
                  method: str = "auto", max_iters: int = 200,
                  fate_iters: int = 200, dense_max_params: int = 3000,
                  lm_max_params: int = 5000, key: jax.Array | None = None
                  ) -> Decision:
  """Refines, certifies and, where needed, continues one member.

  Args:
    problem: the member's problem at its trained point.
    tol: the shared tolerances (``lminima.core.tolerances.DEFAULT``).
    method: refinement method (``lminima.refine``).
    max_iters: refinement iterations.
    fate_iters: continuation iterations (0: no continuation; a member not
      decided by its certificate is then ``undecided``).
    dense_max_params, lm_max_params, key: as in ``lminima.certificate``.

  Returns:
    A ``Decision``.

  Raises:
    ValueError: on ``fate_iters < 0``.
  """
  if fate_iters < 0:
    raise ValueError(f"decide_member: need fate_iters >= 0, got {fate_iters}")
  tol = DEFAULT if tol is None else tol
  cert_options = dict(tol=tol, dense_max_params=dense_max_params,
                      lm_max_params=lm_max_params, key=key)
  kinked = pieces.supports_kinks(problem)
  # A path that ends in a slow escape stops there (checked every
  # refinement.STOP_WHEN_EVERY iterations); the test asks for an analytic
  # loss: not for kinked models.
  refined = refine(problem, method=method, tol=tol, max_iters=max_iters,
                   lm_max_params=lm_max_params,
                   stop_when=None if kinked else _slow_escape_test((), tol))
  escaped = refined.stop_reason == "stop_when"
  start = problem.at(refined.params)
  cert, moved = None, ""
  if refined.converged:
    cert = certify.certificate(start, **cert_options)
    on_escape = (not kinked and _probe_only_minimum(cert)
                 and escape.gap_tracking(
                     refined.loss_history, refined.grad_norm_history,
                     refined.param_norm_history, tol) is not None)
    if on_escape:
      moved = "; the refinement's path is a slow escape"
    if cert.verdict == "local_min" and kinked:
      # The certificate's probe does not cross kinks; the kink decision's
      # descent from perturbed starts does.
      kink = kinks.decide_kink(start, tol=tol, lm_max_params=lm_max_params)
      if kink.verdict == "differentiable":
        return _decided(cert, refined, start, continued=False)
      start = start.at(kink.params)
      moved = f"; the kink decision: {kink.reason}"
    elif cert.verdict in DECIDED_BY_CERTIFICATE and not on_escape and not (
        cert.verdict == "non_differentiable" and kinked):
      return _decided(cert, refined, start, continued=False)
    elif cert.probe is not None:  # went lower: continue from there
      start = start.at(cert.probe.params)
  what = (f"refinement stopped ({refined.stop_reason})" if cert is None
          else f"the certificate found {cert.verdict}{moved}")
  if not fate_iters and not escaped:
    return _at_point("undecided", f"{what}; no continuation (fate_iters=0)",
                     refined, cert, start)
  if start.n_params > lm_max_params and not escaped:
    return _at_point("undecided", f"{what}; the continuation needs the dense "
                     f"Hessian (n_params {start.n_params} > lm_max_params "
                     f"{lm_max_params})", refined, cert, start)
  # The path from the trained point: refinement, then the continuation. For
  # models with kinks it moves region by region (lminima.critical.kinks),
  # and LM takes over where no kink is near.
  losses, grads, norms = (list(refined.loss_history),
                          list(refined.grad_norm_history),
                          list(refined.param_norm_history))
  iters, kink, end, end_cert = refined.iters, None, start, None
  settled, budget_end = False, refined.iters + fate_iters
  while not escaped:
    if kinked and iters < budget_end:
      kink = kinks.decide_kink(end, tol=tol, lm_max_params=lm_max_params)
      if kink.verdict == "descends":
        end, kink = end.at(kink.params), None
        _extend(losses, grads, norms, end)
        iters += 1
        continue
      if kink.verdict != "differentiable":
        settled = True
        break
      # Stationary off kinks (perhaps after a polish): LM and the
      # certificate decide; the decision counts as an iteration, so the
      # budget ends every loop.
      end, kink = end.at(kink.params), None
      iters += 1
    run = refine(end, method="lm", tol=tol, stop_on_grad=False,
                 max_iters=max(budget_end - iters, 0), escape_ratio=None,
                 lm_max_params=lm_max_params, stop_when=None if kinked else
                 _slow_escape_test((losses, grads, norms), tol))
    losses += run.loss_history[1:]
    grads += run.grad_norm_history[1:]
    norms += run.param_norm_history[1:]
    iters += run.iters
    end = end.at(run.params)
    settled = run.stop_reason in ("stalled", "grad_tol")
    if not (kinked and settled and iters < budget_end):
      break
    if not pieces.on_kink(end, tol):
      end_cert = certify.certificate(end, **cert_options)
      if end_cert.verdict != "not_minimum":
        break
      # The probe went lower: on from there.
      end, end_cert = end.at(end_cert.probe.params), None
      _extend(losses, grads, norms, end)
      iters += 1
  losses, norms = np.asarray(losses), np.asarray(norms)
  rises = escape.rises(losses)
  monotone = not bool(np.any(rises))
  size, ratio = escape.growth(problem, end)
  evidence = dict(refined=refined, iters=iters, losses=losses, norms=norms,
                  monotone=monotone, begin=problem,
                  end=end, kink=kink)
  # The slow escape's test asks for an analytic loss: not for kinked models.
  tracking = None if kinked else escape.slow_escape(losses, grads, norms,
                                                     tol)
  escaping = monotone and (ratio >= tol.growth or tracking is not None)
  # A kink minimum at finite loss is a minimum however far the path went;
  # at zero loss far out, an escape (as below).
  if kink is not None and kink.verdict == "kink_min" and not (
      escaping and tol.is_zero_loss(kink.loss, end.reference_loss)):
    return _continued("kink_min", f"after the continuation: {kink.reason}",
                      cert=cert, asymptotic=None, **evidence)
  if settled and kink is None:  # no LM step goes lower: certify there
    cert = end_cert or certify.certificate(end, **cert_options)
    # L reaching rounding on a path to infinity is an escape, not a minimum.
    at_zero_far_out = escaping and tol.is_zero_loss(cert.loss,
                                                    end.reference_loss)
    on_escape = tracking is not None and _probe_only_minimum(cert)
    if (cert.verdict in DECIDED_BY_CERTIFICATE and not at_zero_far_out
        and not on_escape):
      return _decided(cert, refined, end, continued=True, **{
          k: v for k, v in evidence.items()
          if k not in ("refined", "end", "kink")})
  if escaping and ratio >= tol.growth:
    asymptotic = escape.asymptotic_loss(losses, norms)
    return _continued(
        "escaping", f"L fell monotonically from {losses[0]:.6g} to "
        f"{losses[-1]:.6g} while {size} grew {ratio:.1f}x in {iters} "
        f"iterations (||g|| = {end.grad_norm:.1e}); L_inf <= {losses[-1]:.3g}"
        f", extrapolated {asymptotic:.3g}", cert=cert,
        asymptotic=asymptotic, **evidence)
  if escaping:
    asymptotic = float(np.clip(tracking.limit, 0.0, losses[-1]))
    return _continued(
        "escaping", f"L fell monotonically from {losses[0]:.6g} to "
        f"{losses[-1]:.6g} in {iters} iterations while {size} grew "
        f"{ratio:.2f}x, and over the last {len(losses) - tracking.start} "
        f"||g|| tracked L - L_inf: ||g|| / (L - L_inf) stayed within "
        f"{tracking.spread:.2f}x while L - L_inf fell {tracking.fall:.3g}-"
        f"fold (a slow escape; at a critical point the ratio grows without "
        f"bound); L_inf <= {losses[-1]:.3g}, fitted {tracking.limit:.6g}",
        cert=cert, asymptotic=asymptotic, **evidence)
  if kink is not None:
    reason = (f"{what}; the continuation ended after {iters} iterations: "
              f"{kink.reason}")
  elif settled:
    reason = (f"{what}; the continuation stopped after {run.iters} steps "
              f"(no LM step went lower) where the certificate found "
              f"{cert.verdict} (||g|| = {cert.grad_norm:.1e}, tolerance "
              f"{cert.grad_tol:.1e}), and {size} grew only {ratio:.2f}x")
  elif not monotone:
    reason = (f"{what}; L rose on {int(np.sum(rises))} of {iters} "
              f"continuation steps")
  else:
    reason = (f"{what}; {size} grew only {ratio:.2f}x (< {tol.growth}x) "
              f"in {iters} iterations while ||g|| = {run.grad_norm:.1e}")
  return _continued("undecided", reason, cert=cert, asymptotic=None,
                    **evidence)


def _slow_escape_test(before, tol: Tolerances):
  """``refine``'s ``stop_when``: the path (``before``, the lists of L,
  ``||g||`` and ``||theta||`` so far, or empty; then the run's, whose first
  point is the last of ``before``) never rose and ends in a slow escape."""
  def test(*run):
    path = [list(done) + list(new[1:]) for done, new in zip(before, run)
            ] if before else run
    return escape.slow_escape(*path, tol) is not None
  return test


def _extend(losses: list, grads: list, norms: list, point: Problem) -> None:
  losses.append(point.loss)
  grads.append(point.grad_norm)
  norms.append(float(np.linalg.norm(point.flat)))


def _probe_only_minimum(cert: certify.Certificate) -> bool:
  """A ``local_min`` that only the descent probe found (no second-order
  proof): on a path that ends in a slow escape, a plateau the probe's
  threshold cannot resolve."""
  return cert.verdict == "local_min" and not cert.proof


def certificate_reason(cert: certify.Certificate, ref_loss: float) -> str:
  """One line saying why a certificate decided what it decided."""
  if cert.verdict == "saddle":
    return f"index {cert.index} (lambda_min {cert.lambda_min:.2e})"
  if cert.verdict == "non_differentiable":
    return (f"on a kink (min |pre-activation| "
            f"{cert.min_abs_preactivation:.1e})")
  if cert.verdict != "local_min":
    return f"certificate: {cert.verdict}"
  if cert.tolerances.is_zero_loss(cert.loss, ref_loss):
    return "zero loss (the global minimum value, up to rounding)"
  if cert.proof:
    return (f"second-order sufficiency (relative decrease <= "
            f"{cert.decrease_bound:.1e} in a ball of radius "
            f"{cert.proof_radius:.1e})")
  return (f"the descent probe found no lower value (relative decrease "
          f"{cert.probe.decrease:.1e} in {cert.probe.iters} "
          f"{cert.probe.method} steps, moved {cert.probe.displacement:.1e})")


def _decided(cert: certify.Certificate, refined: RefineResult,
             point: Problem, *, continued: bool, **evidence) -> Decision:
  text = certificate_reason(cert, point.reference_loss)
  if continued:
    text = f"after the continuation: {text}"
    return _continued(cert.verdict, text, cert=cert, asymptotic=None,
                      refined=refined, end=point, **evidence)
  return _at_point(cert.verdict, text, refined, cert, point)


def _at_point(outcome: str, reason: str, refined: RefineResult,
              cert: certify.Certificate | None, point: Problem) -> Decision:
  """A decision taken where refinement left the member (no continuation)."""
  norm = float(np.linalg.norm(point.flat))
  return Decision(
      outcome=outcome, reason=reason, params=point.params,
      refined=refined, certificate=cert, continued=False, iters=0,
      loss_start=point.loss, loss_end=point.loss, param_norm_start=norm,
      param_norm_end=norm, grad_norm_end=point.grad_norm, loss_monotone=True,
      asymptotic_loss=None, max_abs_preactivation_start=None,
      max_abs_preactivation_end=None)


def _continued(outcome: str, reason: str, *, cert, asymptotic, refined,
               iters, losses, norms, monotone, begin: Problem, end: Problem,
               kink: kinks.KinkDecision | None = None) -> Decision:
  return Decision(
      outcome=outcome, reason=reason, params=end.params, refined=refined,
      certificate=cert, continued=True, iters=iters,
      loss_start=float(losses[0]), loss_end=float(losses[-1]),
      param_norm_start=float(norms[0]), param_norm_end=float(norms[-1]),
      grad_norm_end=end.grad_norm, loss_monotone=monotone,
      asymptotic_loss=asymptotic,
      max_abs_preactivation_start=_max_abs_preactivation(begin, begin.params),
      max_abs_preactivation_end=_max_abs_preactivation(end, end.params),
      kink=kink)
