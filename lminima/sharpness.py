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

``run(config)`` is the small-batch vs large-batch experiment behind
``scripts/sharpness.py``: it trains ``num_seeds`` seeds per batch size in one
population each, measures train loss, test accuracy, sharpness and
lambda_max of every member, and writes ``results.jsonl``,
``interpolation.json``, ``interpolation.png`` and ``report.md``.

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
import json
import math
import os
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import scipy.optimize

from lminima import data as data_lib
from lminima import lanczos
from lminima import models
from lminima import population
from lminima import provenance
from lminima import records
from lminima import stochastic
from lminima import train
from lminima.problem import Problem

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
  _check_eps(eps)
  point = np.asarray(point, np.float64)
  coords = point if subspace is None else np.linalg.pinv(subspace) @ point
  return eps * (np.abs(coords) + 1.0)


def _check_eps(eps: float) -> None:
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
  _check_eps(eps)
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
  the largest Ritz value of Lanczos (full reorthogonalization, at most
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
  trace = stochastic.hutchpp_trace(operator, n, key=trace_key,
                                   num_matvecs=trace_matvecs)
  return HessianMeasures(lambda_max=eigs.lambda_max,
                         residual_max=eigs.residual_max,
                         lambda_method="lanczos", trace=trace,
                         trace_method="hutchpp")


# ---------------------------------------------------------------------------
# The experiment: small-batch vs large-batch training (scripts/sharpness.py).

RESULTS_FILE = records.RESULTS_FILE
REPORT_FILE = "report.md"
FIGURE_FILE = "interpolation.png"
INTERPOLATION_FILE = "interpolation.json"
DATASETS = ("mnist5k", "digits")
"""Offline image sources the experiment accepts."""

ROW_FIELDS = frozenset({
    # identity and provenance
    "batch_size", "batch_role", "seed", "dataset", "depth", "width",
    "activation", "bias", "normalization", "optimizer", "epochs", "n_params",
    "versions", "config",
    # end of training (float32)
    "loss", "diverged", "steps", "train_wall_s",
    # at the trained point, float64
    "train_loss", "grad_norm", "train_accuracy", "test_loss", "test_accuracy",
    "sharpness", "lambda_max", "residual_max", "lambda_method", "trace",
    "trace_method", "analysis_wall_s",
})
"""Every field a row of the experiment's results.jsonl may hold."""


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  """The experiment's settings; ``variant="smoke"`` a tiny run (< 1 minute).

  The default trains a one-hidden-layer relu MLP (width 32) with Adam on 2,000
  offline MNIST images, 8 seeds at batch 64 and 8 at 10% of the set, for
  the same number of epochs; 1,000 held-out images test it.
  """
  if variant not in ("", "smoke"):
    raise ValueError(f"unknown config variant {variant!r}; choose '' or "
                     f"'smoke'")
  config = ml_collections.ConfigDict()
  config.dataset = "mnist5k"
  config.n_train = 2000
  config.n_test = 1000
  config.data_seed = 0
  config.depth = 1
  config.width = 32
  config.activation = "relu"
  config.bias = True
  config.normalization = "mean"
  config.optimizer = "adam"
  config.learning_rate = 1e-3
  config.epochs = 100
  config.small_batch = 64
  config.large_batch_fraction = 0.1
  config.num_seeds = 8
  config.eps = (1e-3, 5e-4)
  config.subspace_dim = 100  # 0: full space only
  config.subspace_seed = 0
  config.sharpness_method = "lbfgsb"
  config.sharpness_iters = 10
  config.lanczos_iters = 80
  config.trace_matvecs = 60
  config.interp_points = 31
  config.workdir = "runs/sharpness"
  config.progress = True
  if variant == "smoke":
    config.n_train, config.n_test = 200, 100
    config.width, config.num_seeds, config.epochs = 8, 2, 5
    config.small_batch = 16
    config.subspace_dim = 5
    config.sharpness_iters = 3
    config.lanczos_iters, config.trace_matvecs = 20, 9
    config.interp_points = 7
    config.workdir = "runs/sharpness_smoke"
    config.progress = False
  return config


def batch_sizes(config: ml_collections.ConfigDict) -> tuple[int, int]:
  """(small, large): ``small_batch`` and ``large_batch_fraction * n_train``."""
  return (int(config.small_batch),
          max(1, int(round(config.large_batch_fraction * config.n_train))))


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError with a one-line message for an unusable config."""
  def positive_int(name, minimum=1):
    value = config[name]
    if isinstance(value, bool) or int(value) != value or value < minimum:
      raise ValueError(f"--{name} must be an integer >= {minimum}, got "
                       f"{value!r}")
  if config.dataset not in DATASETS:
    raise ValueError(f"--dataset must be one of {DATASETS}, got "
                     f"{config.dataset!r}")
  for name in ("n_train", "n_test", "depth", "width", "epochs",
               "small_batch", "num_seeds", "sharpness_iters",
               "lanczos_iters", "interp_points"):
    positive_int(name, minimum=2 if name in ("n_train", "interp_points")
                 else 1)
  positive_int("data_seed", 0)
  positive_int("subspace_dim", 0)
  positive_int("subspace_seed", 0)
  positive_int("trace_matvecs", 3)
  if not 0 < config.large_batch_fraction <= 1:
    raise ValueError(f"--large_batch_fraction must be in (0, 1], got "
                     f"{config.large_batch_fraction}")
  small = batch_sizes(config)[0]
  if small > config.n_train:
    raise ValueError(f"--small_batch={small} exceeds --n_train="
                     f"{config.n_train}")
  if not (isinstance(config.learning_rate, (int, float))
          and math.isfinite(config.learning_rate)
          and config.learning_rate > 0):
    raise ValueError(f"--learning_rate must be a finite positive number, "
                     f"got {config.learning_rate!r}")
  if not config.eps:
    raise ValueError("--eps is empty; give at least one value")
  for eps in config.eps:
    try:
      _check_eps(eps)
    except ValueError:
      raise ValueError(f"--eps must be finite positive numbers, got "
                       f"{tuple(config.eps)}") from None
  if config.sharpness_method not in METHODS:
    raise ValueError(f"--sharpness_method must be one of {METHODS}, got "
                     f"{config.sharpness_method!r}")
  models.get_activation(config.activation)
  population.TrainConfig(activation=config.activation,
                         optimizer=config.optimizer,
                         normalization=config.normalization)
  if not config.workdir:
    raise ValueError("--workdir is empty")


def load_split(config: ml_collections.ConfigDict
               ) -> tuple[data_lib.Dataset, data_lib.Dataset]:
  """Disjoint train and test sets from one stratified sample.

  ``load(dataset, n=n_train + n_test, seed=data_seed, standardize=False)``
  is split per class in sample order (the test set takes the last images of
  each class, class shares proportional). Pixels stay in [0, 1]:
  per-feature standardization on the training set would blow up test pixels
  that are rarely nonzero in training.
  """
  full = data_lib.load(config.dataset, n=config.n_train + config.n_test,
                       seed=config.data_seed, standardize=False)
  labels = np.argmax(full.y, axis=1)
  counts = np.bincount(labels, minlength=full.d_y)
  quotas = config.n_test * counts // full.m
  for c in np.argsort(-(config.n_test * counts % full.m), kind="stable"):
    if quotas.sum() == config.n_test:
      break
    quotas[c] += 1
  test = np.zeros(full.m, bool)
  for c in range(full.d_y):
    members = np.flatnonzero(labels == c)
    test[members[len(members) - quotas[c]:]] = True
  split = dict(full.provenance, n_train=int((~test).sum()),
               n_test=int(test.sum()),
               split="per class, last images of the sample held out")
  return (data_lib.Dataset(full.x[~test], full.y[~test],
                           dict(split, part="train")),
          data_lib.Dataset(full.x[test], full.y[test],
                           dict(split, part="test")))


def _accuracy(yhat: np.ndarray, y: np.ndarray) -> float:
  return float(np.mean(np.argmax(yhat, axis=1) == np.argmax(y, axis=1)))


def analyse_member(result: population.MemberResult, train_set: data_lib.Dataset,
                   test_set: data_lib.Dataset,
                   config: ml_collections.ConfigDict,
                   subspace: np.ndarray | None) -> dict[str, Any]:
  """Float64 measurements at a trained member's point: row fields."""
  problem = Problem.for_module(result.model, result.params, train_set.x,
                               train_set.y,
                               normalization=config.normalization)
  test_problem = Problem.for_module(result.model, result.params, test_set.x,
                                    test_set.y,
                                    normalization=config.normalization)
  seed = result.member.seed
  key = jax.random.PRNGKey(seed)
  sharp = []
  for eps in config.eps:
    for matrix in ((None, subspace) if subspace is not None else (None,)):
      sharp.append(epsilon_sharpness(
          problem, float(eps), subspace=matrix, key=key,
          method=config.sharpness_method,
          max_iters=config.sharpness_iters).to_dict())
  measures = hessian_measures(problem, key=key,
                              lanczos_iters=config.lanczos_iters,
                              trace_matvecs=config.trace_matvecs)
  return {
      "train_loss": problem.loss, "grad_norm": problem.grad_norm,
      "train_accuracy": _accuracy(problem.yhat(), train_set.y),
      "test_loss": test_problem.loss,
      "test_accuracy": _accuracy(test_problem.yhat(), test_set.y),
      "sharpness": sharp, **dataclasses.asdict(measures)}


def _interpolate(sb: population.MemberResult, lb: population.MemberResult,
                 train_set: data_lib.Dataset, test_set: data_lib.Dataset,
                 config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Loss and accuracy along f(alpha x_LB + (1 - alpha) x_SB), alpha in
  [-1, 2]."""
  problems = {name: Problem.for_module(sb.model, sb.params, ds.x, ds.y,
                                       normalization=config.normalization)
              for name, ds in (("train", train_set), ("test", test_set))}
  x_sb = problems["train"].flat
  x_lb = problems["train"].at(lb.params).flat
  alphas = np.linspace(-1.0, 2.0, config.interp_points)
  curves = {f"{name}_{what}": [] for name in problems
            for what in ("loss", "accuracy")}
  for alpha in alphas:
    flat = alpha * x_lb + (1 - alpha) * x_sb
    for name, problem in problems.items():
      at = problem.at(problem.unravel(flat))
      curves[f"{name}_loss"].append(at.loss)
      curves[f"{name}_accuracy"].append(_accuracy(at.yhat(), problem.y))
  return {"alpha": alphas.tolist(), "seed_small": sb.member.seed,
          "seed_large": lb.member.seed, **curves}


def plot_interpolation(curve: dict[str, Any], sizes: tuple[int, int],
                       path: str) -> None:
  """Train/test loss (log, left) and accuracy (right) along the line."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, ax = plt.subplots(figsize=(6, 4))
  acc = ax.twinx()
  alpha = curve["alpha"]
  for name, style in (("train", "-"), ("test", "--")):
    ax.plot(alpha, curve[f"{name}_loss"], style, color="C0",
            label=f"{name} loss")
    acc.plot(alpha, curve[f"{name}_accuracy"], style, color="C3",
             label=f"{name} accuracy")
  for value, text in ((0.0, f"SB (batch {sizes[0]})"),
                      (1.0, f"LB (batch {sizes[1]})")):
    ax.axvline(value, color="gray", ls=":", lw=1)
    ax.text(value, 1.02, text, transform=ax.get_xaxis_transform(),
            ha="center", fontsize=8)
  ax.set_yscale("log")
  ax.set_xlabel(r"$\alpha$ in $\alpha\, x_{LB} + (1 - \alpha)\, x_{SB}$")
  ax.set_ylabel("squared loss (mean)", color="C0")
  acc.set_ylabel("accuracy", color="C3")
  acc.set_ylim(0, 1)
  lines = ax.get_legend_handles_labels()
  more = acc.get_legend_handles_labels()
  ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=8,
            loc="center left")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _cell(values: Sequence[float], fmt: str) -> str:
  values = [v for v in values if v is not None and math.isfinite(v)]
  if not values:
    return "-"
  return (f"{format(float(np.median(values)), fmt)} "
          f"[{format(min(values), fmt)}, {format(max(values), fmt)}]")


def _phi(row: dict[str, Any], eps: float, space: str,
         field: str = "phi") -> float | None:
  for entry in row.get("sharpness") or ():
    if entry["space"] == space and math.isclose(entry["eps"], eps):
      return entry.get(field)
  return None


def _measures(config) -> list[tuple[str, Callable[[dict], Any], str]]:
  """(column title, row -> value, format) of the table."""
  columns = [("train loss", lambda r: r.get("train_loss"), ".4f"),
             ("train acc", lambda r: r.get("train_accuracy"), ".3f"),
             ("test acc", lambda r: r.get("test_accuracy"), ".3f")]
  spaces = [("full", "full")]
  if config.subspace_dim:
    spaces.append(("random", f"{config.subspace_dim}-dim"))
  for eps in config.eps:
    for space, label in spaces:
      columns.append((f"phi {label} eps={eps:g}",
                      lambda r, e=eps, s=space: _phi(r, e, s), ".4g"))
  eps = config.eps[0]
  columns.append((f"phi_linear full eps={eps:g}",
                  lambda r: _phi(r, eps, "full", "phi_linear"), ".4g"))
  columns += [("lambda_max", lambda r: r.get("lambda_max"), ".4g"),
              ("trace", lambda r: r.get("trace"), ".4g")]
  return columns


def summary_table(rows: Sequence[dict[str, Any]],
                  config: ml_collections.ConfigDict) -> str:
  """Markdown: per batch size, median [min, max] over seeds of every
  measure, and the number of seeds at which the large batch is larger."""
  columns = _measures(config)
  sizes = sorted({r["batch_size"] for r in rows})
  header = ["batch", "seeds (diverged)"] + [c[0] for c in columns]
  lines = ["| " + " | ".join(header) + " |",
           "|" + "---|" * len(header)]
  for size in sizes:
    group = [r for r in rows if r["batch_size"] == size]
    sane = [r for r in group if not r.get("diverged")]
    lines.append("| " + " | ".join(
        [str(size), f"{len(sane)} ({len(group) - len(sane)})"]
        + [_cell([get(r) for r in sane], fmt) for _, get, fmt in columns])
        + " |")
  if len(sizes) == 2:
    small = {r["seed"]: r for r in rows
             if r["batch_size"] == sizes[0] and not r.get("diverged")}
    large = {r["seed"]: r for r in rows
             if r["batch_size"] == sizes[1] and not r.get("diverged")}
    seeds = sorted(set(small) & set(large))
    cells = []
    for _, get, _ in columns:
      pairs = [(get(small[s]), get(large[s])) for s in seeds]
      pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
      cells.append(f"{sum(b > a for a, b in pairs)}/{len(pairs)}")
    lines.append("| LB > SB (same seed) | " + str(len(seeds)) + " | "
                 + " | ".join(cells) + " |")
  return "\n".join(lines)


def write_report(rows: Sequence[dict[str, Any]],
                 config: ml_collections.ConfigDict, path: str,
                 interpolation: dict[str, Any] | None) -> None:
  """``report.md``: the setup, the table and the interpolation figure."""
  small, large = batch_sizes(config)
  text = [
      "# Sharpness of small-batch vs large-batch minima",
      "",
      f"{config.dataset}: {config.n_train} training and {config.n_test} "
      f"held-out images (data seed {config.data_seed}); MLP depth "
      f"{config.depth}, width {config.width}, {config.activation}; "
      f"{config.optimizer} (learning rate {config.learning_rate:g}) for "
      f"{config.epochs} epochs at batch {small} (SB) and {large} (LB), "
      f"{config.num_seeds} seeds each, squared loss on one-hot targets "
      f"({config.normalization} normalization).",
      "",
      f"Sharpness phi(eps, A) (docs/theory.md#sharpness) by "
      f"{config.sharpness_method}, {config.sharpness_iters} iterations from "
      f"y = 0; A = I (full) and a random Gaussian "
      f"{config.subspace_dim}-dim subspace (seed {config.subspace_seed}). "
      "phi_linear is the first-order part, 100 sum_i w_i |(A^T grad)_i| / "
      "(1 + f), w the box half-widths. "
      "Cells: median [min, max] over the seeds that did not diverge; the "
      "last line counts the seeds at which LB's value exceeds SB's.",
      "",
      summary_table(rows, config),
      "",
  ]
  if interpolation is not None:
    text += [f"![interpolation]({FIGURE_FILE})",
             "",
             f"1-D interpolation alpha x_LB + (1 - alpha) x_SB (seeds "
             f"{interpolation['seed_small']} and "
             f"{interpolation['seed_large']}, same initialization), data in "
             f"{INTERPOLATION_FILE}.", ""]
  with open(path, "w") as f:
    f.write("\n".join(text))


def run(config: ml_collections.ConfigDict,
        log: Callable[[str], None] = print) -> list[dict[str, Any]]:
  """Runs the small-batch vs large-batch experiment; returns its rows.

  Trains ``num_seeds`` members per batch size (one population each), appends
  one row per member to ``<workdir>/results.jsonl`` (schema ``ROW_FIELDS``),
  and writes ``interpolation.json``, ``interpolation.png`` (seed pairs
  trained at both sizes; the first pair where neither diverged) and
  ``report.md``.

  Raises:
    ValueError: for a bad config; ``records.WorkdirError`` when the workdir
      already holds results.
  """
  validate_config(config)
  workdir = config.workdir
  os.makedirs(workdir, exist_ok=True)
  results_path = os.path.join(workdir, RESULTS_FILE)
  if records.read_rows(results_path):
    raise records.WorkdirError(f"{results_path} already holds results; use a "
                               f"new --workdir (or delete that one)")
  settings = {k: v for k, v in config.to_dict().items()
              if k not in ("workdir", "progress")}
  with open(os.path.join(workdir, records.CONFIG_FILE), "w") as f:
    json.dump(config.to_dict(), f, indent=1, default=str)
  train_set, test_set = load_split(config)
  log(f"data: {config.dataset}, {train_set.m} train / {test_set.m} test")
  sizes = batch_sizes(config)
  results: dict[int, list[population.MemberResult]] = {}
  subspace = None
  for role, size in zip(("small", "large"), sizes):
    steps = config.epochs * (train_set.m // size)
    tconfig = population.TrainConfig(
        activation=config.activation, bias=config.bias,
        normalization=config.normalization, optimizer=config.optimizer,
        learning_rate=config.learning_rate, steps=steps,
        batch_size=size if size < train_set.m else None,
        chunk_steps=min(250, steps))
    members = [population.Member(config.depth, config.width, seed)
               for seed in range(config.num_seeds)]
    start = time.perf_counter()
    trained = train.train_population(train_set, members, tconfig)
    log(f"batch {size}: trained {len(members)} seeds x {steps} steps in "
        f"{time.perf_counter() - start:.1f} s")
    results[size] = trained
    for result in trained:
      start = time.perf_counter()
      row = {
          "batch_size": size, "batch_role": role,
          "seed": result.member.seed, "dataset": train_set.provenance,
          "depth": config.depth, "width": config.width,
          "activation": config.activation, "bias": config.bias,
          "normalization": config.normalization,
          "optimizer": {"name": config.optimizer,
                        "learning_rate": config.learning_rate,
                        "steps": steps, "batch_size": size},
          "epochs": config.epochs, "n_params": result.model.n_params,
          "loss": records.json_float(result.loss),
          "diverged": bool(result.diverged), "steps": int(result.steps),
          "train_wall_s": float(result.wall_s),
          "versions": provenance.library_versions(), "config": settings,
      }
      if not result.diverged:
        if subspace is None and config.subspace_dim:
          subspace = random_subspace(
              result.model.n_params, config.subspace_dim,
              jax.random.PRNGKey(config.subspace_seed))
        row.update(analyse_member(result, train_set, test_set, config,
                                  subspace))
      row["analysis_wall_s"] = time.perf_counter() - start
      records.append_row(results_path, row, schema=ROW_FIELDS)
    log(f"batch {size}: measured in {results_path}")
  rows = records.read_rows(results_path)
  interpolation = None
  pairs = [(a, b) for a, b in zip(*results.values())
           if not (a.diverged or b.diverged)]
  if pairs:
    interpolation = _interpolate(*pairs[0], train_set, test_set, config)
    with open(os.path.join(workdir, INTERPOLATION_FILE), "w") as f:
      json.dump(interpolation, f)
    plot_interpolation(interpolation, sizes,
                       os.path.join(workdir, FIGURE_FILE))
  else:
    log("every seed diverged at one batch size: no interpolation figure")
  write_report(rows, config, os.path.join(workdir, REPORT_FILE),
               interpolation)
  return rows
