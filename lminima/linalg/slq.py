"""Randomized spectral estimates: SLQ densities and trace estimators.

All estimators take a symmetric ``matvec: (n,) -> (n,)`` (e.g. a Hessian from
``lminima.core.hessian.hvp_operator``) and average quadratic forms
``z^T f(H) z`` over random probes ``z``: for Rademacher ``z`` (entries +-1),
``E[z^T A z] = tr(A)``.

* ``slq_density``: stochastic Lanczos quadrature. For a unit probe v, k
  Lanczos steps (``lminima.linalg.lanczos``) give ``T_k = S diag(t) S^T`` and

    ``v^T f(H) v ~ e_1^T f(T_k) e_1 = sum_i S[0, i]^2 f(t_i)``,

  Gauss quadrature with nodes ``t_i`` (the Ritz values) and weights the
  squared FIRST components of the eigenvectors of ``T_k``; it is exact for
  polynomials f of degree < 2k. With ``v = z / sqrt(n)`` the average over
  probes estimates ``tr f(H) / n``; a Gaussian ``f = N(. - t; sigma^2)`` gives
  the smoothed eigenvalue density at t.
* ``hutchinson_trace``: ``tr(H) ~ mean_p z_p^T H z_p``, unbiased, one probe
  having variance ``2 (||H||_F^2 - sum_i H_ii^2)``.
* ``hutchpp_trace`` (Hutch++, Meyer, Musco, Musco & Woodruff 2021): the trace
  of H on a sketched dominant subspace exactly, plus Hutchinson on the
  deflated remainder; its error falls like ``1/num_matvecs`` rather than
  ``1/sqrt(num_matvecs)`` when the spectrum decays.

Example:
  >>> import jax, jax.numpy as jnp
  >>> a = jnp.diag(jnp.array([1.0, 2.0, 3.0]))
  >>> matvec = lambda v: a @ v
  >>> hutchinson_trace(matvec, 3, key=jax.random.PRNGKey(0), num_probes=4)
  (6.0, 0.0)
  >>> d = slq_density(matvec, 3, key=jax.random.PRNGKey(0), num_probes=2,
  ...                 num_iters=3)
  >>> round(float((d.weights * d.nodes).sum(axis=1).mean()), 8)  # tr(A) / n
  2.0
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from lminima.core.hessian import Matvec, as_operator, check_operator
from lminima.linalg.lanczos import lanczos_tridiagonal_unchecked


@dataclasses.dataclass(frozen=True)
class SpectralDensity:
  """Gaussian-smoothed SLQ estimate of the eigenvalue density of H.

  ``density(t) = mean_p sum_i weights[p, i] N(t; nodes[p, i], sigma^2)``,
  an estimate of ``(1/n) sum_j N(t; lambda_j, sigma^2)`` integrating to 1.
  ``sum_i weights[p, i] nodes[p, i]^k`` is the probe-p estimate of
  ``tr(H^k) / n``, exact in expectation for k < 2 * num_iters.

  Attributes:
    grid: evaluation points t, shape (num_grid,).
    density: smoothed density on ``grid``.
    nodes: Ritz values per probe, shape (num_probes, num_iters).
    weights: squared first components of the Ritz vectors, same shape; each
      row sums to 1.
    sigma: Gaussian smoothing width.
  """
  grid: np.ndarray
  density: np.ndarray
  nodes: np.ndarray
  weights: np.ndarray
  sigma: float


def _rademacher(key: jax.Array, shape: tuple[int, ...], dtype) -> jax.Array:
  return jax.random.rademacher(key, shape, dtype=dtype)


@functools.partial(jax.jit, static_argnames=("num_iters",))
def _slq_quadrature(operator, probes, *, num_iters):
  def one_probe(v0):
    alphas, betas, _ = lanczos_tridiagonal_unchecked(operator, v0, num_iters)
    tridiagonal = (jnp.diag(alphas) + jnp.diag(betas[:-1], 1)
                   + jnp.diag(betas[:-1], -1))
    nodes, vectors = jnp.linalg.eigh(tridiagonal)
    # Gauss quadrature weights: squared FIRST components of the eigenvectors
    # of T (e_1^T f(T) e_1 = sum_i s_i[0]^2 f(t_i)), not the last row.
    return nodes, jnp.square(vectors[0, :])

  # Probes run one after another: each holds a (num_iters, dim) basis.
  return lax.map(one_probe, probes)


def slq_density(matvec: Matvec, dim: int, *, key: jax.Array,
                num_probes: int = 10, num_iters: int = 80,
                grid: np.ndarray | None = None, sigma: float | None = None,
                dtype=jnp.float64) -> SpectralDensity:
  """Smoothed eigenvalue density of a symmetric operator by SLQ.

  For each normalized Rademacher probe v, ``num_iters`` Lanczos steps give
  T = S diag(t) S^T and the quadrature ``v^T f(H) v ~ sum_i S[0, i]^2 f(t_i)``.
  Averaging over probes estimates ``tr f(H) / n``; with ``f = N(. - t;
  sigma^2)`` this is the smoothed density on ``grid``.

  Args:
    matvec: symmetric linear map (dim,) -> (dim,).
    dim: dimension n.
    key: PRNG key for the probes.
    num_probes: number of probe vectors.
    num_iters: Lanczos steps per probe (capped at dim).
    grid: points at which to evaluate the density; default 1000 points
      spanning the Ritz values +- 5 sigma.
    sigma: smoothing width; default 1% of the Ritz value range (or of
      ``max |t|`` if that range is 0, or 1 for the zero operator).
    dtype: working dtype.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> a = jnp.diag(jnp.array([1.0, 2.0, 3.0, 4.0]))
    >>> d = slq_density(lambda v: a @ v, 4, key=jax.random.PRNGKey(0),
    ...                 num_probes=2, num_iters=4)
    >>> jnp.round(d.nodes[0], 6).tolist(), jnp.round(d.weights[0], 6).tolist()
    ([1.0, 2.0, 3.0, 4.0], [0.25, 0.25, 0.25, 0.25])
  """
  if num_probes < 1 or num_iters < 1:
    raise ValueError(f"num_probes and num_iters must be >= 1, got "
                     f"{num_probes} and {num_iters}")
  if sigma is not None and not sigma > 0:
    raise ValueError(f"sigma must be positive, got {sigma}")
  dim = int(dim)
  check_operator(matvec, dim, dtype)
  probes = _rademacher(key, (num_probes, dim), dtype)
  nodes, weights = _slq_quadrature(as_operator(matvec), probes,
                                   num_iters=min(int(num_iters), dim))
  nodes = np.asarray(nodes, np.float64)
  weights = np.asarray(weights, np.float64)
  low, high = float(nodes.min()), float(nodes.max())
  if sigma is None:
    span = high - low or max(abs(low), abs(high)) or 1.0
    sigma = 0.01 * span
  grid = (np.linspace(low - 5 * sigma, high + 5 * sigma, 1000)
          if grid is None else np.asarray(grid, np.float64))
  if grid.ndim != 1:
    raise ValueError(f"grid must be 1-D, got shape {grid.shape}")
  gaussians = np.exp(-0.5 * ((grid[:, None, None] - nodes) / sigma) ** 2)
  density = (gaussians * weights).sum(axis=2).mean(axis=1) / (
      sigma * np.sqrt(2 * np.pi))
  return SpectralDensity(grid=grid, density=density, nodes=nodes,
                         weights=weights, sigma=float(sigma))


@jax.jit
def _quadratic_forms(operator, probes):
  return lax.map(lambda z: jnp.vdot(z, operator(z).astype(z.dtype)), probes)


def hutchinson_trace(matvec: Matvec, dim: int, *, key: jax.Array,
                     num_probes: int, dtype=jnp.float64
                     ) -> tuple[float, float]:
  """Hutchinson trace estimate ``mean_p z_p^T H z_p`` with Rademacher z_p.

  Unbiased; one probe has variance ``2 (||H||_F^2 - sum_i H_ii^2)``. The
  returned standard error is the sample standard deviation over
  ``sqrt(num_probes)`` (0 for a single probe).

  Returns:
    ``(estimate, standard_error)``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> a = jnp.diag(jnp.array([1.0, 2.0, 3.0]))
    >>> hutchinson_trace(lambda v: a @ v, 3, key=jax.random.PRNGKey(0),
    ...                  num_probes=4)
    (6.0, 0.0)
  """
  if num_probes < 1:
    raise ValueError(f"num_probes must be >= 1, got {num_probes}")
  dim = int(dim)
  check_operator(matvec, dim, dtype)
  probes = _rademacher(key, (num_probes, dim), dtype)
  samples = np.asarray(_quadratic_forms(as_operator(matvec), probes))
  error = (float(samples.std(ddof=1) / np.sqrt(num_probes))
           if num_probes > 1 else 0.0)
  return float(samples.mean()), error


def hutchpp_trace(matvec: Matvec, dim: int, *, key: jax.Array,
                  num_matvecs: int, dtype=jnp.float64) -> float:
  """Hutch++ trace estimate (Meyer, Musco, Musco & Woodruff 2021).

  With k = num_matvecs // 3: Q = orth(H S) for a Rademacher sketch S (n x k),
  then ``tr(H) ~ tr(Q^T H Q) + (1/k) tr(G^T P H P G)`` with P = I - Q Q^T and
  Rademacher G (n x k). The first term is exact on the captured dominant
  subspace, the second is Hutchinson on the remainder, so the error shrinks
  like 1/num_matvecs (vs 1/sqrt for Hutchinson) when the spectrum decays.
  Uses 3k matvecs.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> a = jnp.diag(jnp.array([5.0, 1.0, 0.0, 0.0]))
    >>> round(hutchpp_trace(lambda v: a @ v, 4, key=jax.random.PRNGKey(0),
    ...                     num_matvecs=6), 8)
    6.0
  """
  if num_matvecs < 3:
    raise ValueError(f"Hutch++ needs num_matvecs >= 3 (3 blocks), got "
                     f"{num_matvecs}")
  dim = int(dim)
  check_operator(matvec, dim, dtype)
  sketch_size = min(num_matvecs // 3, dim)
  sketch_key, probe_key = jax.random.split(key)
  sketch = _rademacher(sketch_key, (sketch_size, dim), dtype)
  probes = _rademacher(probe_key, (num_matvecs // 3, dim), dtype)
  return float(_hutchpp_estimate(as_operator(matvec), sketch, probes))


@jax.jit
def _hutchpp_estimate(operator, sketch, probes):
  apply_rows = lambda rows: lax.map(
      lambda z: operator(z).astype(rows.dtype), rows)
  basis, _ = jnp.linalg.qr(apply_rows(sketch).T)  # (dim, k), orthonormal
  exact_part = jnp.trace(basis.T @ apply_rows(basis.T).T)
  deflated = probes - (probes @ basis) @ basis.T
  remainder = jnp.sum(deflated * apply_rows(deflated)) / probes.shape[0]
  return exact_part + remainder
