"""Hessian tools: flat views, Hessian-vector products, Lanczos, SLQ, traces.

Everything here works on a scalar loss ``loss_fn(params)`` and its Hessian
``H = d^2 L / d theta^2`` at one point, seen through the flat parameter vector
``theta = ravel_pytree(params)`` (``jax.flatten_util`` order of the params
tuple: layer 1 ``b`` then ``w``, layer 2 ..., keys sorted within a layer).

Hessian-vector products are forward-over-reverse, ``H v = d/dt grad L(theta +
t v) |_{t=0}`` (a ``jax.jvp`` of ``jax.grad``). For many products at one point
``hvp_operator`` linearizes ``grad L`` once, so each product only runs the
tangent half of the computation; the operator is a ``jax.tree_util.Partial``
whose residuals are pytree leaves, so jitted solvers take it as an ordinary
argument and compile once per operator rather than once per call.

Spectral routines take any symmetric ``matvec: (dim,) -> (dim,)``:

* ``lanczos_tridiagonal``: k steps of Lanczos with full reorthogonalization,
  ``H V_k^T = V_k^T T_k + beta_k v_{k+1} e_k^T`` with ``T_k`` tridiagonal.
* ``lanczos_extreme_eigs``: lambda_min and lambda_max with Ritz vectors and
  true residuals ``||H v - lambda v||``; stops when the Ritz residual estimates
  ``beta_j |s_j|`` of both extreme pairs drop below ``tol * max |ritz|``.
* ``slq_density``: stochastic Lanczos quadrature. For a unit probe v and the
  eigenpairs ``(t_i, s_i)`` of ``T_k``, ``v^T f(H) v ~ sum_i s_i[0]^2 f(t_i)``
  (Gauss quadrature, exact for polynomials of degree < 2k). The weights are the
  squared FIRST components of the eigenvectors of ``T_k``.
* ``hutchinson_trace`` and ``hutchpp_trace``: randomized trace estimators.

Example:
  >>> import jax, jax.numpy as jnp
  >>> a = jnp.array([[2.0, 1.0], [1.0, 3.0]])
  >>> loss = lambda p: 0.5 * p["x"] @ a @ p["x"]
  >>> params = {"x": jnp.array([1.0, -1.0])}
  >>> matvec, dim = hvp_operator(loss, params)
  >>> [float(u) for u in matvec(jnp.array([1.0, 0.0]))]
  [2.0, 1.0]
  >>> eigs = lanczos_extreme_eigs(matvec, dim, key=jax.random.PRNGKey(0))
  >>> round(eigs.lambda_min, 6), round(eigs.lambda_max, 6)
  (1.381966, 3.618034)
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.flatten_util import ravel_pytree

from lminima import EXACT_DTYPE

Params = Any  # any pytree of arrays; lminima.models uses a tuple of dicts
Matvec = Callable[[jax.Array], jax.Array]


# ---------------------------------------------------------------------------
# Flat views and Hessian-vector products.


def flatten_params(params: Params
                   ) -> tuple[jax.Array, Callable[[jax.Array], Params]]:
  """Flat parameter vector and the inverse map (``jax.flatten_util``).

  Example:
    >>> import jax.numpy as jnp
    >>> flat, unravel = flatten_params(({"w": jnp.ones((2, 2))},))
    >>> flat.shape, unravel(flat)[0]["w"].shape
    ((4,), (2, 2))
  """
  return ravel_pytree(params)


def hvp(loss_fn: Callable[[Params], jax.Array], params: Params,
        v: Params) -> Params:
  """Hessian-vector product ``H v`` as a pytree shaped like ``params``.

  Forward-over-reverse: ``H v = jvp(grad L, (theta,), (v,))``, one forward
  and one backward pass with tangents, no Hessian materialized.

  Args:
    loss_fn: scalar loss of the parameter pytree.
    params: point theta at which H is taken.
    v: direction, a pytree with the structure and shapes of ``params``.

  Example:
    >>> import jax.numpy as jnp
    >>> loss = lambda p: jnp.sum(p ** 3)
    >>> hvp(loss, jnp.array([1.0, 2.0]), jnp.array([1.0, 1.0])).tolist()
    [6.0, 12.0]
  """
  param_tree = jax.tree_util.tree_structure(params)
  v_tree = jax.tree_util.tree_structure(v)
  if param_tree != v_tree:
    raise ValueError(f"v must have the pytree structure of params; got "
                     f"{v_tree} vs {param_tree}")
  for p, u in zip(jax.tree_util.tree_leaves(params),
                  jax.tree_util.tree_leaves(v)):
    if jnp.shape(p) != jnp.shape(u):
      raise ValueError(f"v leaf shape {jnp.shape(u)} != params leaf shape "
                       f"{jnp.shape(p)}")
  return jax.jvp(jax.grad(loss_fn), (params,), (v,))[1]


@functools.lru_cache(maxsize=16)
def _jitted_linearizer(loss_fn: Callable[[Params], jax.Array]):
  """One jitted linearization per loss function.

  Linearizing inside jit makes the returned operator's pytree structure (its
  linear jaxpr) identical at every point with the same parameter shapes, so
  solvers jitted on the operator compile once per loss function instead of
  once per point. The cache keeps at most 16 loss functions (and their
  closed-over data) alive.
  """
  def linearize(params):
    flat, unravel = flatten_params(params)
    flat_loss = lambda theta: loss_fn(unravel(theta))
    return jax.linearize(jax.grad(flat_loss), flat)[1]
  return jax.jit(linearize)


def hvp_operator(loss_fn: Callable[[Params], jax.Array], params: Params
                 ) -> tuple[Matvec, int]:
  """Flat Hessian operator ``v -> H v`` linearized once at ``params``.

  ``jax.linearize(jax.grad(flat_loss), theta)`` evaluates the forward and
  backward pass once and keeps the residuals; each later product runs only the
  linear tangent computation. The returned matvec is a
  ``jax.tree_util.Partial`` (residuals as leaves), so it can be passed to
  jitted functions and vmapped. Reuse the same ``loss_fn`` object at every
  point: the linearization is jitted per loss function and the operators it
  returns share one structure, so Lanczos, SLQ and the trace estimators
  compile once for all points.

  Returns:
    ``(matvec, dim)`` with ``matvec: (dim,) -> (dim,)`` in the dtype of
    ``params`` and ``dim`` the number of parameters.

  Example:
    >>> import jax.numpy as jnp
    >>> matvec, dim = hvp_operator(lambda p: jnp.sum(p ** 3), jnp.ones(3))
    >>> dim, matvec(jnp.array([1.0, 0.0, 0.0])).tolist()
    (3, [6.0, 0.0, 0.0])
  """
  dim = int(flatten_params(params)[0].size)
  try:
    linearize = _jitted_linearizer(loss_fn)
  except TypeError:  # an unhashable callable: linearize without the cache
    linearize = _jitted_linearizer.__wrapped__(loss_fn)
  return linearize(params), dim


def _check_exact_params(params: Params) -> None:
  leaves = jax.tree_util.tree_leaves(params)
  if not leaves:
    raise ValueError("params has no array leaves")
  for leaf in leaves:
    dtype = jnp.result_type(leaf)
    if dtype != jnp.float64:
      raise ValueError(
          f"dense_hessian needs float64 params (certificates are exact-dtype),"
          f" got a {dtype} leaf; cast first with "
          f"lminima.models.cast_params(params, jnp.float64)")
    if not bool(jnp.all(jnp.isfinite(leaf))):
      raise ValueError("params contain NaN or inf; the Hessian is undefined "
                       "there (did training diverge?)")


def _as_operator(matvec: Matvec) -> jax.tree_util.Partial:
  """A pytree view of ``matvec`` so jitted solvers can take it as input."""
  if isinstance(matvec, jax.tree_util.Partial):
    return matvec
  return jax.tree_util.Partial(matvec)


@functools.partial(jax.jit, static_argnames=("dim", "chunk_size"))
def _dense_from_operator(operator, *, dim: int, chunk_size: int) -> jax.Array:
  dtype = jax.eval_shape(operator, jax.ShapeDtypeStruct((dim,), EXACT_DTYPE)
                         ).dtype
  column = lambda i: operator(jax.nn.one_hot(i, dim, dtype=dtype))
  # lax.map with batch_size vmaps chunk_size basis vectors at a time, which
  # bounds the tangent memory by chunk_size copies of the network state.
  return lax.map(column, jnp.arange(dim), batch_size=min(chunk_size, dim))


def dense_hessian(loss_fn: Callable[[Params], jax.Array], params: Params, *,
                  chunk_size: int = 256) -> jax.Array:
  """The full (n, n) Hessian in float64, built column block by column block.

  Column i is ``H e_i`` from the linearized HVP; ``chunk_size`` columns are
  computed together (vmap), which bounds memory while using matrix-matrix
  products. Roundoff makes ``H e_i`` and ``H e_j`` differ slightly in their
  shared entries; the result is symmetrized, ``(H + H^T) / 2``.

  Args:
    loss_fn: scalar loss of the parameter pytree.
    params: float64 parameters without NaN/inf.
    chunk_size: columns per vmapped block.

  Raises:
    ValueError: if a leaf is not float64, params are not finite, or
      ``chunk_size < 1``.

  Example:
    >>> import jax.numpy as jnp
    >>> loss = lambda p: p[0] ** 2 * p[1]
    >>> dense_hessian(loss, jnp.array([1.0, 2.0])).tolist()
    [[4.0, 2.0], [2.0, 0.0]]
  """
  if chunk_size < 1:
    raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
  _check_exact_params(params)
  matvec, dim = hvp_operator(loss_fn, params)
  return dense_from_operator(matvec, dim, chunk_size=chunk_size)


def dense_from_operator(matvec: Matvec, dim: int, *,
                        chunk_size: int = 256) -> jax.Array:
  """The symmetrized matrix ``(A + A^T) / 2`` of a symmetric ``matvec``.

  Column i is ``matvec(e_i)``, ``chunk_size`` columns at a time. No input
  checks: this is the traceable core of ``dense_hessian``, for callers that
  validate their parameters themselves and compile the whole construction
  (e.g. once per network shape).

  Example:
    >>> import jax.numpy as jnp
    >>> a = jnp.array([[2.0, 1.0], [1.0, 3.0]])
    >>> dense_from_operator(lambda v: a @ v, 2).tolist()
    [[2.0, 1.0], [1.0, 3.0]]
  """
  matrix = _dense_from_operator(_as_operator(matvec), dim=int(dim),
                                chunk_size=int(chunk_size))
  return 0.5 * (matrix + matrix.T)


# ---------------------------------------------------------------------------
# Lanczos.


_CHECKED_OPERATORS: set = set()


def _check_operator(matvec: Matvec, dim: int, dtype) -> None:
  """Raises ValueError unless ``matvec`` maps (dim,) to (dim,).

  The check traces the operator, so it is remembered per operator signature
  (pytree structure, leaf shapes, dim, dtype): operators from one loss
  function share a signature and are checked once.
  """
  if int(dim) < 1:
    raise ValueError(f"dim must be >= 1, got {dim}")
  leaves, treedef = jax.tree_util.tree_flatten(_as_operator(matvec))
  signature = (treedef, tuple((jnp.shape(leaf), jnp.result_type(leaf))
                              for leaf in leaves), int(dim), np.dtype(dtype))
  if signature in _CHECKED_OPERATORS:
    return
  try:
    out = jax.eval_shape(matvec, jax.ShapeDtypeStruct((dim,), dtype))
  except Exception as error:  # report the shape contract, keep the cause
    raise ValueError(f"matvec must map a ({dim},) vector to a ({dim},) "
                     f"vector; calling it on shape ({dim},) failed") from error
  if getattr(out, "shape", None) != (dim,):
    raise ValueError(f"matvec must map shape ({dim},) to ({dim},), got "
                     f"{getattr(out, 'shape', type(out).__name__)}; pass the "
                     "flat operator from hvp_operator, not a pytree HVP")
  _CHECKED_OPERATORS.add(signature)


def _breakdown_threshold(dim: int, dtype) -> float:
  # Below this relative size the new Lanczos direction is roundoff: the Krylov
  # space is invariant and its Ritz values are exact eigenvalues.
  return float(10.0 * np.sqrt(dim) * jnp.finfo(dtype).eps)


def _bucket_sizes(num_rows: int) -> tuple[int, ...]:
  """Static sizes 8, 16, 32, ... capped by ``num_rows`` (always included)."""
  sizes, size = [], 8
  while size < num_rows:
    sizes.append(size)
    size *= 2
  return tuple(sizes) + (num_rows,)


def _bucket_index(sizes: tuple[int, ...], needed) -> jax.Array:
  """Index of the smallest static size >= ``needed`` (a traced int)."""
  return jnp.searchsorted(jnp.asarray(sizes), needed)


def _reorthogonalize(basis: jax.Array, w: jax.Array, num_rows) -> jax.Array:
  """Removes from w its components along the first ``num_rows`` basis rows.

  Classical Gram-Schmidt twice ("twice is enough") keeps the basis orthogonal
  to working precision, which the Ritz values of clustered and indefinite
  spectra need. Only a power-of-two leading block of the basis takes part,
  chosen by ``lax.switch``, so step j costs O(j dim) rather than
  O(max_iters dim); rows beyond ``num_rows`` are zero and project nothing.
  """
  sizes = _bucket_sizes(basis.shape[0])

  def project_out(size, w):
    block = basis[:size]
    w = w - block.T @ (block @ w)
    return w - block.T @ (block @ w)

  branches = [functools.partial(project_out, size) for size in sizes]
  return lax.switch(_bucket_index(sizes, num_rows), branches, w)


def _lanczos_step(operator, basis, alphas, betas, scale, j, threshold):
  """Step j: fills alphas[j], betas[j], basis[j + 1] (full reorthogonalization).

  ``basis`` has one more row than steps and its unused rows are zero. After a
  breakdown every later vector, alpha and beta is exactly zero.
  """
  v = basis[j]
  w = operator(v).astype(basis.dtype)
  alpha = jnp.vdot(v, w)
  w = _reorthogonalize(basis, w, j + 1)
  beta = jnp.linalg.norm(w)
  scale = jnp.maximum(scale, jnp.abs(alpha) + beta + (
      jnp.where(j > 0, betas[j - 1], 0.0)))
  alive = (beta > threshold * scale) & jnp.any(v != 0)
  beta = jnp.where(alive, beta, 0.0)
  next_v = jnp.where(alive, w / jnp.where(alive, beta, 1.0), 0.0)
  return (basis.at[j + 1].set(next_v), alphas.at[j].set(alpha),
          betas.at[j].set(beta), scale, alive)


def _initial_basis(v0: jax.Array, num_rows: int, dtype) -> jax.Array:
  v0 = jnp.asarray(v0, dtype)
  v0 = v0 / jnp.linalg.norm(v0)
  return jnp.zeros((num_rows, v0.shape[0]), dtype).at[0].set(v0)


@functools.partial(jax.jit, static_argnames=("num_iters",))
def _lanczos_tridiagonal(operator, v0, *, num_iters):
  dtype = v0.dtype
  threshold = _breakdown_threshold(v0.shape[0], dtype)
  basis = _initial_basis(v0, num_iters + 1, dtype)
  alphas = jnp.zeros((num_iters,), dtype)
  betas = jnp.zeros((num_iters,), dtype)

  def body(j, state):
    basis, alphas, betas, scale = state
    basis, alphas, betas, scale, _ = _lanczos_step(
        operator, basis, alphas, betas, scale, j, threshold)
    return basis, alphas, betas, scale

  basis, alphas, betas, _ = lax.fori_loop(
      0, num_iters, body, (basis, alphas, betas, jnp.zeros((), dtype)))
  return alphas, betas, basis[:num_iters]


def lanczos_tridiagonal(matvec: Matvec, v0: jax.Array, num_iters: int
                        ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """``num_iters`` Lanczos steps from ``v0`` with full reorthogonalization.

  Builds an orthonormal basis V (rows v_1..v_k, v_1 = v0/||v0||) of the
  Krylov space K_k(H, v0) and the tridiagonal ``T = V H V^T`` with diagonal
  ``alphas`` and off-diagonal ``betas[:-1]``; ``betas[-1]`` is the norm of the
  residual direction, so ``H V^T = V^T T + betas[-1] v_{k+1} e_k^T``. If the
  Krylov space becomes invariant (e.g. ``num_iters > dim``) the remaining
  alphas, betas and basis rows are exactly zero, which adds eigenvalue-0
  Ritz pairs with zero first component (zero quadrature weight).

  Runs as one jitted ``lax.fori_loop`` in the dtype of ``v0``.

  Args:
    matvec: symmetric linear map of shape (dim,) -> (dim,).
    v0: nonzero start vector, shape (dim,).
    num_iters: number of steps k.

  Returns:
    ``(alphas (k,), betas (k,), basis (k, dim))``.

  Example:
    >>> import jax.numpy as jnp
    >>> a = jnp.diag(jnp.array([1.0, 2.0, 3.0]))
    >>> alphas, betas, basis = lanczos_tridiagonal(
    ...     lambda v: a @ v, jnp.ones(3), 3)
    >>> t = jnp.diag(alphas) + jnp.diag(betas[:-1], 1) + jnp.diag(betas[:-1], -1)
    >>> jnp.round(jnp.linalg.eigvalsh(t), 8).tolist()
    [1.0, 2.0, 3.0]
  """
  v0 = jnp.asarray(v0)
  if v0.ndim != 1:
    raise ValueError(f"v0 must be a vector, got shape {v0.shape}")
  if num_iters < 1:
    raise ValueError(f"num_iters must be >= 1, got {num_iters}")
  if not jnp.issubdtype(v0.dtype, jnp.floating):
    v0 = v0.astype(EXACT_DTYPE)
  _check_operator(matvec, v0.shape[0], v0.dtype)
  if not bool(jnp.any(v0 != 0)):
    raise ValueError("v0 must be nonzero")
  return _lanczos_tridiagonal(_as_operator(matvec), v0, num_iters=num_iters)


def _padded_tridiagonal(alphas, betas, num_active, size):
  """T_j in a size x size matrix whose extra eigenvalues equal alphas[0].

  alphas[0] = v_1^T H v_1 lies strictly inside the spectrum of an unreduced
  T_j (j >= 2) by interlacing, so the padding never becomes an extreme pair.
  """
  alphas, betas = alphas[:size], betas[:size]
  index = jnp.arange(size)
  diag = jnp.where(index < num_active, alphas, alphas[0])
  off = jnp.where(index[:-1] < num_active - 1, betas[:-1], 0.0)
  return jnp.diag(diag) + jnp.diag(off, 1) + jnp.diag(off, -1)


def _extreme_loop(operator, v0, tol, max_iters):
  dtype = v0.dtype
  threshold = _breakdown_threshold(v0.shape[0], dtype)
  basis = _initial_basis(v0, max_iters + 1, dtype)
  alphas = jnp.zeros((max_iters,), dtype)
  betas = jnp.zeros((max_iters,), dtype)
  sizes = _bucket_sizes(max_iters)
  # A check diagonalizes T_j padded to the next static size s >= j; checking
  # every s/16 steps wastes < 7% of the steps and keeps the eigh cost below
  # the matvecs'.
  intervals = jnp.asarray([max(1, size // 16) for size in sizes])

  def converged_at(size, alphas, betas, j):
    eigvals, eigvecs = jnp.linalg.eigh(
        _padded_tridiagonal(alphas, betas, j, size))
    last = eigvecs[j - 1]
    residual_min = betas[j - 1] * jnp.abs(last[0])
    residual_max = betas[j - 1] * jnp.abs(last[-1])
    bound = tol * jnp.maximum(jnp.abs(eigvals[0]), jnp.abs(eigvals[-1]))
    return (j >= 2) & (residual_min <= bound) & (residual_max <= bound)

  checks = [functools.partial(converged_at, size) for size in sizes]

  def cond(state):
    _, _, _, _, j, done = state
    return (j < max_iters) & ~done

  def body(state):
    basis, alphas, betas, scale, j, _ = state
    basis, alphas, betas, scale, alive = _lanczos_step(
        operator, basis, alphas, betas, scale, j, threshold)
    j = j + 1
    bucket = _bucket_index(sizes, j)
    check = (j % intervals[bucket] == 0) | (j == max_iters)
    done = ~alive | lax.cond(
        check, lambda: lax.switch(bucket, checks, alphas, betas, j),
        lambda: jnp.array(False))
    return basis, alphas, betas, scale, j, done

  state = (basis, alphas, betas, jnp.zeros((), dtype), jnp.array(0),
           jnp.array(False))
  basis, alphas, betas, _, num_steps, _ = lax.while_loop(cond, body, state)
  return basis, alphas, betas, num_steps


_extreme_loop_jit = jax.jit(_extreme_loop, static_argnames=("max_iters",))


@jax.jit
def _ritz_pairs(operator, basis, coefficients, values):
  """Unit Ritz vectors ``coefficients @ basis`` and their true residuals.

  ``coefficients`` is zero beyond the active steps, so the padded basis can
  stay on the device at its static shape.
  """
  vectors = coefficients @ basis
  vectors = vectors / jnp.linalg.norm(vectors, axis=1, keepdims=True)
  products = jax.vmap(operator)(vectors).astype(vectors.dtype)
  residuals = jnp.linalg.norm(products - values[:, None] * vectors, axis=1)
  return vectors, residuals


@dataclasses.dataclass(frozen=True)
class ExtremeEigs:
  """Extreme eigenpairs of a symmetric operator from Lanczos.

  Attributes:
    lambda_min: smallest Ritz value (estimate of the smallest eigenvalue).
    lambda_max: largest Ritz value.
    v_min: unit Ritz vector of ``lambda_min``, shape (dim,).
    v_max: unit Ritz vector of ``lambda_max``.
    residual_min: ``||H v_min - lambda_min v_min||``, recomputed with one
      extra matvec (not the Lanczos estimate). Some eigenvalue lies within
      this distance of ``lambda_min``.
    residual_max: the same for ``lambda_max``.
    num_matvecs: Lanczos steps plus the two residual products.
    converged: both Ritz residual estimates met the tolerance (or the Krylov
      space became invariant, making the Ritz values exact).
    ritz_values: all eigenvalues of the final tridiagonal T_j, ascending.
  """
  lambda_min: float
  lambda_max: float
  v_min: np.ndarray
  v_max: np.ndarray
  residual_min: float
  residual_max: float
  num_matvecs: int
  converged: bool
  ritz_values: np.ndarray


def lanczos_extreme_eigs(matvec: Matvec, dim: int, *, key: jax.Array,
                         max_iters: int = 300, tol: float = 1e-8,
                         dtype=jnp.float64) -> ExtremeEigs:
  """Smallest and largest eigenpairs of a symmetric operator by Lanczos.

  Lanczos with full reorthogonalization from a Gaussian start vector, in one
  jitted ``lax.while_loop``. Every few steps the tridiagonal T_j is
  diagonalized and the run stops once the Ritz residual estimates
  ``beta_j |s_j[-1]|`` of both extreme Ritz pairs are ``<= tol *
  max(|lambda_min|, |lambda_max|)``, after ``min(max_iters, dim)`` steps, or
  when the Krylov space becomes invariant. The residual estimate bounds the
  eigenvalue error (an eigenvalue lies within it), and the error is usually
  ``residual^2 / gap``, far smaller. The reported residuals are recomputed
  exactly with one extra matvec each.

  Args:
    matvec: symmetric linear map (dim,) -> (dim,), e.g. from ``hvp_operator``.
    dim: dimension n.
    key: PRNG key of the start vector.
    max_iters: step cap (also capped at dim).
    tol: relative residual tolerance.
    dtype: working dtype of the Lanczos vectors.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> a = jnp.diag(jnp.arange(-3.0, 7.0))
    >>> eigs = lanczos_extreme_eigs(lambda v: a @ v, 10,
    ...                             key=jax.random.PRNGKey(1))
    >>> round(eigs.lambda_min, 8), round(eigs.lambda_max, 8), eigs.converged
    (-3.0, 6.0, True)
  """
  if max_iters < 1:
    raise ValueError(f"max_iters must be >= 1, got {max_iters}")
  if not tol > 0:
    raise ValueError(f"tol must be positive, got {tol}")
  dim = int(dim)
  _check_operator(matvec, dim, dtype)
  operator = _as_operator(matvec)
  num_iters = min(int(max_iters), dim)
  v0 = jax.random.normal(key, (dim,), dtype)
  basis, alphas, betas, num_steps = _extreme_loop_jit(
      operator, v0, jnp.asarray(tol, dtype), max_iters=num_iters)
  j = int(num_steps)
  alphas = np.asarray(alphas, np.float64)[:j]
  betas = np.asarray(betas, np.float64)[:j]
  tridiagonal = (np.diag(alphas) + np.diag(betas[:-1], 1)
                 + np.diag(betas[:-1], -1))
  ritz_values, ritz_vectors = np.linalg.eigh(tridiagonal)
  scale = max(abs(ritz_values[0]), abs(ritz_values[-1]))
  estimates = betas[-1] * np.abs(ritz_vectors[-1, [0, -1]])
  invariant = betas[-1] == 0.0
  converged = bool(invariant or np.all(estimates <= tol * scale))
  coefficients = np.zeros((2, basis.shape[0]))
  coefficients[:, :j] = ritz_vectors[:, [0, -1]].T
  vectors, residuals = _ritz_pairs(
      operator, basis, jnp.asarray(coefficients, dtype),
      jnp.asarray(ritz_values[[0, -1]], dtype))
  vectors, residuals = np.asarray(vectors), np.asarray(residuals)
  return ExtremeEigs(
      lambda_min=float(ritz_values[0]), lambda_max=float(ritz_values[-1]),
      v_min=vectors[0], v_max=vectors[1],
      residual_min=float(residuals[0]), residual_max=float(residuals[1]),
      num_matvecs=j + 2, converged=converged, ritz_values=ritz_values)


# ---------------------------------------------------------------------------
# Spectral density and traces.


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
    alphas, betas, _ = _lanczos_tridiagonal(operator, v0, num_iters=num_iters)
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
  """Eigenvalue density of a symmetric operator by stochastic Lanczos quadrature.

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
  _check_operator(matvec, dim, dtype)
  probes = _rademacher(key, (num_probes, dim), dtype)
  nodes, weights = _slq_quadrature(_as_operator(matvec), probes,
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
  _check_operator(matvec, dim, dtype)
  probes = _rademacher(key, (num_probes, dim), dtype)
  samples = np.asarray(_quadratic_forms(_as_operator(matvec), probes))
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
  _check_operator(matvec, dim, dtype)
  sketch_size = min(num_matvecs // 3, dim)
  sketch_key, probe_key = jax.random.split(key)
  sketch = _rademacher(sketch_key, (sketch_size, dim), dtype)
  probes = _rademacher(probe_key, (num_matvecs // 3, dim), dtype)
  return float(_hutchpp_estimate(_as_operator(matvec), sketch, probes))


@jax.jit
def _hutchpp_estimate(operator, sketch, probes):
  apply_rows = lambda rows: lax.map(
      lambda z: operator(z).astype(rows.dtype), rows)
  basis, _ = jnp.linalg.qr(apply_rows(sketch).T)  # (dim, k), orthonormal
  exact_part = jnp.trace(basis.T @ apply_rows(basis.T).T)
  deflated = probes - (probes @ basis) @ basis.T
  remainder = jnp.sum(deflated * apply_rows(deflated)) / probes.shape[0]
  return exact_part + remainder
