"""Global optima of classical models under the network's loss (DESIGN 1.4).

Every optimum here is the smallest training loss

    L* = c * ||Y - Yfit||_F^2,   c = losses.loss_scale(normalization, m),

that a classical model reaches on the training data (X, Y), computed in
float64 with the same constant c as the network, so that a local-minimum value
L(theta) can be compared with it directly (DESIGN 1.3 C).

Models:

* Basis-function model with fixed features Phi (m x p): Yfit = P[Phi] Y, so
  L*_Phi = c ||(I - Phi Phi^+) Y||^2. With ``intercept`` a column of ones is
  appended to Phi (last column), as the network's biases do.
* Linear regression: the basis-function model with Phi = X.
* Random features: Phi = sigma(X W^(1)), the first layer of a freshly
  initialized ``MLP``. Polynomial features: all monomials up to a degree. The
  network's own hidden layer h^(l) at given parameters (at initialization or at
  a trained theta): by DESIGN 1.3 (A), L(theta) at a differentiable critical
  point equals the hidden-feature optimum of the last hidden layer.
* Kernel regression with a kernel matrix K (m x m): the ridge fit
  Yfit = K (K + ridge I)^{-1} Y, and its interpolating limit ridge -> 0,
  Yfit = P[K] Y. The RBF kernel and the NNGP kernel of a ReLU MLP (the
  infinite-width reference) are provided.

Least-squares projections use ``lminima.linalg.project`` (thin SVD, relative
rank tolerance recorded with the result). Coefficients are the least-norm
solution ``Phi^+ Y`` at the same tolerance.

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
import scipy.linalg
import scipy.spatial.distance

from lminima import linalg
from lminima import losses
from lminima import models


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
    normalization: "sum" or "mean" (the constant c, see ``lminima.losses``).
    intercept: append a column of ones to Phi (as the last column).
    name: recorded as ``model``.
    rank_tol: relative singular-value cut-off (``linalg.project`` default
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
    rank_tol: relative singular-value cut-off, see ``linalg.project``.

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
  ``MLP(d_x, (width,), d_out, activation, bias).init(jax.random.PRNGKey(seed),
  float64)`` for any d_out: W^(1)_ij ~ N(0, gain^2 / d_x) (gain sqrt(2) for
  relu/leaky_relu, else 1) and b^(1) = 0. Hence these are also the hidden
  features at initialization of a one-hidden-layer network with that seed.
  Because ``MLP.init`` sets biases to zero, ``bias`` does not change the
  features; it only names the architecture whose draw is reproduced.

  Args:
    x: inputs, shape (m, d_x).
    width: number of random features, > 0.
    activation: one of ``lminima.models.ACTIVATIONS``.
    seed: integer seed of ``jax.random.PRNGKey``.
    bias: bias flag of the reproduced architecture.

  Returns:
    Features of shape (m, width).

  Example:
    >>> import numpy as np
    >>> random_features(np.ones((2, 3)), 5, "relu", seed=0).shape
    (2, 5)
  """
  x = _as_matrix(x, "x")
  width = _integer(width, "width")
  model = models.MLP(x.shape[1], (width,), 1, activation, bias)
  params = model.init(jax.random.PRNGKey(seed), jnp.float64)
  return hidden_features(model, params, x, layer=1)


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
  x = _as_matrix(x, "x")
  degree = _integer(degree, "degree")
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


def hidden_features(model: models.MLP, params: models.Params, x: np.ndarray,
                    *, layer: int = -1) -> np.ndarray:
  """The network's own hidden layer h^(l)(X) at ``params``, in float64.

  Layers are indexed as the list [h^(0) = X, h^(1), ..., h^(H)]: ``layer`` = l
  in 0..H selects h^(l) and negative values count from the end (-1 = h^(H),
  the last hidden layer). ``params`` are cast to float64 before the forward
  pass, so float32-trained parameters give float64 features of those values.

  Args:
    model: the architecture.
    params: its parameters (at initialization or at a trained theta).
    x: inputs, shape (m, model.d_in).
    layer: which hidden layer, see above.

  Returns:
    h^(l), shape (m, d_l).

  Example:
    >>> import jax
    >>> import numpy as np
    >>> net = models.MLP(2, (4, 3), 1, "tanh")
    >>> params = net.init(jax.random.PRNGKey(0))
    >>> hidden_features(net, params, np.ones((5, 2))).shape
    (5, 3)
  """
  x = _as_matrix(x, "x")
  if x.shape[1] != model.d_in:
    raise ValueError(f"x has {x.shape[1]} columns but the model expects "
                     f"d_in={model.d_in}")
  index = _layer_index(model, layer)
  _, _, hidden = model.forward(models.cast_params(params, jnp.float64),
                               jnp.asarray(x))
  return np.asarray([x, *hidden][index], dtype=np.float64)


def hidden_features_optimum(model: models.MLP, params: models.Params,
                            x: np.ndarray, y: np.ndarray, *, layer: int = -1,
                            normalization: str = "mean",
                            intercept: bool | None = None,
                            rank_tol: float | None = None
                            ) -> ClassicalOptimum:
  """Basis-function optimum on the network's hidden layer h^(l).

  L*_h = c ||(I - h h^+) Y||^2 with h = ``hidden_features(model, params, x,
  layer)`` and a ones column appended when ``intercept`` (default: when the
  model has biases, matching its output layer). For the last hidden layer
  this is the best output layer for the fixed hidden layers, and equals
  L(theta) at a differentiable critical point (DESIGN 1.3 A).

  Example:
    >>> import jax
    >>> import numpy as np
    >>> net = models.MLP(2, (8,), 1, "tanh")
    >>> x = np.random.default_rng(0).standard_normal((5, 2))
    >>> opt = hidden_features_optimum(net, net.init(jax.random.PRNGKey(0)), x,
    ...                               x[:, :1])
    >>> opt.rank, round(opt.value, 12)
    (5, 0.0)
  """
  features = hidden_features(model, params, x, layer=layer)
  if intercept is None:
    intercept = model.bias
  return _basis_optimum(features, y, normalization=normalization,
                        intercept=intercept,
                        model="hidden_features", rank_tol=rank_tol,
                        extra={"layer": _layer_index(model, layer),
                               "widths": list(model.widths),
                               "activation": model.activation})


# --- kernels ---------------------------------------------------------------


def rbf_kernel(x1: np.ndarray, x2: np.ndarray, *,
               lengthscale: float) -> np.ndarray:
  """Gaussian kernel K_ij = exp(-||x1_i - x2_j||^2 / (2 lengthscale^2)).

  Example:
    >>> import numpy as np
    >>> k = rbf_kernel(np.zeros((1, 2)), np.ones((1, 2)), lengthscale=1.0)
    >>> bool(np.isclose(k[0, 0], np.exp(-1.0)))
    True
  """
  x1, x2 = _kernel_inputs(x1, x2)
  lengthscale = _positive_float(lengthscale, "lengthscale")
  sq_dist = scipy.spatial.distance.cdist(x1, x2, "sqeuclidean")
  return np.exp(-sq_dist / (2.0 * lengthscale ** 2))


def relu_nngp_kernel(x1: np.ndarray, x2: np.ndarray, *, depth: int,
                     weight_var: float = 2.0,
                     bias_var: float = 0.0) -> np.ndarray:
  """NNGP kernel of an infinitely wide ReLU MLP with ``depth`` hidden layers.

  For a network with W^(l)_ij ~ N(0, weight_var / d_{l-1}) and
  b^(l)_j ~ N(0, bias_var), the pre-activations of every layer become, as the
  widths grow, Gaussian processes with covariances

    K^(1)(x, x')   = bias_var + weight_var * x . x' / d_x,
    K^(l+1)(x, x') = bias_var + weight_var * E[relu(u) relu(v)],
                     (u, v) ~ N(0, [[K^(l)(x, x), K^(l)(x, x')],
                                    [K^(l)(x, x'), K^(l)(x', x')]]),

  and the Gaussian expectation is the order-1 arc-cosine kernel (Cho & Saul
  2009):

    E[relu(u) relu(v)] = sqrt(K(x, x) K(x', x')) / (2 pi)
                         * (sin t + (pi - t) cos t),
    t = arccos(K(x, x') / sqrt(K(x, x) K(x', x'))).

  Returns K^(depth + 1): the covariance of a readout of h^(depth) with the
  same variances, i.e. bias_var + weight_var * lim (1/d_H) h^(H)(x) .
  h^(H)(x'). ``depth = 0`` gives the linear kernel K^(1). The defaults
  (weight_var = 2, bias_var = 0) are ``MLP.init``'s hidden layers for relu;
  its gain-1 output layer has output covariance K^(H+1) / 2. The scale does
  not change the interpolating kernel fit.

  Args:
    x1: inputs, shape (m1, d_x).
    x2: inputs, shape (m2, d_x).
    depth: number of hidden layers H >= 0.
    weight_var: weight variance times fan-in, > 0.
    bias_var: bias variance, >= 0.

  Returns:
    K, shape (m1, m2).

  Example:
    >>> import numpy as np
    >>> x = np.array([[1.0, 0.0], [0.0, 1.0]])
    >>> np.round(relu_nngp_kernel(x, x, depth=1), 6).tolist()
    [[1.0, 0.31831], [0.31831, 1.0]]
  """
  x1, x2 = _kernel_inputs(x1, x2)
  depth = _integer(depth, "depth", minimum=0)
  weight_var = _positive_float(weight_var, "weight_var")
  bias_var = float(bias_var)
  if not np.isfinite(bias_var) or bias_var < 0:
    raise ValueError(f"bias_var must be finite and >= 0, got {bias_var}")
  d_x = x1.shape[1]
  cross = bias_var + weight_var * (x1 @ x2.T) / d_x
  diag1 = bias_var + weight_var * np.sum(x1 * x1, axis=1) / d_x
  diag2 = bias_var + weight_var * np.sum(x2 * x2, axis=1) / d_x
  for _ in range(depth):
    norms = np.sqrt(np.outer(diag1, diag2))
    # A zero-variance input (x = 0, bias_var = 0) has relu(u) = 0 exactly; any
    # angle gives the right (zero) expectation, so divide safely.
    cos_t = np.clip(np.divide(cross, norms, out=np.ones_like(cross),
                              where=norms > 0), -1.0, 1.0)
    t = np.arccos(cos_t)
    expectation = norms * (np.sin(t) + (np.pi - t) * cos_t) / (2 * np.pi)
    cross = bias_var + weight_var * expectation
    # On the diagonal t = 0, where E[relu(u)^2] = K(x, x) / 2.
    diag1 = bias_var + weight_var * diag1 / 2
    diag2 = bias_var + weight_var * diag2 / 2
  return cross


def kernel_regression_optimum(k_train: np.ndarray, y: np.ndarray, *,
                              ridge: float = 0.0, normalization: str = "mean",
                              name: str = "kernel",
                              rank_tol: float | None = None
                              ) -> ClassicalOptimum:
  """Training loss of kernel (ridge) regression with kernel matrix K.

  ridge > 0: alpha = (K + ridge I)^{-1} Y and Yfit = K alpha (sklearn's
  ``KernelRidge(alpha=ridge)``; the ridge is not scaled by m). The residual
  Y - Yfit = ridge * alpha is computed in that form, which avoids the
  cancellation of Y - K alpha when the fit nearly interpolates.

  ridge = 0: the interpolating limit ridge -> 0+, Yfit = P[K] Y (equal to Y
  when K has full rank), alpha = K^+ Y the least-norm dual coefficients; L* =
  c ||(I - K K^+) Y||^2 at the recorded rank tolerance.

  Args:
    k_train: symmetric positive semi-definite kernel matrix, shape (m, m).
    y: targets, shape (m, d_y) or (m,).
    ridge: ridge parameter >= 0.
    normalization: "sum" or "mean".
    name: recorded as ``model``.
    rank_tol: relative cut-off for the ridge = 0 projection.

  Returns:
    A ``ClassicalOptimum`` whose ``coef`` is the dual alpha (m, d_y).

  Example:
    >>> import numpy as np
    >>> k = np.eye(2)
    >>> opt = kernel_regression_optimum(k, [1.0, 1.0], ridge=1.0,
    ...                                 normalization="sum")
    >>> round(opt.value, 12)  # alpha = Y / 2, residual = Y / 2
    0.25
  """
  k_train = _as_matrix(k_train, "k_train")
  m = k_train.shape[0]
  if k_train.shape != (m, m):
    raise ValueError(f"k_train must be square, got shape {k_train.shape}")
  scale_k = float(np.max(np.abs(k_train)))
  if not np.allclose(k_train, k_train.T, rtol=0.0, atol=1e-10 * scale_k):
    raise ValueError("k_train must be symmetric")
  ridge = float(ridge)
  if not np.isfinite(ridge) or ridge < 0:
    raise ValueError(f"ridge must be finite and >= 0, got {ridge}")
  y = _as_targets(y, m)
  c = losses.loss_scale(normalization, m)
  details = {"ridge": ridge, "normalization": normalization, "n_samples": m,
             "d_y": y.shape[1]}
  if ridge == 0.0:
    projection, alpha = _least_squares(k_train, y, c, rank_tol)
    return ClassicalOptimum(value=projection.value, fitted=projection.fitted,
                            rank=projection.rank, rank_tol=projection.rank_tol,
                            coef=alpha, model=name, details=details)
  try:
    alpha = scipy.linalg.solve(k_train + ridge * np.eye(m), y, assume_a="pos")
  except np.linalg.LinAlgError:
    raise ValueError("k_train + ridge * I is not positive definite; is "
                     "k_train a positive semi-definite kernel?") from None
  residual = ridge * alpha
  return ClassicalOptimum(value=c * float(np.sum(np.square(residual))),
                          fitted=y - residual, rank=None, rank_tol=None,
                          coef=alpha, model=name, details=details)


# --- helpers ---------------------------------------------------------------


def _basis_optimum(phi: np.ndarray, y: np.ndarray, *, normalization: str,
                   intercept: bool, model: str, rank_tol: float | None,
                   extra: dict[str, Any] | None = None,
                   features_name: str = "phi") -> ClassicalOptimum:
  """Shared body of every basis-function optimum (module docstring)."""
  phi = _as_matrix(phi, features_name)
  y = _as_targets(y, phi.shape[0])
  design = (np.concatenate([phi, np.ones((phi.shape[0], 1))], axis=1)
            if intercept else phi)
  if design.shape[1] == 0:
    raise ValueError(f"{features_name} has no columns and no intercept")
  c = losses.loss_scale(normalization, phi.shape[0])
  projection, coef = _least_squares(design, y, c, rank_tol)
  details = {"normalization": normalization, "n_samples": phi.shape[0],
             "d_y": y.shape[1], "n_features": phi.shape[1],
             "intercept": bool(intercept), **(extra or {})}
  return ClassicalOptimum(value=projection.value, fitted=projection.fitted,
                          rank=projection.rank, rank_tol=projection.rank_tol,
                          coef=coef, model=model, details=details)


def _least_squares(design: np.ndarray, y: np.ndarray, c: float,
                   rank_tol: float | None
                   ) -> tuple[linalg.Projection, np.ndarray]:
  """Projection of y onto col(design) and the least-norm coefficients.

  ``lstsq`` drops singular values <= rcond * s_max, the same cut-off as
  ``linalg.project`` keeps s > rank_tol * s_max, so design @ coef = fitted.
  """
  projection = linalg.project(design, y, scale=c, rank_tol=rank_tol)
  coef = np.linalg.lstsq(design, y, rcond=projection.rank_tol)[0]
  return projection, coef


def _as_matrix(a: np.ndarray, name: str) -> np.ndarray:
  a = np.asarray(a, dtype=np.float64)
  if a.ndim != 2:
    raise ValueError(f"{name} must be a 2-D array (m, d), got shape {a.shape}")
  if a.shape[0] == 0:
    raise ValueError(f"{name} has no rows (m = 0)")
  if not np.all(np.isfinite(a)):
    raise ValueError(f"{name} contains NaN or inf")
  return a


def _as_targets(y: np.ndarray, m: int) -> np.ndarray:
  """Targets as an (m, d_y) float64 matrix; a length-m vector gets d_y = 1."""
  y = np.asarray(y, dtype=np.float64)
  if y.ndim == 1:
    y = y[:, None]
  y = _as_matrix(y, "y")
  if y.shape[0] != m:
    raise ValueError(f"y has {y.shape[0]} rows but the features have m={m}")
  return y


def _kernel_inputs(x1: np.ndarray, x2: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
  x1, x2 = _as_matrix(x1, "x1"), _as_matrix(x2, "x2")
  if x1.shape[1] != x2.shape[1]:
    raise ValueError(f"x1 has {x1.shape[1]} columns but x2 has "
                     f"{x2.shape[1]}")
  return x1, x2


def _layer_index(model: models.MLP, layer: int) -> int:
  """Resolves ``layer`` against [h^(0), ..., h^(H)] to l in 0..H."""
  n_layers = model.depth + 1
  if (isinstance(layer, bool) or not isinstance(layer, (int, np.integer))
      or not -n_layers <= layer < n_layers):
    raise ValueError(f"layer must be an integer in [{-n_layers}, "
                     f"{n_layers - 1}] for {model.depth} hidden layers, got "
                     f"{layer!r}")
  return int(layer) % n_layers


def _integer(value: int, name: str, minimum: int = 1) -> int:
  """``value`` as an int >= ``minimum``; rejects bools and floats."""
  if (isinstance(value, bool) or not isinstance(value, (int, np.integer))
      or value < minimum):
    raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
  return int(value)


def _positive_float(value: float, name: str) -> float:
  value = float(value)
  if not np.isfinite(value) or value <= 0:
    raise ValueError(f"{name} must be finite and > 0, got {value}")
  return value
