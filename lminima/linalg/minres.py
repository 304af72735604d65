"""MINRES for symmetric (possibly indefinite or singular) systems, in JAX.

For a symmetric operator ``A`` and right-hand side ``b``, MINRES (Paige &
Saunders 1975) returns at step k the iterate ``x_k`` of the Krylov space
``K_k(A, b) = span{b, A b, ..., A^{k-1} b}`` that minimizes ``||b - A x||``.
Lanczos builds an orthonormal basis ``V_k`` of that space and the tridiagonal
``T_k`` (``A V_k = V_{k+1} T_{k+1,k}``), so ``x_k = V_k y_k`` with
``y_k = argmin ||beta_1 e_1 - T_{k+1,k} y||``; Givens rotations keep the QR
factorization of ``T_{k+1,k}`` up to date and ``x_k`` follows by a short
recurrence, with ``||r_k|| = phibar_k`` for free. Work per step: one matvec
and a few vector updates; memory: a handful of vectors.

Stopping (``MinresResult.stop``; the tests of SciPy's ``minres``, with
``||A||`` estimated by the Frobenius norm of ``T_k``):

* 1: ``||r_k|| <= rtol ||A|| ||x_k||`` (the system is solved to ``rtol``,
  relative to the size of ``A x``);
* 2: ``||A r_{k-1}|| <= rtol ||A|| ||r_{k-1}||``: ``x`` is a least-squares
  solution to ``rtol`` (a singular, incompatible system: ``b`` is not in the
  range);
* 3: the Lanczos vector broke down (``beta_{k+1} ~ 0``): the Krylov space is
  invariant and ``x_k`` is its exact minimizer;
* 4: ``max_iters`` steps.

Starting from ``x_0 = 0``, for a consistent singular system the iterates stay
in the range of ``A``, so MINRES converges to the minimum-norm solution
(Choi, Paige & Saunders 2011), which is what Newton-MR needs at degenerate
points (``lminima.critical.refinement``). For an incompatible system, test 2
stops at a least-squares solution at moderate ``rtol``; asked for ``rtol`` below
~1e-8 the iterates can grow along the null space before it triggers (the case
MINRES-QLP was designed for), which Newton-MR's line search absorbs.

Everything is ``jax.numpy`` inside one ``lax.while_loop``, so the solver runs
under ``jit`` and ``vmap``: vmapped over members, each lane stops on its own
test (its state freezes) while the loop runs until the last lane stops.

Example:
  >>> import jax.numpy as jnp
  >>> a = jnp.array([[2.0, 1.0], [1.0, -3.0]])
  >>> result = minres(lambda v: a @ v, jnp.array([1.0, 2.0]), rtol=1e-12)
  >>> jnp.allclose(a @ result.x, jnp.array([1.0, 2.0])).item(), int(result.stop)
  (True, 1)
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

STOPS = ("solved", "least_squares", "invariant", "max_iters")


class MinresResult(NamedTuple):
  """Output of ``minres`` (arrays; batched under ``vmap``).

  Attributes:
    x: the final iterate.
    residual_norm: ``||b - A x||`` as MINRES tracks it (``phibar``).
    iters: steps taken (matvecs).
    stop: 1-based index into ``STOPS``.
  """
  x: jax.Array
  residual_norm: jax.Array
  iters: jax.Array
  stop: jax.Array


def minres(matvec: Callable[[jax.Array], jax.Array], b: jax.Array, *,
           rtol: float | jax.Array = 1e-8, max_iters: int = 1000
           ) -> MinresResult:
  """Solves ``A x = b`` (or least squares) for a symmetric ``A`` by MINRES.

  Args:
    matvec: ``v -> A v`` for a symmetric ``A``, shape (n,) -> (n,); traced.
    b: right-hand side, shape (n,); its dtype is the working dtype.
    rtol: relative tolerance of the two convergence tests (module
      docstring); may be a traced scalar (one per lane under ``vmap``).
    max_iters: step cap (static).

  Returns:
    A ``MinresResult``. ``b = 0`` returns ``x = 0`` with stop 1 at step 0.
  """
  dtype = b.dtype
  eps = jnp.finfo(dtype).eps
  zero = jnp.zeros_like(b)
  beta1 = jnp.linalg.norm(b)
  rtol = jnp.asarray(rtol, dtype)
  scalar = lambda value: jnp.asarray(value, dtype)

  # Carry: (k, stop, x, w, w2, r1, r2, y, beta, oldb, dbar, epsln, phibar,
  # cs, sn, tnorm2). r1, r2 are the last two unnormalized Lanczos
  # vectors and y = r2 the next one; w, w2 the last two search directions.
  def body(state):
    (k, _, x, w, w2, r1, r2, y, beta, oldb, dbar, epsln, phibar, cs, sn,
     tnorm2) = state
    v = y / beta
    y = matvec(v).astype(dtype)
    y = y - (beta / oldb) * r1  # r1 = 0 at the first step
    alpha = jnp.vdot(v, y)
    y = y - (alpha / beta) * r2
    r1, r2 = r2, y
    oldb, beta = beta, jnp.linalg.norm(y)
    tnorm2 = tnorm2 + alpha ** 2 + oldb ** 2 + beta ** 2
    # The previous rotation applied to the new column of T.
    oldeps = epsln
    delta = cs * dbar + sn * alpha
    gbar = sn * dbar - cs * alpha
    epsln = sn * beta
    dbar = -cs * beta
    root = jnp.hypot(gbar, dbar)  # ||A r_{k-1}|| / ||r_{k-1}||
    # The new rotation, annihilating beta.
    gamma = jnp.maximum(jnp.hypot(gbar, beta), eps)
    cs, sn = gbar / gamma, beta / gamma
    phi, phibar = cs * phibar, sn * phibar
    w, w2 = (v - oldeps * w2 - delta * w) / gamma, w
    x = x + phi * w
    k = k + 1
    anorm = jnp.sqrt(tnorm2)
    stop = jnp.select(
        [phibar <= rtol * anorm * jnp.linalg.norm(x), root <= rtol * anorm,
         beta <= eps * anorm, k >= max_iters],
        [1, 2, 3, 4], 0)
    return (k, stop, x, w, w2, r1, r2, y, beta, oldb, dbar, epsln, phibar,
            cs, sn, tnorm2)

  state = (jnp.asarray(0), jnp.where(beta1 > 0, 0, 1), zero, zero, zero,
           zero, b, b, jnp.where(beta1 > 0, beta1, 1.0).astype(dtype),
           scalar(1.0), scalar(0.0), scalar(0.0), beta1, scalar(-1.0),
           scalar(0.0), scalar(0.0))
  state = lax.while_loop(lambda s: s[1] == 0, body, state)
  return MinresResult(x=state[2], residual_norm=state[12], iters=state[0],
                      stop=state[1])
