"""Certificates of a point of a ``Problem``: a claim about a neighbourhood.

A certificate (docs/theory.md#certificates) records, in float64 on the full
training set, ``||g||`` and its tolerance, the extreme Hessian eigenvalues
with residuals ``||H v - lambda v||``, the index (eigenvalues below
``-eig_tol``), the flat directions (``|lambda| <= eig_tol``), the evidence
that nothing nearby is lower, and a verdict, decided in this order (every
tolerance from ``lminima.core.tolerances``, recorded in the certificate):

1. ``not_critical``: L or g not finite, or ``||g|| > grad_tol`` with
   ``grad_tol = grad_rtol sqrt(2 ||H|| L)`` (rounding floor where L is at
   rounding): relative to the loss's own scale, so a point on a path to
   infinity, where g and L vanish together, is not critical.
2. ``non_differentiable``: an argument of a non-differentiable activation
   (``Problem.kinks_fn``, e.g. a relu pre-activation) within ``kink_tol`` of
   its kink on some training sample.
3. ``saddle``: an eigenvalue ``< -eig_tol`` (a direction of descent).
4. ``local_min`` when L is zero up to rounding (the global minimum value),
   or when second-order sufficiency proves a strict local minimum nearby
   (``proof``): ``lambda_min > eig_tol`` and, on the ball of radius ``rho``
   (at least 4 Newton steps ``||g|| / lambda_min``), the Hessian measured at
   the ball's edge stays above ``lambda_min / 2``, so L is strongly convex
   there with modulus ``mu >= lambda_min / 2``: the ball holds one minimizer
   and nothing in it is lower than ``L - ||g||^2 / (2 mu)``, a relative
   decrease ``decrease_bound`` that must be at most ``descent_rtol``. The
   Lipschitz constant of H is estimated from one Hessian at the edge (in the
   Newton direction), so this is a quantitative check, not a formal proof.
5. Otherwise the descent probe decides (flat directions, tiny curvature,
   Lanczos spectra): ``probe_iters`` iterations of Levenberg-Marquardt on the
   exact Hessian without the gradient stop (L-BFGS above ``lm_max_params``),
   recording the largest relative decrease of L found (``probe_decrease``)
   and the displacement: ``not_minimum`` if the decrease exceeds
   ``descent_rtol``, else ``local_min``. Decrease, not displacement,
   decides: a degenerate minimum moves along its flat directions without
   descending.

Dense ``eigh`` is used for ``n_params <= dense_max_params``; above it Lanczos
with (partial) reorthogonalization
(``lminima.linalg.lanczos.lanczos_extreme_eigs``), and ``index`` and ``n_flat``
are counted from the Ritz values (lower bounds: Cauchy interlacing); a Lanczos
``saddle`` is rigorous (lambda_min is a Rayleigh quotient), and a Lanczos
spectrum never makes a proof (the probe decides).

Example:
  >>> import jax, jax.numpy as jnp, numpy as np
  >>> from lminima.core.models import MLP
  >>> model = MLP(d_in=1, widths=(1,), d_out=1, activation="identity",
  ...             bias=False)
  >>> origin = jax.tree_util.tree_map(jnp.zeros_like, model.init_params(
  ...     jax.random.PRNGKey(0)))
  >>> problem = Problem.for_module(model, origin, np.ones((2, 1)),
  ...                              np.ones((2, 1)))
  >>> cert = certificate(problem)
  >>> cert.verdict, cert.index, cert.lambda_min
  ('saddle', 1, -1.0)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import numpy as np
import scipy.optimize

from lminima.core.problem import Problem
from lminima.core.tolerances import DEFAULT, Tolerances
from lminima.critical import refinement
from lminima.critical.refinement import serial_blas
from lminima.linalg import lanczos

VERDICTS = ("local_min", "saddle", "not_critical", "not_minimum",
            "non_differentiable")
"""Certificate verdicts, in the order decided (module docstring)."""


@dataclasses.dataclass(frozen=True)
class Probe:
  """What the descent probe found from a point.

  Attributes:
    method: ``"lm"`` or ``"lbfgs"``.
    iters: iterations taken.
    loss_end: the lowest L reached (the last iterate's).
    decrease: ``(L - loss_end) / max(L, zero floor)``.
    displacement: ``||theta_end - theta||``.
    param_norm_end: ``||theta_end||``.
    loss_history, param_norm_history: along the run that went lowest
      (from its start).
    params: that run's last point.
  """
  method: str
  iters: int
  loss_end: float
  decrease: float
  displacement: float
  param_norm_end: float
  loss_history: tuple[float, ...]
  param_norm_history: tuple[float, ...]
  params: Any


@dataclasses.dataclass(frozen=True)
class Certificate:
  """The record of one point; see the module docstring.

  Attributes:
    n_params: number of parameters n.
    loss: L(theta).
    grad_norm: ``||grad L||_2``.
    grad_tol: the gradient tolerance at this point
      (``Tolerances.grad_tolerance``).
    grad_norm_rel: ``||g|| / sqrt(2 ||H|| max(L, zero floor))``, the
      gradient relative to the largest one its loss allows (compare with
      ``grad_rtol``).
    lambda_min: smallest Hessian eigenvalue (Ritz value on the Lanczos path).
    lambda_max: largest Hessian eigenvalue.
    residual_min: ``||H v - lambda_min v||`` of the reported pair.
    residual_max: the same for ``lambda_max``.
    index: number of eigenvalues ``< -eig_tol`` (lower bound for Lanczos).
    n_flat: number of eigenvalues with ``|lambda| <= eig_tol`` (Lanczos:
      counted from Ritz values, a lower bound in practice).
    eig_tol: eigenvalue tolerance used.
    min_abs_preactivation: smallest ``|z|`` over the arguments of
      non-differentiable activations on all samples; None for smooth models.
    method: ``"dense"`` or ``"lanczos"``.
    proof: second-order sufficiency holds (module docstring, step 4).
    proof_radius: the ball's radius ``rho`` (None without a proof attempt).
    decrease_bound: the relative decrease possible in that ball (None
      without a proof attempt).
    probe: the descent probe's record, or None where it was not needed.
    tolerances: the ``Tolerances`` used.
    verdict: one of ``VERDICTS``.
  """
  n_params: int
  loss: float
  grad_norm: float
  grad_tol: float
  grad_norm_rel: float
  lambda_min: float
  lambda_max: float
  residual_min: float
  residual_max: float
  index: int
  n_flat: int
  eig_tol: float
  min_abs_preactivation: float | None
  method: str
  proof: bool
  proof_radius: float | None
  decrease_bound: float | None
  probe: Probe | None
  tolerances: Tolerances
  verdict: str

  def to_dict(self) -> dict[str, Any]:
    """JSON-ready dict (the probe's scalars as ``probe_*``, the tolerances
    as a dict); non-finite floats become None (strict JSON)."""
    def plain(value):
      if isinstance(value, float) and not math.isfinite(value):
        return None
      return value
    out = {field.name: plain(getattr(self, field.name))
           for field in dataclasses.fields(self)
           if field.name not in ("probe", "tolerances")}
    probe = self.probe
    out.update(
        probe_method=probe and probe.method, probe_iters=probe and probe.iters,
        probe_decrease=probe and plain(probe.decrease),
        probe_displacement=probe and plain(probe.displacement),
        tolerances=self.tolerances.to_dict())
    return out


def end_residuals(matrix, lam, vecs, xp=np):
  """``||H v - lambda v||`` of the extreme eigenpairs (lambda_min, lambda_max)
  of a dense ``eigh``; with leading batch axes and ``xp=jax.numpy`` too."""
  ends = vecs[..., :, [0, -1]]
  return xp.linalg.norm(matrix @ ends - ends * lam[..., None, [0, -1]],
                        axis=-2)


def _spectrum_summary(problem: Problem, dense_max_params: int,
                      key: jax.Array):
  """(ascending eigenvalues or Ritz values, lam_min, lam_max, res_min,
  res_max)."""
  if problem.n_params <= dense_max_params:
    matrix = problem.dense_hessian()
    with serial_blas():
      lam, vecs = np.linalg.eigh(matrix)
    residuals = end_residuals(matrix, lam, vecs)
    return (lam, float(lam[0]), float(lam[-1]), float(residuals[0]),
            float(residuals[1]))
  return lanczos_spectrum(lanczos.lanczos_extreme_eigs(
      problem.hvp_operator(), problem.n_params, key=key))


def lanczos_spectrum(eigs: lanczos.ExtremeEigs) -> tuple:
  """``summarize``'s spectrum from a Lanczos run (Ritz values, ends, true
  residuals); shared with the batched ``batched_certificates.certify_many``."""
  return (np.asarray(eigs.ritz_values), eigs.lambda_min, eigs.lambda_max,
          eigs.residual_min, eigs.residual_max)


def check_dense_max_params(dense_max_params: int,
                           caller: str = "certificate") -> None:
  """Raises ValueError (naming ``caller``) on a negative size."""
  if not dense_max_params >= 0:
    raise ValueError(f"{caller}: need dense_max_params >= 0, got "
                     f"{dense_max_params}")


def second_order_proof(problem: Problem, lam_min: float, tol: Tolerances
                       ) -> tuple[bool, float, float]:
  """Step 4 of the module docstring at a point whose dense Hessian has
  smallest eigenvalue ``lam_min > 0``: ``(proof, radius, decrease_bound)``.

  The ball of radius ``rho = max(4 ||g|| / lam_min, proof_radius_rtol *
  max(1, ||theta||))`` holds the Newton point; with ``Delta = ||H(theta +
  rho u) - H(theta)||_F`` (``u`` the Newton direction ``-g / ||g||``) the
  Hessian on the ball is estimated to stay above ``mu = lam_min - Delta``;
  if ``mu >= lam_min / 2`` nothing in the ball lies below ``L - ||g||^2 /
  (2 mu)``, a relative decrease ``decrease_bound``; the proof holds when
  that is at most ``descent_rtol``.
  """
  flat, grad = np.asarray(problem.flat), np.asarray(problem.grad)
  grad_norm = float(np.linalg.norm(grad))
  radius = max(4.0 * grad_norm / lam_min,
               tol.proof_radius_rtol * max(1.0, float(np.linalg.norm(flat))))
  direction = (-grad / grad_norm if grad_norm > 0
               else np.full(flat.shape, 1.0 / math.sqrt(flat.size)))
  change = float(np.linalg.norm(
      problem.dense_hessian_at(flat + radius * direction)
      - problem.dense_hessian()))
  mu = lam_min - change
  if not mu >= lam_min / 2:
    return False, radius, math.inf
  floor = max(problem.loss, tol.zero_floor(problem.reference_loss))
  bound = grad_norm ** 2 / (2.0 * mu * floor)
  return bound <= tol.descent_rtol, radius, bound


def probe_starts(problem: Problem, tol: Tolerances,
                 count: int | None = None) -> list[np.ndarray]:
  """The descent probe's starts: the point, then ``count - 1`` (default
  ``tol.probe_starts - 1``) points at distance ``tol.probe_radius_rtol *
  max(1, ||theta||)`` in fixed random directions (reproducible)."""
  flat = np.asarray(problem.flat)
  radius = tol.probe_radius_rtol * max(1.0, float(np.linalg.norm(flat)))
  directions = np.random.default_rng(0).standard_normal(
      ((tol.probe_starts if count is None else count) - 1, flat.size))
  return [flat] + [flat + radius * d / np.linalg.norm(d) for d in directions]


def descent_probe(problem: Problem, tol: Tolerances,
                  lm_max_params: int = 5000) -> Probe:
  """Tries to go lower from the problem's point (module docstring, step 5).

  From the point itself and from ``tol.probe_starts - 1`` points at distance
  ``tol.probe_radius_rtol * max(1, ||theta||)`` in fixed random directions
  (reproducible), ``tol.probe_iters`` iterations of LM on the exact Hessian
  without the gradient stop or the escape stop (``refinement.refine``), or
  of L-BFGS-B (``scipy.optimize``, gradient and loss tolerances 0) where the
  dense Hessian is out of reach (``n_params > lm_max_params`` or over the
  problem's memory budget). Returns the run that went lowest.
  """
  flat = np.asarray(problem.flat)
  runs = [_probe_run(problem, start, tol, lm_max_params)
          for start in probe_starts(problem, tol)]
  method, iters, losses, norms, end = min(
      runs, key=lambda run: np.nanmin(run[2]))
  lowest = float(np.nanmin(losses))
  return Probe(
      method=method, iters=iters, loss_end=lowest,
      decrease=tol.relative_decrease(problem.loss, lowest,
                                     problem.reference_loss),
      displacement=float(np.linalg.norm(end - flat)),
      param_norm_end=float(np.linalg.norm(end)),
      loss_history=tuple(float(v) for v in losses),
      param_norm_history=tuple(float(v) for v in norms),
      params=problem.unravel(jax.numpy.asarray(end, problem.flat.dtype)))


def _probe_run(problem: Problem, start: np.ndarray, tol: Tolerances,
               lm_max_params: int) -> tuple:
  """One probe run from ``start``: (method, iters, losses, norms, end)."""
  if (problem.n_params <= lm_max_params
      and 8 * problem.n_params ** 2 <= problem.memory_budget_bytes):
    run = refinement.refine(
        problem.at(problem.unravel(jax.numpy.asarray(start))), method="lm",
        tol=tol, stop_on_grad=False, max_iters=tol.probe_iters,
        escape_ratio=None)
    return ("lm", run.iters, run.loss_history, run.param_norm_history,
            np.asarray(problem.at(run.params).flat))
  losses = [problem.loss_and_grad_at(start)[0]]
  norms = [float(np.linalg.norm(start))]

  def record(intermediate_result):
    losses.append(float(intermediate_result.fun))
    norms.append(float(np.linalg.norm(intermediate_result.x)))
  result = lbfgs_descent(problem, start, tol.probe_iters, callback=record)
  return "lbfgs", int(result.nit), losses, norms, np.asarray(result.x)


def lbfgs_descent(problem: Problem, start: np.ndarray, max_iters: int,
                  callback=None) -> scipy.optimize.OptimizeResult:
  """L-BFGS-B on the problem's L from the flat point ``start`` for
  ``max_iters`` iterations (gradient and loss tolerances 0: only the
  iteration count stops it)."""
  with serial_blas():
    return scipy.optimize.minimize(
        problem.loss_and_grad_at, start, jac=True, method="L-BFGS-B",
        callback=callback, options={"maxiter": max_iters, "gtol": 0.0,
                                    "ftol": 0.0})


def decide(problem: Problem, spectrum: tuple | None, method: str,
           tol: Tolerances, lm_max_params: int = 5000) -> Certificate:
  """The certificate of the problem's point from its spectrum (module
  docstring); shared by ``certificate`` and the batched ``lminima.
  batched_certificates.certify_many``, so both decide by the same rules.

  Args:
    problem: the objective at the point.
    spectrum: ``(ascending eigenvalues or Ritz values, lambda_min,
      lambda_max, residual_min, residual_max)``; None when L or g is not
      finite (no spectrum is taken there).
    method: ``"dense"`` or ``"lanczos"`` (only a dense spectrum makes a
      proof).
    tol: the tolerances.
    lm_max_params: the descent probe's LM bound (``descent_probe``).
  """
  loss, grad_norm = problem.loss, problem.grad_norm
  finite = spectrum is not None and math.isfinite(loss) and math.isfinite(
      grad_norm)
  nan = float("nan")
  values, lam_min, lam_max, res_min, res_max = (
      (np.array([]), nan, nan, nan, nan) if not finite else spectrum)
  ref_loss = problem.reference_loss
  curvature = max(abs(lam_min), abs(lam_max)) if finite else nan
  grad_tol = (float(tol.grad_tolerance(loss, curvature, ref_loss))
              if finite else nan)
  scale = math.sqrt(2.0 * curvature * max(loss, tol.zero_floor(ref_loss))
                    ) if finite else nan
  grad_norm_rel = (grad_norm / scale if scale > 0
                   else 0.0 if grad_norm == 0 else math.inf)
  eig_tol = tol.eig_tolerance(lam_min, lam_max) if finite else nan
  index = int(np.sum(values < -eig_tol))
  n_flat = int(np.sum(np.abs(values) <= eig_tol))
  min_abs_kink = problem.min_abs_kink_input()
  proof, radius, bound, probe = False, None, None, None
  if not finite or grad_norm > grad_tol:
    verdict = "not_critical"
  elif min_abs_kink is not None and min_abs_kink <= tol.kink_tol:
    verdict = "non_differentiable"
  elif index > 0:
    verdict = "saddle"
  elif tol.is_zero_loss(loss, ref_loss):
    verdict = "local_min"  # the global minimum value, up to rounding
  else:
    if method == "dense" and lam_min > eig_tol:
      proof, radius, bound = second_order_proof(problem, lam_min, tol)
    if proof:
      verdict = "local_min"
    else:
      probe = descent_probe(problem, tol, lm_max_params)
      verdict = ("not_minimum" if probe.decrease > tol.descent_rtol
                 else "local_min")
  return Certificate(
      n_params=problem.n_params, loss=loss, grad_norm=grad_norm,
      grad_tol=grad_tol, grad_norm_rel=grad_norm_rel, lambda_min=lam_min,
      lambda_max=lam_max, residual_min=res_min, residual_max=res_max,
      index=index, n_flat=n_flat, eig_tol=float(eig_tol),
      min_abs_preactivation=min_abs_kink, method=method, proof=bool(proof),
      proof_radius=radius, decrease_bound=bound, probe=probe, tolerances=tol,
      verdict=verdict)


def certificate(problem: Problem, *, tol: Tolerances | None = None,
                dense_max_params: int = 3000, lm_max_params: int = 5000,
                key: jax.Array | None = None) -> Certificate:
  """Certifies the problem's point as a local minimum, saddle or neither.

  Args:
    problem: the objective at the point (the FULL training set).
    tol: the tolerances (``lminima.core.tolerances.DEFAULT``).
    dense_max_params: dense eigh up to this many parameters, Lanczos above.
    lm_max_params: the descent probe uses LM up to this many parameters,
      L-BFGS above.
    key: PRNG key of the Lanczos start vector (default ``PRNGKey(0)``).

  Returns:
    A ``Certificate``.

  Raises:
    ValueError: on a negative ``dense_max_params``.
  """
  check_dense_max_params(dense_max_params)
  tol = DEFAULT if tol is None else tol
  finite = math.isfinite(problem.loss) and math.isfinite(problem.grad_norm)
  spectrum = _spectrum_summary(
      problem, dense_max_params,
      jax.random.PRNGKey(0) if key is None else key) if finite else None
  return decide(problem, spectrum,
                "dense" if problem.n_params <= dense_max_params
                else "lanczos", tol, lm_max_params)
