"""Global optima of basis-function models under the network's loss.

The classical references of docs/theory.md#classical-models; kernel
regression lives in ``lminima.theory.kernel_regression``.

Every optimum here is the smallest training loss

    L* = c * ||Y - Yfit||_F^2,   c = losses.loss_scale(normalization, m),

that a classical model reaches on the training data (X, Y), computed in
float64 with the same constant c as the network, so that a local-minimum value
L(theta) can be compared with it directly (docs/theory.md#c-subspace-bound).

Models:

* Basis-function model with fixed features Phi (m x p): Yfit = P[Phi] Y, so
  L*_Phi = c ||(I - Phi Phi^+) Y||^2. With ``intercept`` a column of ones is
  appended to Phi (last column), as the network's biases do.
* Linear regression: the basis-function model with Phi = X.
* Random features: Phi = sigma(X W^(1)), the first layer of a freshly
  initialized ``MLP``. Polynomial features: all monomials up to a degree. The
  network's own hidden layer h^(l) at a ``Problem``'s point: by identity (A),
  L(theta) at a differentiable critical point equals the hidden-feature
  optimum of the last hidden layer.

Least-squares projections use ``lminima.linalg.projections.project`` (thin SVD,
relative rank tolerance recorded with the result). Coefficients are the
least-norm solution ``Phi^+ Y`` at the same tolerance.

Example:
  >>> import numpy as np
  >>> x = np.arange(4.0)[:, None]
  >>> opt = linear_regression_optimum(x, 2 * x + 1, normalization="sum")
  >>> round(opt.value, 12), opt.rank, np.round(opt.coef.ravel(), 12).tolist()
  (0.0, 2, [2.0, 1.0])
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lminima.core import checks
from lminima.core import losses
from lminima.core import models
from lminima.core.problem import Problem
from lminima.linalg import projections


@dataclasses.dataclass(frozen=True)
class ClassicalOptimum:
  """The global optimum of a classical model on the training data.

  Attributes:
    value: L* = c * ||Y - fitted||_F^2 (float64, the network's c).
    fitted: the optimal training predictions Yfit, shape (m, d_y).
    rank: numerical rank of the design (features, or K for the interpolating
      kernel limit); None for the ridge kernel fit.
    rank_tol: relative singular-value cut-off behind ``rank``, or None.
    coef: least-norm coefficients Phi^+ Y (p x d_y, intercept row last), or
      dual coefficients alpha with fitted = K alpha for kernels.
    model: short name of the model ("linear", "random_features", ...).
    details: JSON-ready settings of the model (normalization, sizes, ...).
  """
  value: float
  fitted: np.ndarray
  rank: int | None
  rank_tol: float | None
  coef: np.ndarray | None
  model: str
  details: dict[str, Any]

  def to_dict(self) -> dict[str, Any]:
    """JSON-ready summary without the arrays.

    Example:
      >>> import numpy as np
      >>> opt = linear_regression_optimum(np.eye(3), np.ones((3, 1)))
      >>> sorted(opt.to_dict())
      ['details', 'model', 'rank', 'rank_tol', 'value']
    """
    return {"model": self.model, "value": float(self.value),
            "rank": None if self.rank is None else int(self.rank),
            "rank_tol": None if self.rank_tol is None else float(self.rank_tol),
            "details": dict(self.details)}


# --- basis-function models -------------------------------------------------


def basis_function_optimum(phi: np.ndarray, y: np.ndarray, *,
                           normalization: str = "mean",
                           intercept: bool = False, name: str = "basis",
                           rank_tol: float | None = None) -> ClassicalOptimum:
  """Global optimum of Yfit = Phi B (+ 1 b^T) over B (and b).

  L*_Phi = c ||(I - M M^+) Y||_F^2 with M = Phi, or M = [Phi, 1] when
  ``intercept``.

  Args:
    phi: features Phi(X), shape (m, p).
    y: targets, shape (m, d_y); a vector of length m is treated as d_y = 1.
    normalization: "sum" or "mean" (the constant c, see
      ``lminima.core.losses``).
    intercept: append a column of ones to Phi (as the last column).
    name: recorded as ``model``.
    rank_tol: relative singular-value cut-off (``projections.project`` default
      when None).

  Returns:
    A ``ClassicalOptimum`` with least-norm ``coef`` of shape (p [+ 1], d_y).

  Example:
    >>> import numpy as np
    >>> phi = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    >>> opt = basis_function_optimum(phi, [1.0, 3.0, 2.0], normalization="sum")
    >>> round(opt.value, 12), np.round(opt.fitted.ravel(), 12).tolist()
    (1.0, [2.0, 2.0, 2.0])
  """
  return _basis_optimum(phi, y, normalization=normalization,
                        intercept=intercept, model=name, rank_tol=rank_tol)


def linear_regression_optimum(x: np.ndarray, y: np.ndarray, *,
                              normalization: str = "mean",
                              intercept: bool = True,
                              rank_tol: float | None = None
                              ) -> ClassicalOptimum:
  """Ordinary least squares: L*_lin = c ||(I - X X^+) Y||_F^2.

  With ``intercept`` (the counterpart of a network with biases) X is replaced
  by [X, 1]. Rank-deficient X is fine: the fit is the projection onto col(X)
  and ``coef`` the least-norm solution.

  Args:
    x: inputs, shape (m, d_x).
    y: targets, shape (m, d_y) or (m,).
    normalization: "sum" or "mean".
    intercept: fit an intercept (ones column appended last).
    rank_tol: relative singular-value cut-off, see ``projections.project``.

  Example:
    >>> import numpy as np
    >>> x = np.array([[0.0], [1.0], [2.0]])
    >>> opt = linear_regression_optimum(x, [0.0, 1.0, 1.0], intercept=False)
    >>> round(opt.value * 6, 12)  # c = 1/6; residual of y on x is 1/5
    0.2
  """
  return _basis_optimum(x, y, normalization=normalization, intercept=intercept,
                        model="linear", rank_tol=rank_tol, features_name="x")


def random_features(x: np.ndarray, width: int, activation: str, *, seed: int,
                    bias: bool = True) -> np.ndarray:
  """Random first-layer features sigma(X W^(1) + b^(1)), float64.

  The layer is drawn exactly as the first layer of
  ``MLP(d_x, (width,), d_out, activation, bias).init_params(
  jax.random.PRNGKey(seed), float64)`` for any d_out: W^(1)_ij ~ N(0, gain^2 / d_x) (gain sqrt(2) for
  relu/leaky_relu, else 1) and b^(1) = 0. Hence these are also the hidden
  features at initialization of a one-hidden-layer network with that seed.
  Because ``MLP.init_params`` sets biases to zero, ``bias`` does not change the
  features; it only names the architecture whose draw is reproduced.

  Args:
    x: inputs, shape (m, d_x).
    width: number of random features, > 0.
    activation: one of ``lminima.core.models.ACTIVATIONS``.
    seed: integer seed of ``jax.random.PRNGKey``.
    bias: bias flag of the reproduced architecture.

  Returns:
    Features of shape (m, width).

  Example:
    >>> import numpy as np
    >>> random_features(np.ones((2, 3)), 5, "relu", seed=0).shape
    (2, 5)
  """
  x = checks.float64_matrix(x, "x")
  width = checks.integer(width, "width")
  model = models.MLP(x.shape[1], (width,), 1, activation, bias)
  variables = model.init_params(jax.random.PRNGKey(seed), jnp.float64)
  return np.asarray(model.apply(variables, jnp.asarray(x), method="hidden")[1])


def random_features_optimum(x: np.ndarray, y: np.ndarray, width: int,
                            activation: str, *, seed: int,
                            normalization: str = "mean",
                            intercept: bool = True,
                            rank_tol: float | None = None
                            ) -> ClassicalOptimum:
  """Basis-function optimum on ``random_features(x, width, activation, seed)``.

  L*_RF = c ||(I - Phi Phi^+) Y||^2 with Phi = sigma(X W^(1)) (and a ones
  column when ``intercept``): a one-hidden-layer network trained only in its
  output layer from its initialization.

  Example:
    >>> import numpy as np
    >>> x = np.random.default_rng(0).standard_normal((6, 2))
    >>> opt = random_features_optimum(x, x[:, :1], 10, "tanh", seed=0)
    >>> opt.rank, round(opt.value, 12)  # 10 features + 1 >= 6 samples
    (6, 0.0)
  """
  phi = random_features(x, width, activation, seed=seed, bias=intercept)
  return _basis_optimum(phi, y, normalization=normalization,
                        intercept=intercept, model="random_features",
                        rank_tol=rank_tol,
                        extra={"width": int(width), "activation": activation,
                               "seed": int(seed)})


def polynomial_features(x: np.ndarray, degree: int, *,
                        include_bias: bool = True) -> np.ndarray:
  """All monomials x_{i1} x_{i2} ... x_{ik} of total degree k <= ``degree``.

  Columns are ordered by degree, then lexicographically in the variable
  indices i1 <= ... <= ik (the constant 1 first when ``include_bias``); there
  are C(d_x + degree, degree) columns with the constant.

  Args:
    x: inputs, shape (m, d_x).
    degree: highest total degree, > 0.
    include_bias: include the degree-0 monomial 1.

  Example:
    >>> import numpy as np
    >>> polynomial_features(np.array([[2.0, 3.0]]), 2).tolist()
    [[1.0, 2.0, 3.0, 4.0, 6.0, 9.0]]
  """
  x = checks.float64_matrix(x, "x")
  degree = checks.integer(degree, "degree")
  columns = [np.ones(x.shape[0])] if include_bias else []
  for k in range(1, degree + 1):
    for variables in itertools.combinations_with_replacement(
        range(x.shape[1]), k):
      columns.append(np.prod(x[:, variables], axis=1))
  return np.stack(columns, axis=1)


def polynomial_optimum(x: np.ndarray, y: np.ndarray, degree: int, *,
                       normalization: str = "mean",
                       rank_tol: float | None = None) -> ClassicalOptimum:
  """Least-squares polynomial regression of total degree <= ``degree``.

  L*_poly = c ||(I - Phi Phi^+) Y||^2 with Phi = ``polynomial_features(x,
  degree)`` (which contains the constant, so no separate intercept).

  Example:
    >>> import numpy as np
    >>> x = np.linspace(-1, 1, 5)[:, None]
    >>> round(polynomial_optimum(x, x ** 2 - x, 2).value, 12)
    0.0
  """
  phi = polynomial_features(x, degree, include_bias=True)
  return _basis_optimum(phi, y, normalization=normalization, intercept=False,
                        model="polynomial", rank_tol=rank_tol,
                        extra={"degree": int(degree)})


def hidden_features(problem: Problem, *, layer: int = -1) -> np.ndarray:
  """An MLP's own hidden layer h^(l)(X) at the problem's point, in float64.

  Layers are indexed as the list [h^(0) = X, h^(1), ..., h^(H)]: ``layer`` = l
  in 0..H selects h^(l) and negative values count from the end (-1 = h^(H),
  the last hidden layer).

  Args:
    problem: a problem of an ``lminima.core.models.MLP``
      (``Problem.for_module``).
    layer: which hidden layer, see above.

  Returns:
    h^(l), shape (m, d_l).

  Example:
    >>> import jax
    >>> import numpy as np
    >>> net = models.MLP(2, (4, 3), 1, "tanh")
    >>> problem = Problem.for_module(net, net.init_params(
    ...     jax.random.PRNGKey(0)), np.ones((5, 2)), np.ones((5, 1)))
    >>> hidden_features(problem).shape
    (5, 3)
  """
  model = problem.module
  if not isinstance(model, models.MLP):
    raise ValueError(
        "hidden_features needs a problem of an lminima.core.models.MLP"
        f", got a model of type {type(model).__name__}")
  index = _layer_index(model, layer)
  return np.asarray(model.apply(problem.params, problem.x,
                                method="hidden")[index], dtype=np.float64)


def hidden_features_optimum(problem: Problem, *, layer: int = -1,
                            intercept: bool | None = None,
                            rank_tol: float | None = None
                            ) -> ClassicalOptimum:
  """Basis-function optimum on an MLP's hidden layer h^(l).

  L*_h = c ||(I - h h^+) Y||^2 with h = ``hidden_features(problem, layer)``
  and a ones column appended when ``intercept`` (default
  ``problem.intercept``, matching the output layer). For the last hidden
  layer this is the best output layer for the fixed hidden layers, and equals
  L(theta) at a differentiable critical point
  (docs/theory.md#a-critical-point-identity).

  Example:
    >>> import jax
    >>> import numpy as np
    >>> net = models.MLP(2, (8,), 1, "tanh")
    >>> x = np.random.default_rng(0).standard_normal((5, 2))
    >>> problem = Problem.for_module(net, net.init_params(
    ...     jax.random.PRNGKey(0)), x, x[:, :1])
    >>> opt = hidden_features_optimum(problem)
    >>> opt.rank, round(opt.value, 12)
    (5, 0.0)
  """
  features = hidden_features(problem, layer=layer)
  model = problem.module
  return _basis_optimum(features, np.asarray(problem.y),
                        normalization=problem.normalization,
                        intercept=(problem.intercept if intercept is None
                                   else intercept),
                        model="hidden_features", rank_tol=rank_tol,
                        extra={"layer": _layer_index(model, layer),
                               "widths": list(model.widths),
                               "activation": model.activation})


def _basis_optimum(phi: np.ndarray, y: np.ndarray, *, normalization: str,
                   intercept: bool, model: str, rank_tol: float | None,
                   extra: dict[str, Any] | None = None,
                   features_name: str = "phi") -> ClassicalOptimum:
  """Shared body of every basis-function optimum (module docstring)."""
  phi = checks.float64_matrix(phi, features_name)
  y = checks.targets(y, phi.shape[0])
  design = (np.concatenate([phi, np.ones((phi.shape[0], 1))], axis=1)
            if intercept else phi)
  if design.shape[1] == 0:
    raise ValueError(f"{features_name} has no columns and no intercept")
  c = losses.loss_scale(normalization, phi.shape[0])
  projection, coef = least_squares(design, y, c, rank_tol)
  details = {"normalization": normalization, "n_samples": phi.shape[0],
             "d_y": y.shape[1], "n_features": phi.shape[1],
             "intercept": bool(intercept), **(extra or {})}
  return ClassicalOptimum(value=projection.value, fitted=projection.fitted,
                          rank=projection.rank, rank_tol=projection.rank_tol,
                          coef=coef, model=model, details=details)


def least_squares(design: np.ndarray, y: np.ndarray, c: float,
                  rank_tol: float | None
                  ) -> tuple[projections.Projection, np.ndarray]:
  """Projection of y onto col(design) and the least-norm coefficients.

  ``lstsq`` drops singular values <= rcond * s_max, the same cut-off as
  ``projections.project`` keeps s > rank_tol * s_max, so design @ coef = fitted.
  """
  projection = projections.project(design, y, scale=c, rank_tol=rank_tol)
  coef = np.linalg.lstsq(design, y, rcond=projection.rank_tol)[0]
  return projection, coef


def _layer_index(model: models.MLP, layer: int) -> int:
  """Resolves ``layer`` against [h^(0), ..., h^(H)] to l in 0..H."""
  n_layers = model.depth + 1
  if (isinstance(layer, bool) or not isinstance(layer, (int, np.integer))
      or not -n_layers <= layer < n_layers):
    raise ValueError(f"layer must be an integer in [{-n_layers}, "
                     f"{n_layers - 1}] for {model.depth} hidden layers, got "
                     f"{layer!r}")
  return int(layer) % n_layers
