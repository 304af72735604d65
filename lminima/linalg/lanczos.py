"""Lanczos for symmetric operators: tridiagonalization and extreme eigenpairs.

Given a symmetric ``matvec: (n,) -> (n,)`` (e.g. a Hessian from
``lminima.core.hessian.hvp_operator``) and a start vector ``v_1 = v0 / ||v0||``,
the Lanczos recurrence

  ``beta_j v_{j+1} = H v_j - alpha_j v_j - beta_{j-1} v_{j-1}``,
  ``alpha_j = v_j^T H v_j``,  ``beta_j = ||H v_j - alpha_j v_j - ...||``,

builds an orthonormal basis ``V_k`` (rows ``v_1..v_k``) of the Krylov space
``K_k(H, v0) = span{v0, H v0, ..., H^{k-1} v0}`` and the tridiagonal
``T_k = V_k H V_k^T`` (diagonal ``alphas``, off-diagonal ``betas[:-1]``):

  ``H V_k^T = V_k^T T_k + beta_k v_{k+1} e_k^T``.

With ``T_k = S diag(theta) S^T``, the Ritz pairs ``(theta_i, y_i = V_k^T
s_i)`` satisfy ``||H y_i - theta_i y_i|| = beta_k |s_i[k]|`` (the last
component of ``s_i``), so this residual estimate costs no matvec; some
eigenvalue of H lies within it of ``theta_i``, and the eigenvalue error is
usually of order ``residual^2 / gap``, far smaller. By Cauchy interlacing the
Ritz values lie inside ``[lambda_min, lambda_max]``, and the extreme ones
converge first, fastest when they are isolated.

In floating point the three-term recurrence loses orthogonality exactly as
Ritz values converge (Paige): the basis regains components along converged
Ritz vectors, and spurious "ghost" copies of already-found eigenvalues
appear among the Ritz values. Counting Ritz values, e.g. the negative ones as
a certificate's index does (``docs/theory.md``), then overcounts.
``lanczos_tridiagonal`` (fixed step counts, for quadrature) therefore
reorthogonalizes every step against all previous basis vectors (classical
Gram-Schmidt, a second pass where the first cancelled), which keeps ``V_k
V_k^T = I`` to working precision. ``lanczos_extreme_eigs`` and
``extreme_eigs_of_population`` reorthogonalize partially (Simon 1984): a
recurrence estimates every ``|v_{j+1} . v_k|`` for free, and the full pass runs
only when an estimate exceeds ``sqrt(eps)`` (and at the step after).
Semi-orthogonality is enough: T_k is then the projection of H onto the
Krylov space to working precision, so the Ritz values are as accurate and
ghost-free as with full reorthogonalization, while at large dim, where a full
pass over the basis costs more than the Hessian-vector product (it is memory
bound), most steps skip it. The Ritz vectors' true residuals, recomputed at
the end, then carry errors up to ~sqrt(eps) ||H||. If ``beta_j`` falls to
roundoff the Krylov space is invariant and its Ritz values are exact
eigenvalues; the run stops there.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from lminima.core.hessian import hvp_operator
  >>> a = jnp.array([[2.0, 1.0], [1.0, 3.0]])
  >>> matvec, dim = hvp_operator(lambda p: 0.5 * p @ a @ p, jnp.ones(2))
  >>> eigs = lanczos_extreme_eigs(matvec, dim, key=jax.random.PRNGKey(0))
  >>> round(eigs.lambda_min, 6), round(eigs.lambda_max, 6)
  (1.381966, 3.618034)
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from lminima.core.hessian import Matvec, as_operator, check_operator
from lminima.dtypes import EXACT_DTYPE


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

  ``basis`` (..., rows, dim) and ``w`` (..., dim) may carry leading batch
  axes (``_extreme_loop``'s lanes). One classical Gram-Schmidt pass, and a
  second only where the first removed more than ~30% of ``||w||`` (the
  Daniel-Gragg-Kaufman-Stewart test: then cancellation may have left
  components behind; "twice is enough"); the caller has already taken out
  the three-term recurrence's large components, so the second pass is rare.
  This keeps the basis orthogonal to working precision, which the Ritz values
  of clustered and indefinite spectra need. Only a leading block of the basis
  takes part, chosen by ``lax.switch``, so step j costs O(j dim) rather than
  O(max_iters dim); rows beyond ``num_rows`` are zero and project nothing.
  At large dim the step is memory bound: each pass reads the block twice.
  """
  sizes = _bucket_sizes(basis.shape[-2])

  def project_out(size, w):
    block = basis[..., :size, :]
    coefficients = jnp.einsum("...rn,...n->...r", block, w)
    return w - jnp.einsum("...rn,...r->...n", block, coefficients)

  branches = [functools.partial(project_out, size) for size in sizes]
  bucket = _bucket_index(sizes, num_rows)
  once = lax.switch(bucket, branches, w)
  again = jnp.any(jnp.linalg.norm(once, axis=-1)
                  < 0.7 * jnp.linalg.norm(w, axis=-1))
  return lax.cond(again, lambda: lax.switch(bucket, branches, once),
                  lambda: once)


def _lanczos_step(operator, basis, alphas, betas, scale, j, threshold):
  """Step j: fills alphas[j], betas[j], basis[j + 1] (full reorthogonalization).

  ``basis`` has one more row than steps and its unused rows are zero. After a
  breakdown every later vector, alpha and beta is exactly zero.
  """
  return _lanczos_update(basis, alphas, betas, scale, j,
                         operator(basis[j]), threshold)


def _lanczos_update(basis, alphas, betas, scale, j, w, threshold):
  """``_lanczos_step`` given ``w = H basis[j]`` (computed by the caller, so
  that a population's products are one batched call); with leading batch
  axes on every array argument but ``j`` and ``threshold``."""
  alpha, previous, w = _three_term(basis, betas, j, w)
  return _next_vector(basis, alphas, betas, scale, j, alpha, previous,
                      _reorthogonalize(basis, w, j + 1), threshold)


def _three_term(basis, betas, j, w):
  """``alpha_j`` and ``w - alpha_j v_j - beta_{j-1} v_{j-1}``."""
  v = basis[..., j, :]
  w = w.astype(basis.dtype)
  alpha = jnp.sum(v * w, axis=-1)
  previous = jnp.where(j > 0, betas[..., j - 1], 0.0)
  return alpha, previous, (w - alpha[..., None] * v
                           - previous[..., None] * basis[..., j - 1, :])


def _next_vector(basis, alphas, betas, scale, j, alpha, previous, w,
                 threshold):
  """Stores ``alpha_j``, ``beta_j = ||w||`` and ``v_{j+1} = w / beta_j``
  (zero after a breakdown)."""
  v = basis[..., j, :]
  beta = jnp.linalg.norm(w, axis=-1)
  scale = jnp.maximum(scale, jnp.abs(alpha) + beta + previous)
  alive = (beta > threshold * scale) & jnp.any(v != 0, axis=-1)
  beta = jnp.where(alive, beta, 0.0)
  next_v = jnp.where(alive[..., None],
                     w / jnp.where(alive, beta, 1.0)[..., None], 0.0)
  return (basis.at[..., j + 1, :].set(next_v), alphas.at[..., j].set(alpha),
          betas.at[..., j].set(beta), scale, alive)


def _omega_step(omega, omega_prev, alphas, betas, j, alpha, previous, beta,
                scale, dim):
  """Simon's estimates ``omega_{j+1, k} ~ v_{j+1} . v_k`` (k <= j + 1).

  From ``beta_j v_{j+1} = H v_j - alpha_j v_j - beta_{j-1} v_{j-1}`` and the
  same relation for ``v_k``: ``beta_j w_{j+1,k} = beta_k w_{j,k+1} +
  (alpha_k - alpha_j) w_{j,k} + beta_{k-1} w_{j,k-1} - beta_{j-1}
  w_{j-1,k}``, plus a roundoff term of size ``eps ||H||`` with the sign
  that makes it grow (Simon 1984). Batched over lanes; ``omega`` holds
  ``w_{j,.}`` and ``omega_prev`` ``w_{j-1,.}``, zero beyond their diagonal.
  """
  eps = jnp.finfo(omega.dtype).eps
  size = omega.shape[-1]
  k = jnp.arange(size)
  pad = lambda a: jnp.concatenate([a, jnp.zeros_like(a[..., :1])], axis=-1)
  a_k, b_k = pad(alphas), pad(betas)
  b_km1 = jnp.where(k > 0, jnp.roll(b_k, 1, axis=-1), 0.0)
  up = jnp.where(k < size - 1, jnp.roll(omega, -1, axis=-1), 0.0)
  down = jnp.where(k > 0, jnp.roll(omega, 1, axis=-1), 0.0)
  numerator = (b_k * up + (a_k - alpha[..., None]) * omega + b_km1 * down
               - previous[..., None] * omega_prev)
  numerator = numerator + jnp.sign(numerator) * 2.0 * eps * scale[..., None]
  safe = jnp.where(beta > 0, beta, 1.0)[..., None]
  new = jnp.where(k < j, numerator / safe, 0.0)
  new = jnp.where(k == j, eps * np.sqrt(dim), new)
  return jnp.where(k == j + 1, 1.0, new)


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
    >>> t = (jnp.diag(alphas) + jnp.diag(betas[:-1], 1)
    ...      + jnp.diag(betas[:-1], -1))
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
  check_operator(matvec, v0.shape[0], v0.dtype)
  if not bool(jnp.any(v0 != 0)):
    raise ValueError("v0 must be nonzero")
  return _lanczos_tridiagonal(as_operator(matvec), v0, num_iters=num_iters)


def lanczos_tridiagonal_unchecked(matvec: Matvec, v0: jax.Array,
                                  num_iters: int
                                  ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """``lanczos_tridiagonal`` without input checks, traceable.

  The same computation, for callers inside ``jax.jit``, ``vmap`` or
  ``lax.map`` (e.g. one run per probe in ``lminima.linalg.slq``) that have
  checked ``matvec`` and ``v0`` themselves; ``v0`` must be a nonzero float
  vector. ``num_iters`` must be static.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> a = jnp.diag(jnp.array([1.0, 2.0]))
    >>> run = jax.jit(lambda v: lanczos_tridiagonal_unchecked(
    ...     lambda u: a @ u, v, 2)[0])
    >>> jnp.round(run(jnp.ones(2)), 8).tolist()
    [1.5, 1.5]
  """
  return _lanczos_tridiagonal(as_operator(matvec), v0,
                              num_iters=int(num_iters))


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


def _extreme_loop(operator, v0s, tol, max_iters):
  """Lanczos runs of a population, stepped together until each converged.

  ``operator`` maps a batch of vectors ``(B, dim)`` to their products, row i
  by member i's symmetric operator; ``v0s`` holds the B start vectors. The
  step counter j is shared (so the reorthogonalization and check sizes stay
  static switches under the batch); each lane counts its own ``steps``,
  which stop at its convergence or breakdown. A converged lane keeps being
  multiplied until the last lane converges (its later rows are ignored).

  Returns ``(basis (B, max_iters + 1, dim), alphas (B, max_iters), betas,
  steps (B,), reorthogonalizations (B,))``, the last counting the full
  passes made within each lane's own steps.
  """
  batch, dim = v0s.shape
  dtype = v0s.dtype
  threshold = _breakdown_threshold(dim, dtype)
  basis = jax.vmap(lambda v: _initial_basis(v, max_iters + 1, dtype))(v0s)
  alphas = jnp.zeros((batch, max_iters), dtype)
  betas = jnp.zeros((batch, max_iters), dtype)
  sizes = _bucket_sizes(max_iters)
  # A check diagonalizes T_j padded to the next static size s >= j; checking
  # every s/16 steps wastes < 7% of the steps and keeps the eigh cost below
  # the matvecs'.
  intervals = jnp.asarray([max(1, size // 16) for size in sizes])
  eps = jnp.finfo(dtype).eps
  semi = float(np.sqrt(eps))

  def converged_at(size, alphas, betas, j):
    eigvals, eigvecs = jnp.linalg.eigh(
        _padded_tridiagonal(alphas, betas, j, size))
    last = eigvecs[j - 1]
    residual_min = betas[j - 1] * jnp.abs(last[0])
    residual_max = betas[j - 1] * jnp.abs(last[-1])
    bound = tol * jnp.maximum(jnp.abs(eigvals[0]), jnp.abs(eigvals[-1]))
    return (j >= 2) & (residual_min <= bound) & (residual_max <= bound)

  checks = [jax.vmap(functools.partial(converged_at, size))
            for size in sizes]

  def cond(state):
    j, done = state[5:7]
    return (j < max_iters) & ~jnp.all(done)

  def body(state):
    (basis, alphas, betas, scale, steps, j, done, omega, omega_prev,
     forced, passes) = state
    alpha, previous, w = _three_term(basis, betas, j, operator(basis[:, j]))
    scale = jnp.maximum(scale, jnp.abs(alpha) + previous)
    new_omega = _omega_step(omega, omega_prev, alphas, betas, j, alpha,
                            previous, jnp.linalg.norm(w, axis=-1), scale, dim)
    # Partial reorthogonalization: only when some estimate exceeds sqrt(eps)
    # (semi-orthogonality keeps the Ritz values as accurate as full
    # reorthogonalization does, without ghosts), and at the step after, as
    # Simon prescribes; the estimates then restart at roundoff.
    # One lane's need reorthogonalizes every lane (the batched pass costs the
    # same), which keeps the lanes' reorthogonalizations in step.
    behind = jnp.arange(omega.shape[-1]) <= j
    need = forced | jnp.any(behind & (jnp.abs(new_omega) > semi))
    w = lax.cond(need, lambda: _reorthogonalize(basis, w, j + 1), lambda: w)
    passes = passes + (need & ~done)
    new_omega = jnp.where(need & behind, eps, new_omega)
    basis, alphas, betas, scale, alive = _next_vector(
        basis, alphas, betas, scale, j, alpha, previous, w, threshold)
    j = j + 1
    steps = jnp.where(done, steps, j)
    bucket = _bucket_index(sizes, j)
    check = (j % intervals[bucket] == 0) | (j == max_iters)
    done = done | ~alive | lax.cond(
        check, lambda: lax.switch(bucket, checks, alphas, betas, steps),
        lambda: jnp.zeros((batch,), bool))
    return (basis, alphas, betas, scale, steps, j, done, new_omega, omega,
            need & ~forced, passes)

  omega = jnp.zeros((batch, max_iters + 1), dtype).at[:, 0].set(1.0)
  state = (basis, alphas, betas, jnp.zeros((batch,), dtype),
           jnp.zeros((batch,), jnp.int32), jnp.array(0),
           jnp.zeros((batch,), bool), omega, jnp.zeros_like(omega),
           jnp.array(False), jnp.zeros((batch,), jnp.int32))
  basis, alphas, betas, _, steps, *_, passes = lax.while_loop(cond, body,
                                                              state)
  return basis, alphas, betas, steps, passes


_extreme_loop_jit = jax.jit(_extreme_loop, static_argnames=("max_iters",))


@jax.jit
def _ritz_pairs(operator, basis, coefficients, values):
  """Unit Ritz vectors ``coefficients @ basis`` and their true residuals.

  Batched as ``_extreme_loop``: ``basis`` (B, rows, dim), ``coefficients``
  (B, 2, rows), ``values`` (B, 2). ``coefficients`` is zero beyond each
  lane's active steps, so the padded basis can stay on the device at its
  static shape.
  """
  vectors = jnp.einsum("bcr,brn->bcn", coefficients, basis)
  vectors = vectors / jnp.linalg.norm(vectors, axis=2, keepdims=True)
  products = jnp.stack([operator(vectors[:, c]) for c in range(2)], axis=1)
  residuals = jnp.linalg.norm(
      products.astype(vectors.dtype) - values[..., None] * vectors, axis=2)
  return vectors, residuals


def _one_member(operator, vectors):
  return operator(vectors[0])[None]


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
    num_reorthogonalizations: the steps that ran the full
      reorthogonalization pass (partial reorthogonalization: the steps
      where Simon's estimates exceeded sqrt(eps), and the step after each).
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
  num_reorthogonalizations: int
  converged: bool
  ritz_values: np.ndarray


def lanczos_extreme_eigs(matvec: Matvec, dim: int, *, key: jax.Array,
                         max_iters: int = 300, tol: float = 1e-8,
                         dtype=jnp.float64) -> ExtremeEigs:
  """Smallest and largest eigenpairs of a symmetric operator by Lanczos.

  Lanczos with partial reorthogonalization (module docstring) from a
  Gaussian start vector, in one jitted ``lax.while_loop``. Every few steps
  the tridiagonal T_j is diagonalized and the run stops once the Ritz
  residual estimates
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
  check_operator(matvec, dim, dtype)
  operator = jax.tree_util.Partial(_one_member, as_operator(matvec))
  v0 = jax.random.normal(key, (dim,), dtype)[None]
  return extreme_eigs_of_population(operator, v0, max_iters=max_iters,
                                    tol=tol)[0]


def extreme_eigs_of_population(operator: jax.tree_util.Partial,
                               v0s: jax.Array, *, max_iters: int = 300,
                               tol: float = 1e-8) -> list[ExtremeEigs]:
  """``lanczos_extreme_eigs`` of B operators at once, in one program.

  The B Lanczos runs step together (one batched product per step, e.g. the
  Hessian-vector products of B members vmapped) until each has met the
  convergence test of ``lanczos_extreme_eigs`` or hit the cap; each result
  is built from its own steps only, so it equals the single run's up to the
  rounding of batched kernels.

  Args:
    operator: a ``jax.tree_util.Partial`` mapping ``(B, dim)`` to ``(B,
      dim)``, row i by the i-th symmetric operator (checked by the caller).
    v0s: start vectors, shape (B, dim); their dtype is the working dtype.
    max_iters: step cap (also capped at dim).
    tol: relative residual tolerance.

  Returns:
    One ``ExtremeEigs`` per row of ``v0s``.
  """
  batch, dim = v0s.shape
  dtype = v0s.dtype
  num_iters = min(int(max_iters), dim)
  basis, alphas, betas, steps, passes = _extreme_loop_jit(
      operator, v0s, jnp.asarray(tol, dtype), max_iters=num_iters)
  alphas = np.asarray(alphas, np.float64)
  betas = np.asarray(betas, np.float64)
  steps = np.asarray(steps)
  passes = np.asarray(passes)
  coefficients = np.zeros((batch, 2, basis.shape[1]))
  ends = np.zeros((batch, 2))
  lanes = []
  for b in range(batch):
    j = int(steps[b])
    a, c = alphas[b, :j], betas[b, :j]
    tridiagonal = np.diag(a) + np.diag(c[:-1], 1) + np.diag(c[:-1], -1)
    ritz_values, ritz_vectors = np.linalg.eigh(tridiagonal)
    scale = max(abs(ritz_values[0]), abs(ritz_values[-1]))
    estimates = c[-1] * np.abs(ritz_vectors[-1, [0, -1]])
    converged = bool(c[-1] == 0.0 or np.all(estimates <= tol * scale))
    coefficients[b, :, :j] = ritz_vectors[:, [0, -1]].T
    ends[b] = ritz_values[[0, -1]]
    lanes.append((j, converged, ritz_values))
  vectors, residuals = _ritz_pairs(operator, basis,
                                   jnp.asarray(coefficients, dtype),
                                   jnp.asarray(ends, dtype))
  vectors, residuals = np.asarray(vectors), np.asarray(residuals)
  return [ExtremeEigs(
      lambda_min=float(ends[b, 0]), lambda_max=float(ends[b, 1]),
      v_min=vectors[b, 0], v_max=vectors[b, 1],
      residual_min=float(residuals[b, 0]), residual_max=float(residuals[b, 1]),
      num_matvecs=j + 2, num_reorthogonalizations=int(passes[b]),
      converged=converged, ritz_values=ritz_values)
          for b, (j, converged, ritz_values) in enumerate(lanes)]
