"""Kernel regression: the infinite-width references (docs/theory.md#classical-models).

With a kernel matrix K (m x m) on the training inputs, the ridge fit is
Yfit = K (K + ridge I)^{-1} Y and its interpolating limit ridge -> 0 is
Yfit = P[K] Y; the training loss c ||Y - Yfit||_F^2 uses the network's c.
Kernels: the RBF kernel and the NNGP kernel of an infinitely wide ReLU MLP
(the arc-cosine recursion).

Example:
  >>> import numpy as np
  >>> x = np.random.default_rng(0).standard_normal((5, 2))
  >>> k = relu_nngp_kernel(x, x, depth=2)
  >>> round(kernel_regression_optimum(k, x[:, :1]).value, 12)  # interpolates
  0.0
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import scipy.spatial.distance

from lminima.core import checks
from lminima.core import losses
from lminima.theory import classical


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
  lengthscale = checks.positive_float(lengthscale, "lengthscale")
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
  depth = checks.integer(depth, "depth", minimum=0)
  weight_var = checks.positive_float(weight_var, "weight_var")
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
                              ) -> classical.ClassicalOptimum:
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
    A ``classical.ClassicalOptimum`` whose ``coef`` is the dual alpha (m, d_y).

  Example:
    >>> import numpy as np
    >>> k = np.eye(2)
    >>> opt = kernel_regression_optimum(k, [1.0, 1.0], ridge=1.0,
    ...                                 normalization="sum")
    >>> round(opt.value, 12)  # alpha = Y / 2, residual = Y / 2
    0.25
  """
  k_train = checks.float64_matrix(k_train, "k_train")
  m = k_train.shape[0]
  if k_train.shape != (m, m):
    raise ValueError(f"k_train must be square, got shape {k_train.shape}")
  scale_k = float(np.max(np.abs(k_train)))
  if not np.allclose(k_train, k_train.T, rtol=0.0, atol=1e-10 * scale_k):
    raise ValueError("k_train must be symmetric")
  ridge = float(ridge)
  if not np.isfinite(ridge) or ridge < 0:
    raise ValueError(f"ridge must be finite and >= 0, got {ridge}")
  y = checks.targets(y, m)
  c = losses.loss_scale(normalization, m)
  details = {"ridge": ridge, "normalization": normalization, "n_samples": m,
             "d_y": y.shape[1]}
  if ridge == 0.0:
    projection, alpha = classical.least_squares(k_train, y, c, rank_tol)
    return classical.ClassicalOptimum(value=projection.value, fitted=projection.fitted,
                            rank=projection.rank, rank_tol=projection.rank_tol,
                            coef=alpha, model=name, details=details)
  try:
    alpha = scipy.linalg.solve(k_train + ridge * np.eye(m), y, assume_a="pos")
  except np.linalg.LinAlgError:
    raise ValueError("k_train + ridge * I is not positive definite; is "
                     "k_train a positive semi-definite kernel?") from None
  residual = ridge * alpha
  return classical.ClassicalOptimum(value=c * float(np.sum(np.square(residual))),
                          fitted=y - residual, rank=None, rank_tol=None,
                          coef=alpha, model=name, details=details)


def _kernel_inputs(x1: np.ndarray, x2: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
  x1, x2 = checks.float64_matrix(x1, "x1"), checks.float64_matrix(x2, "x2")
  if x1.shape[1] != x2.shape[1]:
    raise ValueError(f"x1 has {x1.shape[1]} columns but x2 has "
                     f"{x2.shape[1]}")
  return x1, x2
