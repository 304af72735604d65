"""Refinement to a critical point and second-order certificates (DESIGN 1.5).

All quantities are float64 on the full training set, for the squared loss
``L(theta) = c ||Yhat(theta) - Y||_F^2`` (``lminima.losses``), with gradient
``g = grad L`` and Hessian ``H`` in the flat parameter order of
``lminima.hessian.flatten_params``.

Refinement (``refine``) polishes a trained point until ``||g|| <= grad_tol``:

* ``method="lm"``: Levenberg-Marquardt damping of the exact Newton model,
  ``d = -(H + mu I)^{-1} g`` from a dense eigendecomposition ``H = V diag(lam)
  V^T``, with ``mu = max(0, -lam_min) + nu ||g||`` so that ``H + mu I`` is
  positive definite and ``nu`` adapted by the ratio of actual to predicted
  decrease of L. Near a nondegenerate minimum ``mu = O(||g||)`` and the
  convergence is quadratic; ``mu`` proportional to ``||g||`` also keeps it fast
  at degenerate minima (Yamashita-Fukushima). It converges to minima only. The
  Gauss-Newton matrix ``2c D^T D`` was evaluated as the LM model (and
  ``optimistix.LevenbergMarquardt``): with a nonzero residual at the solution,
  the case of interest (local minima with L > 0), Gauss-Newton converges only
  linearly and stalled at ``||g|| ~ 1e-4`` after 200 steps on a 21-parameter
  tanh net, so the exact Hessian is used. Needs ``n_params <= lm_max_params``.
  Alternatives measured on the 36 members of the default sweep (tanh, depths
  1-3, widths 2-16, 3000 Adam steps), 200 iterations each: an exact
  trust-region Newton method (the More-Sorensen subproblem solved in the
  eigenbasis, hard case included) converged on 16 of the 17 members this LM
  converges on and took 1.4-2.5x its iterations at the non-isolated minima of
  width-16 nets, where ``mu ~ ||g||`` keeps the flat directions damped; a
  floor on ``nu`` changed nothing; Newton-MR converged on 10.
* ``method="newton_mr"``: Newton-MR (Roosta et al. 2022), matrix free. MINRES
  (``scipy.sparse.linalg.minres``) on ``H d = -g`` with jitted
  Hessian-vector products, and an Armijo backtracking line search on the merit
  ``||g||^2 / 2`` whose gradient is ``H g``. It converges to any nearby
  critical point, saddles included.

Escape to infinity. A trained point need not be near any critical point:
along a path where a hidden unit saturates (median |Z| 20-180 on the members
inspected) or output weights grow, L keeps decreasing while the weights grow
without bound, and the infimum is approached only at infinity. Every method
above follows such a path. On the default sweep 20 of 36 members do: over
3000 trust-region iterations the parameter norm grows 18-1700x while L
decreases monotonically, and 3 of them end with ``||g|| <= grad_tol`` only
because saturated units (``tanh' ~ 0``) make g tiny, 54-207x out. Both
methods therefore stop with ``"escaping"`` once ``||theta|| > escape_ratio *
max(1, ||theta_0||)``. On the way to the 16 genuine critical points no member
grew more than 3.4x; the floor 1 keeps starts near the origin, whose weights
grow to the O(1) scale of standardized data, from counting as escapes.

Dense linear algebra runs with single-threaded BLAS (``threadpoolctl``): for
the n <= ~1000 matrices here OpenBLAS threads only add synchronization, and
on a shared, oversubscribed CPU they made ``eigh`` 6-500x slower (66 x 66:
0.15 s instead of 0.3 ms; 674 x 674: 1.8 s instead of 0.27 s).

Certificates (``certificate``) record ``||g||``, the extreme Hessian
eigenvalues with residuals ``||H v - lambda v||``, the index (number of
eigenvalues ``< -eig_tol``), the number of flat directions (``|lambda| <=
eig_tol``) and a verdict, in this order:

1. ``not_critical``: L or g not finite, or ``||g|| > grad_tol`` (absolute).
2. ``non_differentiable``: relu/leaky_relu network with a hidden
   pre-activation ``|Z^(l)_ij| <= kink_tol`` on some training sample.
3. ``saddle``: an eigenvalue ``< -eig_tol``.
4. ``local_min``: none. This is the second-order necessary condition up to
   tolerances; with ``n_flat > 0`` the point may still be a higher-order
   saddle (e.g. the origin of a deep linear network, where H = 0).

Eigenvalues carry the loss's units, so the default ``eig_tol`` is relative:
``1e-6 * max(|lambda_min|, |lambda_max|)`` (0 when H = 0). Dense ``eigh`` is
used for ``n_params <= dense_max_params``; above it Lanczos with full
reorthogonalization (``lminima.hessian.lanczos_extreme_eigs``), and then
``index`` and ``n_flat`` are counted from the Ritz values: by Cauchy
interlacing the j-th smallest Ritz value is >= the j-th smallest eigenvalue,
so ``index`` is a lower bound; Lanczos resolves one copy of each eigenvalue
cluster, so ``n_flat`` is a lower bound in practice (at most one per cluster),
not a rigorous one. A ``saddle`` verdict from Lanczos is rigorous (the Ritz
value lambda_min is a Rayleigh quotient); ``local_min`` relies on Lanczos
having found lambda_min (check ``residual_min``).

Input dtypes: ``certificate`` requires float64 params and data (a float32
point is not the point being certified); ``refine`` casts params and data to
float64 first. Compiled pieces are cached per (model, normalization) and
array shapes, so members of one shape compile once.

Example:
  >>> import jax, numpy as np
  >>> from lminima.models import MLP
  >>> model = MLP(d_in=2, widths=(), d_out=1, activation="identity")
  >>> x = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
  >>> y = np.array([[1.0], [2.0], [2.5]])
  >>> start = model.init(jax.random.PRNGKey(0))
  >>> result = refine(model, start, x, y)
  >>> result.converged, result.grad_norm <= 1e-10
  (True, True)
  >>> certificate(model, result.params, x, y).verdict
  'local_min'
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse.linalg
from threadpoolctl import threadpool_limits

from lminima import EXACT_DTYPE
from lminima import hessian
from lminima.losses import loss_scale, squared_loss
from lminima.models import KINKED_ACTIVATIONS, MLP, Params, cast_params

METHODS = ("auto", "lm", "newton_mr")
VERDICTS = ("local_min", "saddle", "not_critical", "non_differentiable")
STOP_REASONS = ("grad_tol", "max_iters", "stalled", "non_finite", "escaping")

# Relative size below which a change of L is float64 roundoff of the sum of
# m * d_y squares; the LM ratio test then falls back to the gradient norm.
_LOSS_NOISE = 1e4 * float(np.finfo(np.float64).eps)

# Hessian columns are H e_i, vmapped in blocks. Up to _ONE_BLOCK_MAX_PARAMS
# columns go in one block (one loop body for XLA to compile); above it, blocks
# of _HESSIAN_BLOCK keep the tangent working set in cache. Measured on a
# depth-3 tanh MLP, m = 100, CPU: n = 674 takes 35 ms in blocks of 64 against
# 60 ms in blocks of 256 and 100 ms in one block; for n <= 210 one block is as
# fast and compiles ~0.5 s sooner.
_HESSIAN_BLOCK = 64
_ONE_BLOCK_MAX_PARAMS = 256


# ---------------------------------------------------------------------------
# Compiled pieces, one per (model, normalization) and array shapes.


def _loss(model: MLP, normalization: str, params: Params, x: jax.Array,
          y: jax.Array) -> jax.Array:
  return squared_loss(model.apply(params, x), y, normalization)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _loss_and_flat_grad(model, normalization, params, x, y):
  loss, grad = jax.value_and_grad(_loss, argnums=2)(
      model, normalization, params, x, y)
  return loss, hessian.flatten_params(grad)[0]


@functools.partial(jax.jit, static_argnums=(0, 1))
def _flat_loss_and_grad(model, normalization, flat, unravel_like, x, y):
  """Loss and flat gradient at the flat point ``flat``."""
  params = hessian.flatten_params(unravel_like)[1](flat)
  return _loss_and_flat_grad(model, normalization, params, x, y)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _flat_dense_hessian(model, normalization, flat, unravel_like, x, y):
  # Inputs were validated before tracing (_checked_inputs), so this calls the
  # unchecked core of hessian.dense_hessian.
  unravel = hessian.flatten_params(unravel_like)[1]
  flat_loss = lambda f: _loss(model, normalization, unravel(f), x, y)
  _, matvec = jax.linearize(jax.grad(flat_loss), flat)
  dim = flat.shape[0]
  return hessian.dense_from_operator(
      matvec, dim,
      chunk_size=dim if dim <= _ONE_BLOCK_MAX_PARAMS else _HESSIAN_BLOCK)


@functools.lru_cache(maxsize=None)
def _flat_hvp_fn(model: MLP, normalization: str
                 ) -> Callable[..., jax.Array]:
  """Jitted ``(flat, like, x, y, v) -> H v``; one function object per model.

  The stable identity lets ``jax.tree_util.Partial(fn, flat, like, x, y)``
  be an operator whose tree structure only depends on shapes, so jitted
  Lanczos compiles once per shape rather than once per member.
  """
  @jax.jit
  def flat_hvp(flat, unravel_like, x, y, v):
    unravel = hessian.flatten_params(unravel_like)[1]
    loss_fn = lambda p: _loss(model, normalization, p, x, y)
    return hessian.flatten_params(
        hessian.hvp(loss_fn, unravel(flat), unravel(v)))[0]
  return flat_hvp


@functools.partial(jax.jit, static_argnums=(0,))
def _min_abs_preactivation(model, params, x):
  _, pre_activations, _ = model.forward(params, x)
  return jnp.min(jnp.stack([jnp.min(jnp.abs(z)) for z in pre_activations]))


# ---------------------------------------------------------------------------
# Input checks.


def _serial_blas() -> threadpool_limits:
  """Context in which numpy/scipy BLAS and LAPACK use one thread."""
  return threadpool_limits(limits=1, user_api="blas")


def _is_float64(array: Any) -> bool:
  return np.dtype(getattr(array, "dtype", np.asarray(array).dtype)) == (
      np.float64)


def _checked_inputs(model: MLP, params: Params, x: Any, y: Any,
                    normalization: str, require_float64: bool, caller: str
                    ) -> tuple[Params, jax.Array, jax.Array]:
  """Validates and returns ``(params, x, y)`` as float64 JAX arrays."""
  if not isinstance(model, MLP):
    raise ValueError(f"{caller}: model must be an lminima.models.MLP, got "
                     f"{type(model).__name__}")
  model.check_params(params)
  loss_scale(normalization, 1)  # rejects unknown normalizations
  leaves = jax.tree_util.tree_leaves(params)
  if require_float64:
    named = [("params", leaf) for leaf in leaves] + [("x", x), ("y", y)]
    for name, array in named:
      if not _is_float64(array):
        raise ValueError(
            f"{caller}: {name} must be float64 (certificates are exact-dtype)"
            f", got {np.asarray(array).dtype}; cast first, e.g. "
            "lminima.models.cast_params(params, jnp.float64) and "
            "np.asarray(x, np.float64), or refine() the point, which casts")
  for name, array in [("params", leaf) for leaf in leaves] + [("x", x),
                                                               ("y", y)]:
    if not np.all(np.isfinite(np.asarray(array))):
      raise ValueError(f"{caller}: {name} contains NaN or inf (did training "
                       "diverge?); drop this member")
  x = jnp.asarray(x, EXACT_DTYPE)
  y = jnp.asarray(y, EXACT_DTYPE)
  if x.ndim != 2 or x.shape[1] != model.d_in:
    raise ValueError(f"{caller}: x must have shape (m, {model.d_in}) for "
                     f"{model}, got {x.shape}")
  if y.ndim != 2 or y.shape != (x.shape[0], model.d_out):
    raise ValueError(f"{caller}: y must have shape ({x.shape[0]}, "
                     f"{model.d_out}) to match x {x.shape} and d_out="
                     f"{model.d_out}, got {y.shape}")
  return cast_params(params, EXACT_DTYPE), x, y


# ---------------------------------------------------------------------------
# Refinement.


@dataclasses.dataclass(frozen=True)
class RefineResult:
  """Outcome of ``refine``.

  Attributes:
    params: float64 parameters at the last iterate.
    loss: L at ``params``.
    grad_norm: ``||grad L||_2`` at ``params``.
    iters: Newton iterations taken (accepted steps).
    converged: ``grad_norm <= grad_tol``.
    stop_reason: one of ``STOP_REASONS``: ``"grad_tol"``, ``"max_iters"``,
      ``"stalled"`` (no step decreased the merit function), ``"non_finite"``
      or ``"escaping"`` (the parameter norm outgrew ``escape_ratio``; see the
      module docstring).
    grad_norm_history: ``||g||`` at the start and after every iteration.
    method: ``"lm"`` or ``"newton_mr"``.
    param_norm_start: ``||theta_0||_2`` of the (float64) starting point.
    param_norm: ``||theta||_2`` at ``params``; a large ratio to
      ``param_norm_start`` flags saturated units even when ``converged``.
  """
  params: Params
  loss: float
  grad_norm: float
  iters: int
  converged: bool
  stop_reason: str
  grad_norm_history: tuple[float, ...]
  method: str
  param_norm_start: float
  param_norm: float


class _Problem:
  """Flat-vector view of one (model, data) pair with compiled pieces."""

  def __init__(self, model: MLP, normalization: str, params: Params,
               x: jax.Array, y: jax.Array):
    self.model, self.normalization, self.x, self.y = model, normalization, x, y
    self.start, self.unravel = hessian.flatten_params(params)
    self.like = params  # shape template; only its structure is read
    self.dim = int(self.start.size)

  def loss_and_grad(self, flat: jax.Array) -> tuple[float, np.ndarray]:
    loss, grad = _flat_loss_and_grad(self.model, self.normalization, flat,
                                     self.like, self.x, self.y)
    return float(loss), np.asarray(grad)

  def dense_hessian(self, flat: jax.Array) -> np.ndarray:
    return np.asarray(_flat_dense_hessian(
        self.model, self.normalization, flat, self.like, self.x, self.y))

  def hvp_operator(self, flat: jax.Array) -> jax.tree_util.Partial:
    return jax.tree_util.Partial(
        _flat_hvp_fn(self.model, self.normalization), flat, self.like,
        self.x, self.y)


def _lm_step(problem: _Problem, flat: np.ndarray, loss: float,
             grad: np.ndarray, nu: float, max_trials: int = 40):
  """One accepted LM step, or None. Returns (flat, loss, grad, nu)."""
  lam, vecs = np.linalg.eigh(problem.dense_hessian(jnp.asarray(flat)))
  grad_norm = float(np.linalg.norm(grad))
  coeffs = vecs.T @ grad
  shift = max(0.0, -float(lam[0]))
  for _ in range(max_trials):
    mu = shift + nu * grad_norm
    step_coeffs = -coeffs / (lam + mu)
    # -(g.d + d.H d / 2) in the eigenbasis, positive since H + mu I > 0.
    predicted = -float(np.sum(step_coeffs * coeffs
                              + 0.5 * lam * step_coeffs ** 2))
    candidate = flat + vecs @ step_coeffs
    new_loss, new_grad = problem.loss_and_grad(jnp.asarray(candidate))
    new_grad_norm = float(np.linalg.norm(new_grad))
    if math.isfinite(new_loss) and math.isfinite(new_grad_norm):
      if predicted <= _LOSS_NOISE * abs(loss):
        # Decrease too small to measure in L: judge by the gradient norm.
        accept, very_good = new_grad_norm < grad_norm, True
      else:
        ratio = (loss - new_loss) / predicted
        accept, very_good = ratio > 0.1, ratio > 0.75
      if accept:
        return candidate, new_loss, new_grad, (nu / 4 if very_good else nu)
    nu = max(4.0 * nu, 1e-8)
  return None


def _newton_mr_step(problem: _Problem, flat: np.ndarray, grad: np.ndarray,
                    max_backtracks: int = 40, armijo: float = 1e-4):
  """One Newton-MR step with Armijo backtracking on ||g||^2 / 2, or None."""
  operator = problem.hvp_operator(jnp.asarray(flat))
  matvec = lambda v: np.asarray(operator(jnp.asarray(v, EXACT_DTYPE)))
  linear_op = scipy.sparse.linalg.LinearOperator(
      (problem.dim, problem.dim), matvec=matvec, dtype=np.float64)
  grad_norm = float(np.linalg.norm(grad))
  # Inexact Newton forcing term min(1e-2, ||g||): superlinear convergence.
  direction, _ = scipy.sparse.linalg.minres(
      linear_op, -grad, rtol=max(min(1e-2, grad_norm), 1e-14),
      maxiter=10 * problem.dim)
  slope = float(grad @ matvec(direction))  # <H g, d>
  if not slope < 0:
    # MINRES failed to give a descent direction for ||g||^2: steepest descent.
    direction = -matvec(grad)
    slope = -float(direction @ direction)
  merit = 0.5 * grad_norm ** 2
  step = 1.0
  for _ in range(max_backtracks):
    candidate = flat + step * direction
    new_loss, new_grad = problem.loss_and_grad(jnp.asarray(candidate))
    new_merit = 0.5 * float(new_grad @ new_grad)
    if math.isfinite(new_loss) and new_merit <= merit + armijo * step * slope:
      return candidate, new_loss, new_grad
    step *= 0.5
  return None


def refine(model: MLP, params: Params, x: Any, y: Any, *,
           normalization: str = "mean", method: str = "lm",
           grad_tol: float = 1e-10, max_iters: int = 100,
           lm_max_params: int = 5000,
           escape_ratio: float | None = 5.0) -> RefineResult:
  """Drives ``params`` to a critical point of the squared loss in float64.

  See the module docstring for the two methods. Stops when ``||grad L||_2 <=
  grad_tol``, after ``max_iters`` Newton iterations, when no step decreases
  the merit function (``"stalled"``), or when ``||theta|| > escape_ratio *
  max(1, ||theta_0||)`` (``"escaping"``: the iterates are running off to
  infinity rather than to a nearby critical point).

  Args:
    model: the network.
    params: starting point (any float dtype; cast to float64).
    x: inputs, shape (m, d_in); cast to float64.
    y: targets, shape (m, d_out); cast to float64.
    normalization: ``"mean"`` or ``"sum"`` (``lminima.losses``).
    method: ``"lm"`` (minima, dense Hessian), ``"newton_mr"`` (any
      critical point, matrix free) or ``"auto"`` (``"lm"`` up to
      ``lm_max_params`` parameters, ``"newton_mr"`` above).
    grad_tol: target gradient norm.
    max_iters: cap on Newton iterations.
    lm_max_params: largest n_params for ``"lm"`` (dense eigh per iteration).
    escape_ratio: parameter-norm growth (> 1) that counts as escaping; None
      never stops for it.

  Returns:
    A ``RefineResult``.

  Raises:
    ValueError: on an unknown method, bad tolerances, params that do not fit
      ``model``, NaN/inf inputs or mismatched shapes.

  Example:
    >>> import jax, numpy as np
    >>> from lminima.models import MLP
    >>> model = MLP(d_in=1, widths=(), d_out=1, activation="identity")
    >>> x, y = np.array([[1.0], [2.0]]), np.array([[1.0], [3.0]])
    >>> result = refine(model, model.init(jax.random.PRNGKey(0)), x, y)
    >>> result.stop_reason
    'grad_tol'
  """
  if method not in METHODS:
    raise ValueError(f"refine: unknown method {method!r}; choose one of "
                     f"{METHODS}")
  if not grad_tol > 0 or max_iters < 0:
    raise ValueError(f"refine: need grad_tol > 0 and max_iters >= 0, got "
                     f"grad_tol={grad_tol}, max_iters={max_iters}")
  if escape_ratio is not None and not escape_ratio > 1:
    raise ValueError(f"refine: need escape_ratio > 1 or None, got "
                     f"{escape_ratio}")
  if method == "auto":
    method = "lm" if model.n_params <= lm_max_params else "newton_mr"
  if method == "lm" and model.n_params > lm_max_params:
    raise ValueError(
        f"refine: method='lm' diagonalizes the dense Hessian, and n_params="
        f"{model.n_params} > lm_max_params={lm_max_params}; use "
        "method='newton_mr' (matrix free) or raise lm_max_params")
  params, x, y = _checked_inputs(model, params, x, y, normalization,
                                 require_float64=False, caller="refine")
  problem = _Problem(model, normalization, params, x, y)
  flat = np.asarray(problem.start)
  norm_start = float(np.linalg.norm(flat))
  escape_norm = (math.inf if escape_ratio is None
                 else escape_ratio * max(1.0, norm_start))
  loss, grad = problem.loss_and_grad(jnp.asarray(flat))
  history = [float(np.linalg.norm(grad))]
  nu, iters, stop_reason = 1.0, 0, "max_iters"
  with _serial_blas():
    while True:
      if not (math.isfinite(loss) and math.isfinite(history[-1])):
        stop_reason = "non_finite"
        break
      if history[-1] <= grad_tol:
        stop_reason = "grad_tol"
        break
      if np.linalg.norm(flat) > escape_norm:
        stop_reason = "escaping"
        break
      if iters >= max_iters:
        break
      if method == "lm":
        outcome = _lm_step(problem, flat, loss, grad, nu)
        if outcome is not None:
          flat, loss, grad, nu = outcome
      else:
        outcome = _newton_mr_step(problem, flat, grad)
        if outcome is not None:
          flat, loss, grad = outcome
      if outcome is None:
        stop_reason = "stalled"
        break
      iters += 1
      history.append(float(np.linalg.norm(grad)))
  return RefineResult(
      params=problem.unravel(jnp.asarray(flat, EXACT_DTYPE)), loss=loss,
      grad_norm=history[-1], iters=iters,
      converged=stop_reason == "grad_tol", stop_reason=stop_reason,
      grad_norm_history=tuple(history), method=method,
      param_norm_start=norm_start, param_norm=float(np.linalg.norm(flat)))


# ---------------------------------------------------------------------------
# Certificates.


@dataclasses.dataclass(frozen=True)
class Certificate:
  """Second-order record of one point; see the module docstring.

  Attributes:
    n_params: number of parameters n.
    loss: L(theta).
    grad_norm: ``||grad L||_2``.
    grad_norm_rel: ``grad_norm / (1 + |L|)``.
    lambda_min: smallest Hessian eigenvalue (Ritz value on the Lanczos path).
    lambda_max: largest Hessian eigenvalue.
    residual_min: ``||H v - lambda_min v||`` of the reported pair.
    residual_max: the same for ``lambda_max``.
    index: number of eigenvalues ``< -eig_tol`` (lower bound for Lanczos).
    n_flat: number of eigenvalues with ``|lambda| <= eig_tol`` (Lanczos:
      counted from Ritz values, a lower bound in practice).
    grad_tol: absolute gradient-norm tolerance used.
    eig_tol: eigenvalue tolerance used.
    kink_tol: pre-activation tolerance used for relu/leaky_relu.
    min_abs_preactivation: ``min |Z^(l)_ij|`` over hidden layers and samples;
      None for smooth activations.
    method: ``"dense"`` or ``"lanczos"``.
    verdict: one of ``VERDICTS``.
  """
  n_params: int
  loss: float
  grad_norm: float
  grad_norm_rel: float
  lambda_min: float
  lambda_max: float
  residual_min: float
  residual_max: float
  index: int
  n_flat: int
  grad_tol: float
  eig_tol: float
  kink_tol: float
  min_abs_preactivation: float | None
  method: str
  verdict: str

  def to_dict(self) -> dict[str, Any]:
    """JSON-ready dict; non-finite floats become None (strict JSON)."""
    def plain(value):
      if isinstance(value, float) and not math.isfinite(value):
        return None
      return value
    return {field.name: plain(getattr(self, field.name))
            for field in dataclasses.fields(self)}


def _spectrum_summary(problem: _Problem, flat: jax.Array,
                      dense_max_params: int, key: jax.Array):
  """(ascending eigenvalues or Ritz values, lam_min, lam_max, res_min,
  res_max, method)."""
  if problem.dim <= dense_max_params:
    matrix = problem.dense_hessian(flat)
    with _serial_blas():
      lam, vecs = np.linalg.eigh(matrix)
    ends = vecs[:, [0, -1]]
    residuals = np.linalg.norm(matrix @ ends - ends * lam[[0, -1]], axis=0)
    return (lam, float(lam[0]), float(lam[-1]), float(residuals[0]),
            float(residuals[1]), "dense")
  eigs = hessian.lanczos_extreme_eigs(problem.hvp_operator(flat), problem.dim,
                                      key=key)
  return (np.asarray(eigs.ritz_values), eigs.lambda_min, eigs.lambda_max,
          eigs.residual_min, eigs.residual_max, "lanczos")


def certificate(model: MLP, params: Params, x: Any, y: Any, *,
                normalization: str = "mean", dense_max_params: int = 3000,
                grad_tol: float = 1e-8, eig_tol: float | None = None,
                kink_tol: float = 1e-8, key: jax.Array | None = None
                ) -> Certificate:
  """Certifies ``params`` as a local minimum, saddle or neither (float64).

  Args:
    model: the network.
    params: float64 parameters (``refine`` returns them).
    x: float64 inputs, shape (m, d_in): the FULL training set.
    y: float64 targets, shape (m, d_out).
    normalization: ``"mean"`` or ``"sum"``; must match training.
    dense_max_params: dense eigh up to this many parameters, Lanczos above.
    grad_tol: absolute tolerance on ``||grad L||``.
    eig_tol: eigenvalue tolerance; default ``1e-6 * max(|lambda_min|,
      |lambda_max|)``.
    kink_tol: relu/leaky_relu pre-activations within this of 0 make the
      verdict ``non_differentiable``.
    key: PRNG key of the Lanczos start vector (default ``PRNGKey(0)``).

  Returns:
    A ``Certificate``.

  Raises:
    ValueError: if params do not fit ``model``, params/x/y are not float64,
      contain NaN/inf, or x and y shapes do not match the model.

  Example:
    >>> import jax.numpy as jnp, numpy as np
    >>> from lminima.models import MLP
    >>> model = MLP(d_in=1, widths=(1,), d_out=1, activation="identity",
    ...             bias=False)
    >>> origin = ({"w": jnp.zeros((1, 1))}, {"w": jnp.zeros((1, 1))})
    >>> cert = certificate(model, origin, np.ones((2, 1)), np.ones((2, 1)))
    >>> cert.verdict, cert.index
    ('saddle', 1)
  """
  if not (grad_tol > 0 and kink_tol >= 0 and dense_max_params >= 0
          and (eig_tol is None or eig_tol >= 0)):
    raise ValueError(
        "certificate: need grad_tol > 0, kink_tol >= 0, dense_max_params >= 0"
        f" and eig_tol >= 0 or None; got grad_tol={grad_tol}, kink_tol="
        f"{kink_tol}, dense_max_params={dense_max_params}, eig_tol={eig_tol}")
  params, x, y = _checked_inputs(model, params, x, y, normalization,
                                 require_float64=True, caller="certificate")
  problem = _Problem(model, normalization, params, x, y)
  flat = problem.start
  loss, grad = problem.loss_and_grad(flat)
  grad_norm = float(np.linalg.norm(grad))
  finite = math.isfinite(loss) and math.isfinite(grad_norm)
  min_abs_pre = None
  if model.activation in KINKED_ACTIVATIONS and model.depth > 0:
    min_abs_pre = float(_min_abs_preactivation(model, params, x))
  nan = float("nan")
  values, lam_min, lam_max, res_min, res_max, method = (
      (np.array([]), nan, nan, nan, nan,
       "dense" if problem.dim <= dense_max_params else "lanczos")
      if not finite else _spectrum_summary(
          problem, flat, dense_max_params,
          jax.random.PRNGKey(0) if key is None else key))
  if eig_tol is None:
    eig_tol = 1e-6 * max(abs(lam_min), abs(lam_max)) if finite else nan
  index = int(np.sum(values < -eig_tol))
  n_flat = int(np.sum(np.abs(values) <= eig_tol))
  if not finite or grad_norm > grad_tol:
    verdict = "not_critical"
  elif min_abs_pre is not None and min_abs_pre <= kink_tol:
    verdict = "non_differentiable"
  elif index > 0:
    verdict = "saddle"
  else:
    verdict = "local_min"
  return Certificate(
      n_params=problem.dim, loss=loss, grad_norm=grad_norm,
      grad_norm_rel=grad_norm / (1.0 + abs(loss)), lambda_min=lam_min,
      lambda_max=lam_max, residual_min=res_min, residual_max=res_max,
      index=index, n_flat=n_flat, grad_tol=float(grad_tol),
      eig_tol=float(eig_tol), kink_tol=float(kink_tol),
      min_abs_preactivation=min_abs_pre, method=method, verdict=verdict)


def refine_and_certify(
    members: Sequence[tuple[MLP, Params]], x: Any, y: Any, *,
    normalization: str = "mean", refine_kwargs: dict[str, Any] | None = None,
    certificate_kwargs: dict[str, Any] | None = None,
    progress: Callable[[int, int, RefineResult, Certificate], None]
    | None = None) -> list[tuple[RefineResult, Certificate]]:
  """Refines and certifies each ``(model, params)`` member on one data set.

  Members may differ in shape, so this is a loop; members sharing a shape
  reuse the compiled pieces (cached per model and shapes). The certificate
  is taken at the refined point even when refinement did not converge (its
  verdict then says ``not_critical``).

  Args:
    members: ``(model, params)`` pairs, e.g. unpadded members of a trained
      population.
    x: inputs (m, d_in), the full training set; cast to float64 once.
    y: targets (m, d_out); cast to float64 once.
    normalization: ``"mean"`` or ``"sum"``, as in training.
    refine_kwargs: extra keyword arguments of ``refine``.
    certificate_kwargs: extra keyword arguments of ``certificate``.
    progress: called as ``progress(i, n, refine_result, certificate)`` after
      member i (0-based) of n.

  Returns:
    ``[(RefineResult, Certificate), ...]`` in member order.

  Example:
    >>> import jax, numpy as np
    >>> from lminima.models import MLP
    >>> model = MLP(d_in=1, widths=(), d_out=1, activation="identity")
    >>> members = [(model, model.init(jax.random.PRNGKey(s))) for s in (0, 1)]
    >>> out = refine_and_certify(members, np.array([[1.0], [2.0]]),
    ...                          np.array([[1.0], [3.0]]))
    >>> [cert.verdict for _, cert in out]
    ['local_min', 'local_min']
  """
  x = np.asarray(x, np.float64)
  y = np.asarray(y, np.float64)
  x_device, y_device = jnp.asarray(x), jnp.asarray(y)
  results = []
  for i, (model, params) in enumerate(members):
    refined = refine(model, params, x_device, y_device,
                     normalization=normalization, **(refine_kwargs or {}))
    cert = certificate(model, refined.params, x_device, y_device,
                       normalization=normalization,
                       **(certificate_kwargs or {}))
    results.append((refined, cert))
    if progress is not None:
      progress(i, len(members), refined, cert)
  return results
