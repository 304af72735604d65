"""Refinement of a trained point to a critical point of its ``Problem``.

Training ends near critical points only roughly; ``refine`` polishes the point
in float64 until it is critical by the shared test of
``lminima.core.tolerances``, ``||g|| <= grad_rtol * sqrt(2 ||H|| L)`` (with a
rounding floor), the test the certificate applies (docs/theory.md#refinement):

* ``method="lm"``: Levenberg-Marquardt damping of the exact Newton model,
  ``d = -(H + mu I)^{-1} g`` from a dense eigendecomposition ``H = V diag(lam)
  V^T``, with ``mu = max(0, -lam_min) + nu ||g||`` so that ``H + mu I`` is
  positive definite, and ``nu`` adapted by the ratio of actual to predicted
  decrease of L. ``mu`` proportional to ``||g||`` gives quadratic convergence
  at nondegenerate minima and keeps it fast at degenerate ones
  (Yamashita-Fukushima). It converges to minima only. The exact Hessian, not
  Gauss-Newton: with a nonzero residual at the solution (local minima with
  L > 0, the case of interest) Gauss-Newton converges only linearly.
* ``method="newton_mr"``: Newton-MR (Roosta et al. 2022), matrix free: MINRES
  (``lminima.linalg.minres``, compiled once per shape) on ``H d = -g`` with
  Hessian-vector products and an Armijo backtracking line
  search on the merit ``||g||^2 / 2``, whose gradient is ``H g``. It converges
  to any nearby critical point, saddles included.

Both stop with ``"escaping"`` once ``||theta|| > escape_ratio * max(1,
||theta_0||)``: along a path where hidden units saturate or output weights
grow, L keeps decreasing while the weights grow without bound, and a tiny
gradient there is not a nearby critical point (docs/theory.md#escape-to-infinity).
The floor 1 keeps starts near the origin, whose weights grow to the O(1) scale
of standardized data, from counting as escapes.

Dense linear algebra runs with single-threaded BLAS (``threadpoolctl``): for
the matrices here OpenBLAS threads only add synchronization (docs/design.md,
"Refinement, certificate, outcomes").

Example:
  >>> import jax, numpy as np
  >>> from lminima.core.models import MLP
  >>> model = MLP(d_in=2, widths=(), d_out=1, activation="identity")
  >>> x = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
  >>> y = np.array([[1.0], [2.0], [2.5]])
  >>> problem = Problem.for_module(model, model.init_params(
  ...     jax.random.PRNGKey(0)), x, y)
  >>> result = refine(problem)
  >>> result.converged, result.grad_norm <= result.grad_tol
  (True, True)
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from threadpoolctl import threadpool_limits

from lminima.core import problem as problem_lib
from lminima.core.problem import Problem
from lminima.core.tolerances import DEFAULT, Tolerances
from lminima.dtypes import EXACT_DTYPE
from lminima.linalg import minres as minres_lib

METHODS = ("auto", "lm", "newton_mr")
STOP_REASONS = ("grad_tol", "max_iters", "stalled", "non_finite", "escaping",
                "stop_when")
STOP_WHEN_EVERY = 10
"""Iterations between two calls of ``refine``'s ``stop_when``."""

# Relative size below which a change of L is float64 roundoff of the sum of
# m * d_y squares; the LM ratio test then falls back to the gradient norm.
_LOSS_NOISE = 1e4 * float(np.finfo(np.float64).eps)


def serial_blas() -> threadpool_limits:
  """Context in which numpy/scipy BLAS and LAPACK use one thread."""
  return threadpool_limits(limits=1, user_api="blas")


@dataclasses.dataclass(frozen=True)
class RefineResult:
  """Outcome of ``refine``.

  Attributes:
    params: float64 parameters at the last iterate.
    loss: L at ``params``.
    grad_norm: ``||grad L||_2`` at ``params``.
    iters: Newton iterations taken (accepted steps).
    converged: ``grad_norm <= grad_tol``.
    grad_tol: the gradient tolerance at ``params`` (``Tolerances.
      grad_tolerance`` of its L and ``||H||``; 0 without the gradient stop).
    stop_reason: one of ``STOP_REASONS``: ``"grad_tol"``, ``"max_iters"``,
      ``"stalled"`` (no step decreased the merit function), ``"non_finite"``
      ``"escaping"`` (the parameter norm outgrew ``escape_ratio``) or
      ``"stop_when"`` (the caller's test said so).
    grad_norm_history: ``||g||`` at the start and after every iteration.
    loss_history: L at the start and after every iteration.
    param_norm_history: ``||theta||_2`` at the start and after every iteration
      (the evidence of a run to infinity, ``lminima.critical.outcomes``).
    method: ``"lm"`` or ``"newton_mr"``.
    param_norm_start: ``||theta_0||_2`` of the (float64) starting point.
    param_norm: ``||theta||_2`` at ``params``; a large ratio to
      ``param_norm_start`` flags saturated units even when ``converged``.
  """
  params: Any
  loss: float
  grad_norm: float
  iters: int
  converged: bool
  grad_tol: float
  stop_reason: str
  grad_norm_history: tuple[float, ...]
  loss_history: tuple[float, ...]
  param_norm_history: tuple[float, ...]
  method: str
  param_norm_start: float
  param_norm: float


def stop_code(loss, grad_norm, param_norm, iters, *, grad_tol, escape_norm,
              max_iters, xp=np):
  """Why to stop before an iteration: 0 to go on, else ``1 + i`` for
  ``STOP_REASONS[i]``.

  The tests, by precedence: L or ``||g||`` not finite, ``||g|| <= grad_tol``,
  ``||theta|| > escape_norm``, ``iters >= max_iters``. Elementwise with
  ``xp=jax.numpy``, so the batched path (``lminima.critical.batched.refine``)
  applies the same rules to a population.
  """
  code = xp.where(iters >= max_iters, 1 + STOP_REASONS.index("max_iters"), 0)
  code = xp.where(param_norm > escape_norm,
                  1 + STOP_REASONS.index("escaping"), code)
  code = xp.where(grad_norm <= grad_tol, 1 + STOP_REASONS.index("grad_tol"),
                  code)
  finite = xp.isfinite(loss) & xp.isfinite(grad_norm)
  return xp.where(finite, code, 1 + STOP_REASONS.index("non_finite"))


def lm_trial(lam, coeffs, mu):
  """The LM step ``d = -(H + mu I)^{-1} g`` in the eigenbasis of H, and its
  predicted decrease ``-(g.d + d.H d / 2)`` (positive when H + mu I > 0).

  ``lam`` are the eigenvalues, ``coeffs = V^T g``; works on numpy and JAX
  arrays, with leading batch axes.
  """
  step_coeffs = -coeffs / (lam + mu)
  predicted = -(step_coeffs * coeffs + 0.5 * lam * step_coeffs ** 2).sum(-1)
  return step_coeffs, predicted


def lm_accept(loss, new_loss, predicted, grad_norm, new_grad_norm, xp=np):
  """The LM ratio test: ``(accept, very_good)`` of a trial step.

  A non-finite trial is refused. When the predicted decrease is below the
  roundoff of L (``_LOSS_NOISE * |L|``) the ratio is noise, and the step is
  judged by the gradient norm (accepted if it shrinks, then "very good");
  else by ``rho = (L - L_new) / predicted``: accept if ``rho > 0.1``, very
  good if ``rho > 0.75`` (nu is then divided by 4). Elementwise with
  ``xp=jax.numpy``.
  """
  finite = xp.isfinite(new_loss) & xp.isfinite(new_grad_norm)
  noise = predicted <= _LOSS_NOISE * xp.abs(loss)
  ratio = (loss - new_loss) / xp.where(noise, 1.0, predicted)
  accept = finite & xp.where(noise, new_grad_norm < grad_norm, ratio > 0.1)
  return accept, noise | (ratio > 0.75)


def _lm_step(problem: Problem, flat: np.ndarray, loss: float,
             grad: np.ndarray, nu: float, lam: np.ndarray, vecs: np.ndarray,
             max_trials: int = 40):
  """One accepted LM step from ``flat``, where ``H = vecs diag(lam)
  vecs^T``, or None. Returns (flat, loss, grad, nu)."""
  grad_norm = float(np.linalg.norm(grad))
  coeffs = vecs.T @ grad
  shift = max(0.0, -float(lam[0]))
  for _ in range(max_trials):
    step_coeffs, predicted = lm_trial(lam, coeffs, shift + nu * grad_norm)
    candidate = flat + vecs @ step_coeffs
    new_loss, new_grad = problem.loss_and_grad_at(candidate)
    accept, very_good = lm_accept(loss, new_loss, float(predicted), grad_norm,
                                  float(np.linalg.norm(new_grad)))
    if accept:
      return candidate, new_loss, new_grad, (nu / 4 if very_good else nu)
    nu = max(4.0 * nu, 1e-8)
  return None


def newton_mr_direction(hvp, grad, *, minres_max_iters: int):
  """The Newton-MR direction and the slope of the merit along it.

  MINRES (``lminima.linalg.minres``) on ``H d = -g`` to the inexact-Newton
  forcing tolerance ``min(1e-2, ||g||)`` (superlinear convergence), floored at
  1e-14; if that ``d`` is no descent direction of the merit ``||g||^2 / 2``
  (slope ``<H g, d> >= 0``), steepest descent of the merit, ``d = -H g``.
  Traceable (``hvp``: ``v -> H v``), so the sequential step and the batched one
  (``lminima.critical.batched.newton_mr``) share it.

  Returns:
    ``(d, slope)``; ``slope >= 0`` means the merit is flat (``H g = 0``).
  """
  grad_norm = jnp.linalg.norm(grad)
  solution = minres_lib.minres(
      hvp, -grad, rtol=jnp.clip(grad_norm, 1e-14, 1e-2),
      max_iters=minres_max_iters)
  slope = jnp.vdot(grad, hvp(solution.x))

  def steepest():
    direction = -hvp(grad)
    return direction, -jnp.vdot(direction, direction)

  return lax.cond(slope < 0, lambda: (solution.x, slope), steepest)


def mr_accept(new_loss, new_merit, merit, step, slope, xp=np,
              armijo: float = 1e-4):
  """Armijo's test on the merit ``||g||^2 / 2`` for a Newton-MR trial."""
  return xp.isfinite(new_loss) & (new_merit <= merit + armijo * step * slope)


def power_curvature(hvp, dim: int, steps: int = 30):
  """An estimate of ``||H||_2`` (from below) by ``steps`` power iterations
  from a fixed start; traceable, so sequential and batched Newton-MR share
  it. Used where no eigendecomposition is at hand."""
  start = jnp.ones((dim,), EXACT_DTYPE) / jnp.sqrt(dim)

  def body(_, v):
    w = hvp(v)
    norm = jnp.linalg.norm(w)
    return jnp.where(norm > 0, w / jnp.where(norm > 0, norm, 1.0), v)
  return jnp.linalg.norm(hvp(lax.fori_loop(0, steps, body, start)))


def curvature_estimate(problem: Problem) -> float:
  """``||H||_2`` at the problem's point, from below (``power_curvature``):
  the scale of the criticality tolerance where no spectrum is at hand."""
  return float(_power_curvature_at(problem.objective, problem.flat,
                                   problem.params, problem.x, problem.y))


@functools.partial(jax.jit, static_argnames=("objective",))
def _power_curvature_at(objective, flat, like, x, y):
  hvp = functools.partial(problem_lib._flat_hvp(objective),  # pylint: disable=protected-access
                          flat, like, x, y)
  return power_curvature(hvp, flat.size)


@functools.partial(jax.jit, static_argnames=("objective", "minres_max_iters"))
def _newton_mr_direction_at(objective, flat, like, x, y, grad, *,
                            minres_max_iters):
  hvp = functools.partial(problem_lib._flat_hvp(objective),  # pylint: disable=protected-access
                          flat, like, x, y)
  return newton_mr_direction(hvp, grad, minres_max_iters=minres_max_iters)


def _newton_mr_step(problem: Problem, flat: np.ndarray, grad: np.ndarray,
                    minres_max_iters: int, max_backtracks: int = 40):
  """One Newton-MR step with Armijo backtracking on ||g||^2 / 2, or None."""
  direction, slope = (np.asarray(a) for a in _newton_mr_direction_at(
      problem.objective, jnp.asarray(flat, EXACT_DTYPE), problem.params,
      problem.x, problem.y, jnp.asarray(grad, EXACT_DTYPE),
      minres_max_iters=minres_max_iters))
  if not slope < 0:
    return None  # H g = 0: the merit ||g||^2 / 2 is flat, no step helps.
  merit = 0.5 * float(grad @ grad)
  step = 1.0
  for _ in range(max_backtracks):
    candidate = flat + step * direction
    new_loss, new_grad = problem.loss_and_grad_at(candidate)
    if mr_accept(new_loss, 0.5 * float(new_grad @ new_grad), merit, step,
                 float(slope)):
      return candidate, new_loss, new_grad
    step *= 0.5
  return None


def refine(problem: Problem, *, method: str = "lm",
           tol: Tolerances | None = None, stop_on_grad: bool = True,
           max_iters: int = 100, lm_max_params: int = 5000,
           escape_ratio: float | None = 5.0,
           minres_max_iters: int = 1000,
           stop_when: Callable[[list, list, list], bool] | None = None
           ) -> RefineResult:
  """Drives the problem's point to a critical point of its loss, in float64.

  See the module docstring for the two methods. Stops when the point is
  critical (``||g|| <= tol.grad_tolerance(L, ||H||, L_ref)``; ``||H||``
  from the eigendecomposition LM takes anyway, or a power-iteration estimate
  for Newton-MR), after ``max_iters`` Newton iterations, when no step
  decreases the merit function (``"stalled"``), or when ``||theta|| >
  escape_ratio * max(1, ||theta_0||)`` (``"escaping"``;
  docs/theory.md#escape-to-infinity).

  Args:
    problem: the objective and the starting point.
    method: ``"lm"`` (minima, dense Hessian), ``"newton_mr"`` (any
      critical point, matrix free) or ``"auto"`` (``"lm"`` up to
      ``lm_max_params`` parameters, ``"newton_mr"`` above).
    tol: the shared tolerances (``lminima.core.tolerances.DEFAULT``).
    stop_on_grad: False never stops for a small gradient (the descent probe
      and the fate's continuation run a fixed number of iterations).
    max_iters: cap on Newton iterations.
    lm_max_params: largest n_params for ``"lm"`` (dense eigh per iteration).
    escape_ratio: parameter-norm growth (> 1) that counts as escaping; None
      never stops for it.
    minres_max_iters: cap on MINRES steps (Hessian-vector products) per
      Newton-MR iteration.
    stop_when: called every ``STOP_WHEN_EVERY`` iterations with the run's
      histories so far (L, ``||g||``, ``||theta||``, as in the result); True
      stops with ``"stop_when"`` (the continuation's test for slow escapes,
      ``lminima.critical.outcomes``).

  Returns:
    A ``RefineResult``; ``problem.at(result.params)`` is the refined problem.

  Raises:
    ValueError: on an unknown method or bad tolerances.

  Example:
    >>> import jax, numpy as np
    >>> from lminima.core.models import MLP
    >>> model = MLP(d_in=1, widths=(), d_out=1, activation="identity")
    >>> x, y = np.array([[1.0], [2.0]]), np.array([[1.0], [3.0]])
    >>> problem = Problem.for_module(model, model.init_params(
    ...     jax.random.PRNGKey(0)), x, y)
    >>> refine(problem).stop_reason
    'grad_tol'
  """
  if method not in METHODS:
    raise ValueError(f"refine: unknown method {method!r}; choose one of "
                     f"{METHODS}")
  if max_iters < 0 or minres_max_iters < 1:
    raise ValueError(f"refine: need max_iters >= 0 and minres_max_iters >= 1,"
                     f" got max_iters={max_iters}, minres_max_iters="
                     f"{minres_max_iters}")
  tol = DEFAULT if tol is None else tol
  if escape_ratio is not None and not escape_ratio > 1:
    raise ValueError(f"refine: need escape_ratio > 1 or None, got "
                     f"{escape_ratio}")
  if method == "auto":
    method = "lm" if problem.n_params <= lm_max_params else "newton_mr"
  if method == "lm" and problem.n_params > lm_max_params:
    raise ValueError(
        f"refine: method='lm' diagonalizes the dense Hessian, and n_params="
        f"{problem.n_params} > lm_max_params={lm_max_params}; use "
        "method='newton_mr' (matrix free) or raise lm_max_params")
  flat = np.asarray(problem.flat)
  norm_start = float(np.linalg.norm(flat))
  escape_norm = (math.inf if escape_ratio is None
                 else escape_ratio * max(1.0, norm_start))
  loss, grad = problem.loss, problem.grad
  ref_loss = problem.reference_loss
  history = [float(np.linalg.norm(grad))]
  losses, norms = [float(loss)], [norm_start]
  nu, iters, stop_reason = 1.0, 0, "max_iters"
  with serial_blas():
    while True:
      if (stop_when is not None and iters and iters % STOP_WHEN_EVERY == 0
          and stop_when(losses, history, norms)):
        stop_reason = "stop_when"
        break
      finite = math.isfinite(loss) and math.isfinite(history[-1])
      if method == "lm" and finite:
        lam, vecs = np.linalg.eigh(problem.dense_hessian_at(flat))
        curvature = max(abs(float(lam[0])), abs(float(lam[-1])))
      elif finite and stop_on_grad:
        curvature = float(_power_curvature_at(
            problem.objective, jnp.asarray(flat, EXACT_DTYPE),
            problem.params, problem.x, problem.y))
      grad_tol = (float(tol.grad_tolerance(loss, curvature, ref_loss))
                  if finite and stop_on_grad else 0.0)
      code = int(stop_code(loss, history[-1], np.linalg.norm(flat), iters,
                           grad_tol=grad_tol, escape_norm=escape_norm,
                           max_iters=max_iters))
      if code:
        stop_reason = STOP_REASONS[code - 1]
        break
      if method == "lm":
        outcome = _lm_step(problem, flat, loss, grad, nu, lam, vecs)
        if outcome is not None:
          flat, loss, grad, nu = outcome
      else:
        outcome = _newton_mr_step(problem, flat, grad, minres_max_iters)
        if outcome is not None:
          flat, loss, grad = outcome
      if outcome is None:
        stop_reason = "stalled"
        break
      iters += 1
      history.append(float(np.linalg.norm(grad)))
      losses.append(float(loss))
      norms.append(float(np.linalg.norm(flat)))
  return RefineResult(
      params=problem.unravel(jnp.asarray(flat, EXACT_DTYPE)), loss=loss,
      grad_norm=history[-1], iters=iters,
      converged=stop_reason == "grad_tol", grad_tol=grad_tol,
      stop_reason=stop_reason,
      grad_norm_history=tuple(history), loss_history=tuple(losses),
      param_norm_history=tuple(norms), method=method,
      param_norm_start=norm_start, param_norm=float(np.linalg.norm(flat)))


