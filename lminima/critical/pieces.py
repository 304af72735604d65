"""The smooth pieces of a loss with kinks, and the first-order test of their sides.

Where arguments z_k, k in K, of piecewise-linear activations (relu,
leaky_relu) sit at their kink, each side ``s in {below, above}^K`` gives a
smooth piece L_s: the network with every activation replaced by its slope in
that pattern (``module.piece``, lminima.core.models), equal to L on the
closure of the region ``R_s = {s_k z_k(theta) >= 0, k in K}``
(docs/theory.md#kinks). This module builds the pieces (``piece_problem``)
and tests their sides at first order, one by one (``side``) or all at once
(``linear_structure``); ``lminima.critical.kinks`` decides with them.

* One side: theta_0 is a KKT point of ``min L_s on R_s`` iff ``g_s = sum_k
  mu_k s_k a_k`` with ``mu >= 0`` (``g_s`` the gradient of the piece, ``a_k``
  that of z_k under it): nonnegative least squares (``scipy.optimize.nnls``).
  Its residual r satisfies ``g_s . r = ||r||^2`` and ``s_k a_k . r <= 0``, so
  -r descends into R_s.
* Every side at once: where the kinked arguments are linear in theta with
  independent normals and switching a kink changes the gradient along its
  normal only (all checked numerically; relu units of the first hidden
  layer), one least-squares fit bounds the residual of every one of the
  2^|K| sides, and with every multiplier positive only the manifold
  ``z_K = 0``, where all pieces agree, can lead down (``manifold_curvature``).

Example:
  >>> import jax, numpy as np
  >>> from lminima.core.models import MLP
  >>> model = MLP(d_in=1, widths=(1,), d_out=1, activation="relu")
  >>> x = np.linspace(-1, 1, 5)[:, None]
  >>> problem = Problem.for_module(model, model.init_params(
  ...     jax.random.PRNGKey(0), np.float64), x, np.abs(x))
  >>> below, above = model.kink_slopes
  >>> on = piece_problem(problem, np.full((5, 1), above))  # the unit linear
  >>> bool(np.isclose(on.loss, problem.loss)), supports_kinks(problem)
  (False, True)
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize

from lminima.core import hessian
from lminima.core.problem import ModuleMethod, Problem
from lminima.core.tolerances import DEFAULT, Tolerances

_STRUCTURE_RTOL = 1e-8


def supports_kinks(problem: Problem) -> bool:
  """Whether the problem's module gives its smooth pieces (lminima.core.models,
  module docstring): ``kink_slopes``, ``piece`` and ``piece_kink_inputs``."""
  module = problem.module
  return (problem.kinks_fn is not None
          and getattr(module, "kink_slopes", None) is not None
          and all(callable(getattr(module, name, None))
                  for name in ("piece", "piece_kink_inputs")))


def on_kink(problem: Problem, tol: Tolerances | None = None) -> bool:
  """Whether some kinked argument is within ``kink_tol`` of its kink."""
  tol = DEFAULT if tol is None else tol
  smallest = problem.min_abs_kink_input()
  return smallest is not None and smallest <= tol.kink_tol


def piece_problem(problem: Problem, slopes: np.ndarray) -> Problem:
  """The problem of the smooth piece with activation slopes ``slopes``
  (shaped like ``problem.kink_inputs()``), at the problem's point."""
  xs = np.concatenate([np.asarray(problem.x).reshape(problem.m, -1), slopes],
                      axis=1)
  objective = problem.objective
  return Problem(ModuleMethod(problem.module, "piece"), problem.params, xs,
                 problem.y, normalization=problem.normalization,
                 loss=objective.loss, penalty=objective.penalty,
                 intercept=problem.intercept, module=problem.module,
                 memory_budget_bytes=problem.memory_budget_bytes)


@functools.partial(jax.jit, static_argnums=0)
def _kink_args_and_jacobian(module, flat, like, xs):
  """The piece's kinked arguments (m, k) and their Jacobian (m, k, n_params);
  forward mode, as n_params is far below m k."""
  unravel = hessian.flatten_params(like)[1]
  args = lambda v: module.apply(unravel(v), xs, method="piece_kink_inputs")
  return args(flat), jax.jacfwd(args)(flat)


@functools.partial(jax.jit, static_argnums=0)
def _kink_args_hessians(module, flat, like, xs, rows, cols):
  """Hessians (h, n_params, n_params) of the piece's arguments at
  ``(rows, cols)``."""
  unravel = hessian.flatten_params(like)[1]
  args = lambda v: module.apply(unravel(v), xs,
                                method="piece_kink_inputs")[rows, cols]
  return jax.jacfwd(jax.jacrev(args))(flat)


@dataclasses.dataclass(frozen=True)
class Side:
  """One side of the kinks: its piece, the sign of every argument in it,
  which arguments are at their kink, and its first-order residual."""
  piece: Problem
  signs: np.ndarray  # (m, k): +1 where the piece's slope is above, else -1
  kinked: np.ndarray  # (m, k) bool: the arguments at their kink
  residual: float
  memo: dict[str, Any] = dataclasses.field(default_factory=dict)

  def arguments(self, flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``s z(theta)`` (m, k) and its Jacobian (m, k, n_params); the last
    point's are kept, as SLSQP asks for both at each point."""
    flat = np.asarray(flat)
    last = self.memo.get("flat")
    if last is None or not np.array_equal(last, flat):
      values, jacobian = _kink_args_and_jacobian(
          self.piece.module, jnp.asarray(flat), self.piece.params,
          self.piece.x)
      self.memo.update(flat=flat.copy(), values=(
          self.signs * np.asarray(values),
          self.signs[..., None] * np.asarray(jacobian)))
    return self.memo["values"]

  def argument_hessians(self, flat: np.ndarray, which: np.ndarray
                        ) -> np.ndarray:
    """Hessians of ``s z`` at the arguments ``which`` (m, k) bool: zero for
    arguments linear in theta (the first hidden layer), the curvature of
    the kinks' manifold beyond it."""
    rows, cols = np.nonzero(which)
    return self.signs[which][:, None, None] * np.asarray(_kink_args_hessians(
        self.piece.module, jnp.asarray(flat), self.piece.params,
        self.piece.x, rows, cols))

  def constraint(self, active: np.ndarray) -> dict[str, Any]:
    """``s_k z_k(theta) >= 0`` over ``active`` (m, k) for SLSQP."""
    return {"type": "ineq", "fun": lambda f: self.arguments(f)[0][active],
            "jac": lambda f: self.arguments(f)[1][active]}


def sides_to_examine(mask: np.ndarray, max_sides: int
                     ) -> tuple[list[np.ndarray], bool]:
  """Bit vectors (True: above) of the sides to examine, and whether they are
  all of them; beyond ``max_sides``, all below, all above and random ones."""
  n = int(mask.sum())
  if n < 63 and 2 ** n <= max_sides:
    return [np.array(bits, bool)
            for bits in itertools.product((False, True), repeat=n)], True
  rng = np.random.default_rng(0)
  return ([np.zeros(n, bool), np.ones(n, bool)]
          + list(rng.random((max(max_sides - 2, 0), n)) < 0.5)), False


def side_at(problem: Problem, base: np.ndarray, kinked: np.ndarray,
            above: np.ndarray) -> Side:
  """The side ``above`` (bits, True: above) of the ``kinked`` arguments,
  the others at their slopes ``base``, with its first-order residual."""
  below_slope, above_slope = problem.module.kink_slopes
  slopes = base.copy()
  slopes[kinked] = np.where(above, above_slope, below_slope)
  piece = piece_problem(problem, slopes)
  result = Side(piece, np.where(slopes == above_slope, 1.0, -1.0), kinked,
                0.0)
  normals = result.arguments(piece.flat)[1][kinked]
  multipliers = (scipy.optimize.nnls(normals.T, piece.grad)[0] if len(normals)
                 else np.zeros(0))
  residual = float(np.linalg.norm(piece.grad - normals.T @ multipliers))
  return dataclasses.replace(result, residual=residual)


@dataclasses.dataclass(frozen=True)
class Structure:
  """Kinks whose arguments are linear in theta, with independent normals
  a_k and gradient jumps along them: ``g_s = g_below + sum_{k above}
  delta_k a_k``. With ``g_below = A^T c + r``, side s is stationary iff r = 0
  and ``c_k <= 0`` (kink k below) or ``c_k + delta_k >= 0`` (above): every
  one of the 2^|K| sides is decided by |K| intervals."""
  bound: float  # ||r|| + sum_k ||a_k|| * (largest violation of kink k)
  worst: np.ndarray  # bits of the side with the largest violations
  strict: bool  # every multiplier of every side positive
  tangent: np.ndarray  # (n_params, n_params - |K|): the kinks' manifold


def linear_structure(problem: Problem, base: np.ndarray, mask: np.ndarray,
                     residual_tol: float) -> Structure | None:
  """The structure of ``Structure``, checked (None where it is absent)."""
  n = int(mask.sum())
  below = side_at(problem, base, mask, np.zeros(n, bool))
  flat = np.asarray(problem.flat)
  normals = -below.arguments(flat)[1][mask]  # a_k, unsigned
  scale = float(np.linalg.norm(normals))
  direction = np.random.default_rng(1).standard_normal(flat.size)
  moved = flat + 1e-3 * max(1.0, float(np.linalg.norm(flat))) * (
      direction / np.linalg.norm(direction))
  if np.linalg.norm(-below.arguments(moved)[1][mask] - normals) > (
      _STRUCTURE_RTOL * scale):
    return None  # arguments not linear in theta
  singular = np.linalg.svd(normals, compute_uv=False)
  if singular[-1] <= _STRUCTURE_RTOL * singular[0]:
    return None  # normals not independent
  g_below = below.piece.grad
  jumps = np.empty(n)
  for k in range(n):
    flipped = side_at(problem, base, mask, np.arange(n) == k)
    signed = np.where(np.arange(n) == k, 1.0, -1.0)[:, None] * normals
    if np.linalg.norm(flipped.arguments(flat)[1][mask] - signed) > (
        _STRUCTURE_RTOL * scale):
      return None  # the normals depend on the side
    jump = flipped.piece.grad - g_below
    jumps[k] = jump @ normals[k] / (normals[k] @ normals[k])
    if np.linalg.norm(jump - jumps[k] * normals[k]) > _STRUCTURE_RTOL * (
        np.linalg.norm(jump) + np.linalg.norm(g_below)):
      return None  # the jump is not along the kink's normal
  coeffs = np.linalg.lstsq(normals.T, g_below, rcond=None)[0]
  rest = float(np.linalg.norm(g_below - normals.T @ coeffs))
  above_violation = np.maximum(-(coeffs + jumps), 0.0)
  below_violation = np.maximum(coeffs, 0.0)
  lengths = np.linalg.norm(normals, axis=1)
  bound = rest + float(lengths @ np.maximum(above_violation, below_violation))
  margin = np.minimum(-coeffs, coeffs + jumps) * lengths
  basis = np.linalg.svd(normals)[2][n:].T
  return Structure(bound=bound, worst=above_violation > below_violation,
                    strict=bool(np.all(margin > residual_tol)),
                    tangent=basis)


def manifold_curvature(side: Side, tangent: np.ndarray, tol: Tolerances
                        ) -> tuple[float, float, np.ndarray]:
  """The smallest eigenvalue of the piece's Hessian on the kinks' manifold,
  its tolerance, and its direction (in theta)."""
  hess = side.piece.dense_hessian()
  values, vectors = np.linalg.eigh(tangent.T @ hess @ tangent)
  return (float(values[0]), tol.eig_tolerance(values[0], values[-1]),
          tangent @ vectors[:, 0])
