"""Certificates of a whole population: spectra in one compiled program.

``certify_many(problems, ...) -> list[Certificate]`` is ``certify.certificate``
for every point of a population of one shape (``lanes.shape_key``): the dense
Hessians and their ``eigh`` vmapped in one float64 program, the verdicts by
the same code (``certify.decide``, which runs the second-order proof or the
descent probe member by member). Above ``dense_max_params``,
``extreme_eigs_many``: Lanczos runs of blocks of members stepped together,
their Hessian-vector products one vmapped call. Results equal the sequential
ones up to the summation order of batched kernels
(tests/test_batched_refine.py).

Example:
  >>> import jax, numpy as np
  >>> from lminima import Problem
  >>> from lminima.core.models import MLP
  >>> model = MLP(d_in=2, widths=(3,), d_out=1, activation="tanh")
  >>> x = np.random.default_rng(0).standard_normal((8, 2))
  >>> problems = [Problem.for_module(model, model.init_params(
  ...     jax.random.PRNGKey(s)), x, np.sin(x[:, :1])) for s in range(2)]
  >>> [c.n_params for c in certify_many(problems)]
  [13, 13]
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lminima.core import problem as problem_lib
from lminima.core.problem import Problem
from lminima.core.tolerances import DEFAULT, Tolerances
from lminima.critical import certify
from lminima.critical import refinement
from lminima.critical.batched.lanes import blocks, check_population
from lminima.dtypes import EXACT_DTYPE
from lminima.linalg import lanczos

# certify.certificate's Lanczos step cap (lanczos_extreme_eigs' default), and
# members per Lanczos program call (docs/design.md, "Lanczos").
_LANCZOS_MAX_ITERS, _LANCZOS_LANES = 300, 4

def spectrum(lam: np.ndarray, residuals: np.ndarray) -> tuple:
  """``certify.decide``'s spectrum from a dense ``eigh``."""
  return (lam, float(lam[0]), float(lam[-1]), float(residuals[0]),
          float(residuals[1]))


@functools.partial(jax.jit, static_argnames=("objective",))
def _dense_spectra(objective, flats, like, x, y):
  """Ascending eigenvalues and extreme residuals of each member's Hessian."""
  def one(flat):
    matrix = problem_lib._dense_hessian(  # pylint: disable=protected-access
        objective, flat, like, x, y)
    lam, vecs = jnp.linalg.eigh(matrix)
    return lam, certify.end_residuals(matrix, lam, vecs, xp=jnp)
  return jax.vmap(one)(flats)


def certify_many(problems: Sequence[Problem], *,
                 tol: Tolerances | None = None, dense_max_params: int = 3000,
                 lm_max_params: int = 5000, key: jax.Array | None = None
                 ) -> list[certify.Certificate]:
  """``certify.certificate(p, ...)`` for every ``p``, spectra batched.

  Loss, gradient norm and kinks are each problem's own (cached) values, so
  those fields equal the sequential ones exactly; the spectra come from one
  vmapped ``eigh`` program (equal up to roundoff), and the proof or the
  descent probe runs member by member (``certify.decide``). Members with a
  non-finite L or g get no spectrum, as in ``certificate``.

  Args:
    problems: members of one shape (``shape_key``), at their points.
    tol, dense_max_params, lm_max_params, key: as in
      ``certificate``; above ``dense_max_params`` the extreme eigenpairs come
      from Lanczos runs of all members in one program
      (``lanczos.extreme_eigs_of_population``, same start vector and
      tolerance as ``certificate``).

  Returns:
    One ``certify.Certificate`` per problem, in order.

  Raises:
    ValueError: on mixed shapes or data, or bad tolerances.
  """
  first = check_population(problems, "certify_many")
  certify.check_dense_max_params(dense_max_params, caller="certify_many")
  tol = DEFAULT if tol is None else tol
  dense = first.n_params <= dense_max_params and (
      8 * first.n_params ** 2 <= first.memory_budget_bytes)
  rows = [i for i, p in enumerate(problems)
          if math.isfinite(p.loss) and math.isfinite(p.grad_norm)]
  if not dense:
    spectra = {i: certify.lanczos_spectrum(e)
               for i, e in zip(rows, extreme_eigs_many(
                   [problems[i] for i in rows], key=key) if rows else [])}
  else:
    spectra = {}
    flats = np.stack([np.asarray(problems[i].flat) for i in rows]) if rows \
        else np.zeros((0, first.n_params))
    for start, real, block in blocks(len(rows), 3 * 8 * first.n_params ** 2,
                                     first.memory_budget_bytes):
      with refinement.serial_blas():
        lams, residuals = (np.asarray(a) for a in _dense_spectra(
            first.objective, jnp.asarray(flats[block], EXACT_DTYPE),
            first.params, first.x, first.y))
      for j in range(real):
        spectra[rows[start + j]] = spectrum(lams[j], residuals[j])
  return [certify.decide(p, spectra.get(i), "dense" if dense else "lanczos",
                         tol, lm_max_params)
          for i, p in enumerate(problems)]


@functools.lru_cache(maxsize=64)
def _members_hvp(objective) -> Callable[..., jax.Array]:
  """``(flats, like, x, y, vectors) ->`` row i of ``vectors`` times member
  i's Hessian, one vmapped call; one function object per objective, so the
  Lanczos program compiles once per shape."""
  return jax.vmap(problem_lib._flat_hvp(objective),  # pylint: disable=protected-access
                  in_axes=(0, None, None, None, 0))


def extreme_eigs_many(problems: Sequence[Problem], *, tol: float = 1e-8,
                      max_iters: int = _LANCZOS_MAX_ITERS,
                      key: jax.Array | None = None,
                      lanes: int = _LANCZOS_LANES
                      ) -> list[lanczos.ExtremeEigs]:
  """``lanczos.lanczos_extreme_eigs`` of every member's Hessian, batched.

  ``lanes`` members at a time step together in one compiled program
  (``lanczos.extreme_eigs_of_population``; their Hessian-vector products are
  one vmapped call), the last block padded so that every call compiles once.
  Each run starts from the vector ``certify.certificate`` draws with ``key``
  (default ``PRNGKey(0)``) and stops on its own residual test, ``tol``
  relative to ``max |lambda|``. A block runs until its slowest member
  converges and reorthogonalizes when any member needs it, so more lanes
  are not faster on a CPU (docs/design.md, "Lanczos"); fewer if the problems'
  ``memory_budget_bytes`` cannot hold their Lanczos bases.

  Args:
    problems: members of one shape (``shape_key``), at their points.
    tol, max_iters, key: as in ``lanczos.lanczos_extreme_eigs``.
    lanes: members per program call.

  Returns:
    One ``lanczos.ExtremeEigs`` per problem, in order.

  Raises:
    ValueError: on mixed shapes or data, or bad arguments.
  """
  first = check_population(problems, "extreme_eigs_many")
  if not (tol > 0 and max_iters >= 1 and lanes >= 1):
    raise ValueError(f"extreme_eigs_many: need tol > 0, max_iters >= 1 and "
                     f"lanes >= 1, got tol={tol}, max_iters={max_iters}, "
                     f"lanes={lanes}")
  flats = jnp.asarray(np.stack([np.asarray(p.flat) for p in problems]),
                      EXACT_DTYPE)
  v0 = jax.random.normal(jax.random.PRNGKey(0) if key is None else key,
                         (first.n_params,), EXACT_DTYPE)
  per_member = (max_iters + 8) * 8 * first.n_params  # basis and vectors
  found = []
  for _, real, block in blocks(len(problems), per_member, min(
      first.memory_budget_bytes, lanes * per_member)):
    operator = jax.tree_util.Partial(_members_hvp(first.objective),
                                     flats[block], first.params, first.x,
                                     first.y)
    found += lanczos.extreme_eigs_of_population(
        operator, jnp.tile(v0, (len(block), 1)), max_iters=max_iters,
        tol=tol)[:real]
  return found
