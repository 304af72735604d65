"""Sharpness of a minimum (Keskar et al. 2017) beside the Hessian measures.

The epsilon-sharpness of the objective f at the point x, in the subspace
spanned by the columns of an n x p matrix A (docs/theory.md#sharpness), is

    phi(eps, A) = 100 * (max_{y in C} f(x + A y) - f(x)) / (1 + f(x)),
    C = {y in R^p : |y_i| <= eps (|(A^+ x)_i| + 1)},

with A = I (the full space, p = n) or a random Gaussian n x p matrix (entries
N(0, 1), seeded); A^+ is its pseudo-inverse. Since y = 0 lies in C, phi >= 0.
The inner maximum is solved approximately, from y = 0, by one of

* ``"lbfgsb"``: a few iterations of box-constrained L-BFGS-B
  (``scipy.optimize.minimize``) on -f(x + A y), with the gradient
  -A^T grad f(x + A y) from the problem (the method of Keskar et al.);
* ``"projected_gradient"``: projected sign-gradient ascent
  y <- P_C(y + 2 w * sign(A^T grad f(x + A y))), w the box half-widths,
  i.e. y <- argmax_{y' in C} <grad, y'> wherever the gradient is nonzero.
  For convex f each step cannot decrease f (f(y') >= f(y) + <grad, y' - y>),
  so it is a monotone conditional-gradient ascent over the box's vertices.

Every evaluated point is feasible; the best one is reported, so phi is a
lower bound of the exact sharpness (a local method can miss the global max of
a nonconvex function, and the max of a convex one over a box is at a vertex:
NP-hard in general).

Start at a critical point. At a minimum grad f(x) = 0, so y = 0 is a
stationary point of the inner problem and both methods stop at once with
phi = 0 (Keskar et al. face the same). With ``start="auto"`` (the default) the
start is y = 0 unless the first-order gain from it, max_i w_i |(A^T grad
f(x))_i|, is below float64 rounding of f (4 * machine epsilon * (1 + |f|));
then it is y0 = ``start_fraction`` * w * s with random signs s, a tiny point
inside the box from which the curvature drives the ascent.
``start="zero"`` and ``start="random"`` force either.

The Hessian measures beside it (``hessian_measures``): lambda_max (dense
``eigvalsh`` for small n, else Lanczos with its residual) and tr(H) (exact,
or Hutch++). For f(x) = 1/2 x^T H x with H diagonal PSD, at x = 0 with A = I:
max_C f = 1/2 eps^2 tr(H), so phi = 50 eps^2 tr(H).

The small-batch vs large-batch experiment behind ``scripts/sharpness.py``
that uses these measures is ``lminima.related.sharpness.study`` (its settings in
``lminima.related.sharpness.config``, its report in
``lminima.related.sharpness.report``).

Example:
  >>> import numpy as np
  >>> from lminima import Problem
  >>> h = np.array([1.0, 2.0, 3.0])          # f(w) = 1/2 w^T diag(h) w
  >>> problem = Problem(lambda p, x: x @ p["w"], {"w": np.zeros((3, 1))},
  ...                   np.diag(np.sqrt(h)), np.zeros((3, 1)),
  ...                   normalization="sum")
  >>> result = epsilon_sharpness(problem, 0.1)
  >>> closed_form = 50 * 0.1**2 * float(h.sum())   # phi = 50 eps^2 tr(H)
  >>> result.start, round(result.phi, 10), round(closed_form, 10)
  ('random', 3.0, 3.0)
  >>> measures = hessian_measures(problem, key=jax.random.PRNGKey(0))
  >>> round(measures.lambda_max, 10), round(measures.trace, 10)
  (3.0, 6.0)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize

from lminima.core.problem import Problem
from lminima.linalg import lanczos
from lminima.linalg import slq

METHODS = ("lbfgsb", "projected_gradient")
"""Inner maximizers of ``epsilon_sharpness``."""

STARTS = ("auto", "zero", "random")
"""Start rules of the inner maximization (module docstring)."""


@dataclasses.dataclass(frozen=True)
class Sharpness:
  """The epsilon-sharpness of one problem at its point.

  Attributes:
    phi: 100 (loss_max - loss) / (1 + loss), >= 0.
    phi_linear: the same for the first-order model f(x) + <A^T grad f(x), y>,
      whose max over the box is sum_i half_widths_i |(A^T grad f(x))_i|: the
      part of phi a nonzero gradient accounts for (phi >= phi_linear when f
      is convex, up to the inexact inner maximization).
    eps: the box scale epsilon.
    loss: f(x).
    loss_max: the largest f(x + A y) found, y in the box (>= loss).
    y: the maximizing y found, shape (p,).
    half_widths: the box, |y_i| <= half_widths_i = eps (|(A^+ x)_i| + 1).
    subspace_dim: p for a subspace, None for the full space (A = I).
    method: ``"lbfgsb"`` or ``"projected_gradient"``.
    start: the start used, ``"zero"`` or ``"random"``.
    iterations: iterations of the method.
    evaluations: evaluations of f and its gradient.
    fraction_at_bound: share of the coordinates of y on the box boundary.
    subspace: A (n, p), or None for the full space.
  """
  phi: float
  phi_linear: float
  eps: float
  loss: float
  loss_max: float
  y: np.ndarray = dataclasses.field(repr=False)
  half_widths: np.ndarray = dataclasses.field(repr=False)
  subspace_dim: int | None
  method: str
  start: str
  iterations: int
  evaluations: int
  fraction_at_bound: float
  subspace: np.ndarray | None = dataclasses.field(default=None, repr=False)

  def to_dict(self) -> dict[str, Any]:
    """The scalar fields (no arrays), for a results row."""
    return {"eps": self.eps, "space": ("full" if self.subspace_dim is None
                                       else "random"),
            "subspace_dim": self.subspace_dim, "phi": self.phi,
            "phi_linear": self.phi_linear,
            "loss_max": self.loss_max, "method": self.method,
            "start": self.start, "iterations": self.iterations,
            "evaluations": self.evaluations,
            "fraction_at_bound": self.fraction_at_bound}


@dataclasses.dataclass(frozen=True)
class HessianMeasures:
  """lambda_max and the trace of the Hessian at the problem's point.

  Attributes:
    lambda_max: the largest eigenvalue (or Ritz value).
    residual_max: ||H v - lambda_max v|| of the reported unit vector v.
    lambda_method: ``"dense"`` (eigvalsh) or ``"lanczos"``.
    trace: tr(H), exact (``"dense"``) or a Hutch++ estimate.
    trace_method: ``"dense"`` or ``"hutchpp"``.
  """
  lambda_max: float
  residual_max: float
  lambda_method: str
  trace: float
  trace_method: str


def random_subspace(n: int, p: int, key: jax.Array) -> np.ndarray:
  """A Gaussian n x p matrix (entries N(0, 1)) from ``key``, float64.

  Example:
    >>> random_subspace(5, 2, jax.random.PRNGKey(0)).shape
    (5, 2)
  """
  for name, value in (("n", n), ("p", p)):
    if isinstance(value, bool) or int(value) != value or value < 1:
      raise ValueError(f"{name} must be a positive integer, got {value!r}")
  if p > n:
    raise ValueError(f"subspace dimension p={p} exceeds the {n} parameters")
  return np.asarray(jax.random.normal(key, (int(n), int(p)), jnp.float64))


def box_half_widths(point: Any, eps: float,
                    subspace: np.ndarray | None = None) -> np.ndarray:
  """eps (|(A^+ x)_i| + 1): the half-widths of the sharpness box.

  Example:
    >>> box_half_widths(np.array([0.0, -2.0]), 0.1)
    array([0.1, 0.3])
  """
  check_eps(eps)
  point = np.asarray(point, np.float64)
  coords = point if subspace is None else np.linalg.pinv(subspace) @ point
  return eps * (np.abs(coords) + 1.0)


def check_eps(eps: float) -> None:
  """Raises ValueError unless ``eps`` is a finite positive number."""
  if isinstance(eps, bool) or not (isinstance(eps, (int, float, np.floating))
                                   and math.isfinite(eps) and eps > 0):
    raise ValueError(f"eps must be a finite positive number, got {eps!r}")


def epsilon_sharpness(problem: Problem, eps: float, *,
                      subspace_dim: int | None = None,
                      subspace: np.ndarray | None = None,
                      key: jax.Array | None = None, method: str = "lbfgsb",
                      max_iters: int = 10, start: str = "auto",
                      start_fraction: float = 1e-2) -> Sharpness:
  """phi(eps, A) of Keskar et al. at the problem's point (module docstring).

  Args:
    problem: the objective f and the point x (``problem.flat``).
    eps: box scale, > 0.
    subspace_dim: p for a random Gaussian n x p matrix A drawn from ``key``;
      None (and no ``subspace``) for the full space A = I.
    subspace: an explicit n x p matrix A instead (full column rank advised).
    key: PRNG key of the random subspace (first half of the split) and of a
      random start (second half); default ``PRNGKey(0)``.
    method: ``"lbfgsb"`` or ``"projected_gradient"``.
    max_iters: iterations of the method (a few, as Keskar et al.).
    start: ``"auto"``, ``"zero"`` or ``"random"`` (module docstring).
    start_fraction: the random start's size as a share of the half-widths.

  Returns:
    A ``Sharpness``.

  Raises:
    ValueError: for a bad eps, method, start, sizes or subspace.

  Example:
    >>> import numpy as np
    >>> from lminima import Problem
    >>> problem = Problem(lambda p, x: x @ p["w"], {"w": np.ones((2, 1))},
    ...                   np.eye(2), np.zeros((2, 1)), normalization="sum")
    >>> s = epsilon_sharpness(problem, 0.1)    # f = 1/2 ||w||^2 at w = (1, 1)
    >>> s.start, round(s.loss_max, 10), s.fraction_at_bound   # w + 0.2 each
    ('zero', 1.44, 1.0)
  """
  check_eps(eps)
  if method not in METHODS:
    raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
  if start not in STARTS:
    raise ValueError(f"unknown start {start!r}; choose one of {STARTS}")
  if isinstance(max_iters, bool) or int(max_iters) != max_iters or (
      max_iters < 1):
    raise ValueError(f"max_iters must be a positive integer, got "
                     f"{max_iters!r}")
  if not 0 < start_fraction <= 1:
    raise ValueError(f"start_fraction must be in (0, 1], got "
                     f"{start_fraction!r}")
  if subspace is not None and subspace_dim is not None:
    raise ValueError("pass subspace_dim or subspace, not both")
  key = jax.random.PRNGKey(0) if key is None else key
  subspace_key, start_key = jax.random.split(key)
  n = problem.n_params
  if subspace_dim is not None:
    subspace = random_subspace(n, subspace_dim, subspace_key)
  elif subspace is not None:
    subspace = np.asarray(subspace, np.float64)
    if subspace.ndim != 2 or subspace.shape[0] != n or subspace.shape[1] < 1:
      raise ValueError(f"subspace must have shape ({n}, p) with p >= 1, got "
                       f"{subspace.shape}")
    if not np.all(np.isfinite(subspace)):
      raise ValueError("subspace contains NaN or inf")
  point = np.asarray(problem.flat, np.float64)
  widths = box_half_widths(point, eps, subspace)
  lift = (lambda y: y) if subspace is None else (lambda y: subspace @ y)
  pull = (lambda g: g) if subspace is None else (lambda g: subspace.T @ g)

  best = {"loss": -np.inf, "y": None, "evaluations": 0}

  def value_and_grad(y):
    loss, grad = problem.loss_and_grad_at(point + lift(y))
    best["evaluations"] += 1
    if loss > best["loss"]:  # NaN never wins
      best["loss"], best["y"] = loss, np.array(y)
    return loss, pull(grad)

  loss0, grad0 = value_and_grad(np.zeros_like(widths))
  linear_gains = widths * np.abs(grad0)
  gain = float(np.max(linear_gains))
  rounding = 4 * np.finfo(np.float64).eps * (1 + abs(loss0))
  use_zero = start == "zero" or (start == "auto" and gain > rounding)
  if use_zero:
    y0, start_used = np.zeros_like(widths), "zero"
  else:
    signs = np.asarray(jax.random.rademacher(start_key, widths.shape,
                                             jnp.float64))
    y0, start_used = start_fraction * widths * signs, "random"

  if method == "lbfgsb":
    iterations = _lbfgsb(value_and_grad, y0, widths, int(max_iters))
  else:
    iterations = _projected_gradient(value_and_grad, y0, widths,
                                     int(max_iters))
  y = best["y"]
  loss_max = max(best["loss"], loss0)
  at_bound = np.isclose(np.abs(y), widths, rtol=1e-9, atol=0.0)
  return Sharpness(
      phi=float(100.0 * (loss_max - loss0) / (1.0 + loss0)),
      phi_linear=float(100.0 * np.sum(linear_gains) / (1.0 + loss0)),
      eps=float(eps),
      loss=float(loss0), loss_max=float(loss_max), y=y, half_widths=widths,
      subspace_dim=None if subspace is None else int(subspace.shape[1]),
      method=method, start=start_used, iterations=int(iterations),
      evaluations=int(best["evaluations"]),
      fraction_at_bound=float(np.mean(at_bound)), subspace=subspace)


def _lbfgsb(value_and_grad: Callable, y0: np.ndarray, widths: np.ndarray,
            max_iters: int) -> int:
  """L-BFGS-B on -f, stopping only on max_iters, a stationary point of the
  box problem (projected gradient exactly 0) or a failed line search."""
  def negated(y):
    loss, grad = value_and_grad(y)
    return -loss, -grad
  result = scipy.optimize.minimize(
      negated, y0, jac=True, method="L-BFGS-B",
      bounds=scipy.optimize.Bounds(-widths, widths),
      options={"maxiter": max_iters, "maxfun": 20 * max_iters + 20,
               "ftol": 0.0, "gtol": 0.0})
  return int(result.nit)


def _projected_gradient(value_and_grad: Callable, y0: np.ndarray,
                        widths: np.ndarray, max_iters: int) -> int:
  """y <- clip(y + 2 w sign(grad), -w, w) until y repeats or max_iters."""
  y = y0
  _, grad = value_and_grad(y)
  for iteration in range(max_iters):
    step = np.clip(y + 2.0 * widths * np.sign(grad), -widths, widths)
    if np.array_equal(step, y):
      return iteration
    y = step
    _, grad = value_and_grad(y)
  return max_iters


def hessian_measures(problem: Problem, *, key: jax.Array,
                     dense_max_params: int = 2000, lanczos_iters: int = 80,
                     lanczos_tol: float = 1e-6,
                     trace_matvecs: int = 60) -> HessianMeasures:
  """lambda_max and tr(H) at the problem's point.

  Up to ``dense_max_params`` parameters both are exact from the dense
  Hessian (``numpy.linalg.eigvalsh`` and its diagonal). Above, lambda_max is
  the largest Ritz value of Lanczos (partial reorthogonalization, at most
  ``lanczos_iters`` steps, relative tolerance ``lanczos_tol``; its true
  residual is reported) and the trace a Hutch++ estimate with
  ``trace_matvecs`` Hessian-vector products.

  Args:
    problem: the objective at the point.
    key: PRNG key of the Lanczos start and the Hutch++ probes.
    dense_max_params: largest n for the dense path.
    lanczos_iters: Lanczos step cap.
    lanczos_tol: Lanczos relative residual tolerance.
    trace_matvecs: Hutch++ budget (>= 3).

  Example:
    >>> import numpy as np
    >>> from lminima import Problem
    >>> problem = Problem(lambda p, x: x @ p["w"], {"w": np.zeros((3, 1))},
    ...                   np.diag([1.0, 2.0, 4.0]), np.zeros((3, 1)),
    ...                   normalization="sum")   # H = diag(1, 4, 16)
    >>> m = hessian_measures(problem, key=jax.random.PRNGKey(0),
    ...                      dense_max_params=0, trace_matvecs=9)
    >>> m.lambda_method, round(m.lambda_max, 8), round(m.trace, 8)
    ('lanczos', 16.0, 21.0)
  """
  if dense_max_params < 0:
    raise ValueError(f"dense_max_params must be >= 0, got {dense_max_params}")
  n = problem.n_params
  if n <= dense_max_params:
    hessian = problem.dense_hessian()
    values, vectors = np.linalg.eigh(hessian)
    residual = float(np.linalg.norm(hessian @ vectors[:, -1]
                                    - values[-1] * vectors[:, -1]))
    return HessianMeasures(lambda_max=float(values[-1]),
                           residual_max=residual, lambda_method="dense",
                           trace=float(np.trace(hessian)),
                           trace_method="dense")
  eig_key, trace_key = jax.random.split(key)
  operator = problem.hvp_operator()
  eigs = lanczos.lanczos_extreme_eigs(operator, n, key=eig_key,
                                      max_iters=lanczos_iters,
                                      tol=lanczos_tol)
  trace = slq.hutchpp_trace(operator, n, key=trace_key,
                                   num_matvecs=trace_matvecs)
  return HessianMeasures(lambda_max=eigs.lambda_max,
                         residual_max=eigs.residual_max,
                         lambda_method="lanczos", trace=trace,
                         trace_method="hutchpp")


# ---------------------------------------------------------------------------
# The experiment: small-batch vs large-batch training (scripts/sharpness.py).
