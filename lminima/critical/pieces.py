"""The smooth pieces of a loss with kinks, and the first-order test of their sides.

Where arguments z_k, k in K, of piecewise-linear activations (relu,
leaky_relu) sit at their kink, each side ``s in {below, above}^K`` gives a
smooth piece L_s: the network with every activation replaced by its slope in
that pattern (``module.piece``, lminima.core.models), equal to L on the
closure of the region ``R_s = {s_k z_k(theta) >= 0, k in K}``
(docs/theory.md#kinks). This module builds the pieces (``piece_problem``)
and tests their sides at first order, one by one (``side``) or all at once
(``sample_structure``); ``lminima.critical.kinks`` decides with them.

* One side: theta_0 is a KKT point of ``min L_s on R_s`` iff ``g_s = sum_k
  mu_k s_k a_k`` with ``mu >= 0`` (``g_s`` the gradient of the piece, ``a_k``
  that of z_k under it): nonnegative least squares (``scipy.optimize.nnls``).
  Its residual r satisfies ``g_s . r = ||r||^2`` and ``s_k a_k . r <= 0``, so
  -r descends into R_s.
* Every side at once: a sample's loss and kinked arguments depend on its
  own slopes only. Where the normals of different samples' kinks span
  independent subspaces (checked numerically; relu units of the first
  hidden layer, and of deeper ones, whose kinks are curved), one
  least-squares fit and each sample's own 2^|K_i| sides bound the residual
  of every one of the 2^|K| sides (``Structure``).
* Second order, where every side is stationary: a side can lead down only
  on its critical subspace, where the kinks with a positive multiplier stay
  at 0 (every kink where all multipliers are positive: the manifold
  ``z_K = 0``, where all pieces agree). The Hessian of the Lagrangian there
  (``critical_curvature``), for every way the kinks with a zero multiplier
  can combine (``critical_sides``).

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
import scipy.linalg
import scipy.optimize

from lminima.core import hessian
from lminima.core.problem import ModuleMethod, Problem
from lminima.core.tolerances import DEFAULT, Tolerances

_STRUCTURE_RTOL = 1e-8
_MAX_SAMPLE_KINKS = 8


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


def _args_fn(module, like, xs):
  unravel = hessian.flatten_params(like)[1]
  return lambda v: module.apply(unravel(v), xs, method="piece_kink_inputs")


@functools.partial(jax.jit, static_argnums=0)
def _kink_args(module, flat, like, xs):
  """The piece's kinked arguments (m, k)."""
  return _args_fn(module, like, xs)(flat)


@functools.partial(jax.jit, static_argnums=0)
def _kink_args_jacobian(module, flat, like, xs, rows, cols):
  """The Jacobian (h, n_params) of the arguments ``(rows, cols)`` of the
  samples ``xs``; forward mode, as n_params is far below their number."""
  return jax.jacfwd(lambda v: _args_fn(module, like, xs)(v)[rows, cols])(flat)


@functools.partial(jax.jit, static_argnums=0)
def _weighted_args_hessian(module, flat, like, xs, weights):
  """The Hessian (n_params, n_params) of ``sum weights * z`` over the
  samples ``xs``: one Hessian of a scalar, not one per argument."""
  return jax.hessian(
      lambda v: jnp.vdot(weights, _args_fn(module, like, xs)(v)))(flat)


def _samples_of(xs: np.ndarray, which: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The samples holding the arguments ``which`` (m, k) bool, and the
  arguments' rows and columns there; each padded to a power of 2 (at least
  8) so that few shapes compile: the results' first ``which.sum()`` rows are
  the arguments'. A sample's arguments depend on its own row only."""
  rows, cols = np.nonzero(which)
  samples, local = np.unique(rows, return_inverse=True)
  return (np.asarray(xs)[_padded(samples)], _padded(local), _padded(cols))


def _padded(index: np.ndarray) -> np.ndarray:
  size = max(8, 1 << int(len(index) - 1).bit_length())
  return np.concatenate([index, np.full(size - len(index), index[0])])


@dataclasses.dataclass(frozen=True)
class Side:
  """One side of the kinks: its piece, the sign of every argument in it,
  which arguments are at their kink, and the norm of its first-order
  residual r (``-r`` descends into the side)."""
  piece: Problem
  signs: np.ndarray  # (m, k): +1 where the piece's slope is above, else -1
  kinked: np.ndarray  # (m, k) bool: the arguments at their kink
  residual: float
  memo: dict[Any, Any] = dataclasses.field(default_factory=dict)

  def _memo(self, name: str, flat: np.ndarray, compute) -> Any:
    """The last points' values of ``name``: a descent asks for the
    arguments and their normals at each point more than once."""
    key = (name, np.asarray(flat).tobytes())
    if key not in self.memo:
      if len(self.memo) > 16:  # points the descent has left behind
        self.memo.clear()
      self.memo[key] = compute()
    return self.memo[key]

  def values(self, flat: np.ndarray) -> np.ndarray:
    """``s z(theta)`` (m, k)."""
    return self._memo("values", flat, lambda: self.signs * np.asarray(
        _kink_args(self.piece.module, jnp.asarray(flat), self.piece.params,
                   self.piece.x)))

  def normals(self, flat: np.ndarray, which: np.ndarray) -> np.ndarray:
    """The gradients (h, n_params) of ``s z`` at the arguments ``which``
    (m, k) bool, in the order of ``np.nonzero(which)``."""
    if not which.any():
      return np.zeros((0, np.size(flat)))

    def compute():
      xs, rows, cols = _samples_of(self.piece.x, which)
      return self.signs[which][:, None] * np.asarray(_kink_args_jacobian(
          self.piece.module, jnp.asarray(flat), self.piece.params, xs, rows,
          cols))[:int(which.sum())]
    return self._memo(("normals", which.tobytes()), flat, compute)

  def constraint_hessian(self, flat: np.ndarray, which: np.ndarray,
                         multipliers: np.ndarray) -> np.ndarray:
    """``sum_k mu_k Hess(s_k z_k)`` over the arguments ``which`` (m, k)
    bool, with multipliers ``mu`` (one per argument in ``which``, in the
    order of ``np.nonzero(which)``): zero where they are linear in theta
    (the first hidden layer), the curvature of the kinks beyond it."""
    xs, rows, cols = _samples_of(self.piece.x, which)
    weights = np.zeros((len(xs), self.signs.shape[1]))
    count = int(which.sum())
    # The padding repeats the first argument: its weight is set, not added.
    weights[rows[:count], cols[:count]] = multipliers * self.signs[which]
    return np.asarray(_weighted_args_hessian(
        self.piece.module, jnp.asarray(flat), self.piece.params, xs,
        jnp.asarray(weights)))

  def lagrangian_hessian(self, flat: np.ndarray, which: np.ndarray,
                         multipliers: np.ndarray) -> np.ndarray:
    """``Hess L_s - sum_k mu_k Hess(s_k z_k)`` over the arguments ``which``
    (m, k) bool, with multipliers ``mu`` (one per argument in ``which``)."""
    hess = self.piece.dense_hessian_at(flat)
    if not which.any():
      return hess
    return hess - self.constraint_hessian(flat, which, multipliers)


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


def _side_piece(problem: Problem, base: np.ndarray, kinked: np.ndarray,
                above: np.ndarray) -> Side:
  """The side ``above`` (bits, True: above) of the ``kinked`` arguments,
  the others at their slopes ``base``; its residual not computed (0)."""
  below_slope, above_slope = problem.module.kink_slopes
  slopes = base.copy()
  slopes[kinked] = np.where(above, above_slope, below_slope)
  return Side(piece_problem(problem, slopes),
              np.where(slopes == above_slope, 1.0, -1.0), kinked, 0.0)


def cone_fit(normals: np.ndarray, vector: np.ndarray
             ) -> tuple[np.ndarray, float]:
  """The multipliers ``mu >= 0`` of ``vector`` on the rows of ``normals``
  (nonnegative least squares) and the residual ``||vector - normals^T
  mu||``: the first-order test of a side, ``vector`` its gradient. With no
  normals, none and ``||vector||``."""
  if not len(normals):
    return np.zeros(0), float(np.linalg.norm(vector))
  multipliers = scipy.optimize.nnls(normals.T, vector)[0]
  return multipliers, float(np.linalg.norm(vector - normals.T @ multipliers))


def side_at(problem: Problem, base: np.ndarray, kinked: np.ndarray,
            above: np.ndarray) -> Side:
  """The side ``above`` (bits, True: above) of the ``kinked`` arguments,
  the others at their slopes ``base``, with its first-order residual."""
  result = _side_piece(problem, base, kinked, above)
  piece = result.piece
  residual = cone_fit(result.normals(piece.flat, kinked), piece.grad)[1]
  return dataclasses.replace(result, residual=residual)


_Choice = tuple[np.ndarray, np.ndarray]  # a sample's side's bits, and free


@dataclasses.dataclass(frozen=True)
class Structure:
  """Kinks grouped by sample. Sample i's loss and kinked arguments depend on
  its own slopes s_i only, so ``g_s = g_below + sum_i J_i(s_i)`` and the
  normals of its kinks depend on s_i alone. Where the spans N_i of every
  sample's normals (over its sides) are independent, write ``g_below = r +
  sum_i c_i`` with c_i in N_i: the distance of g_s to the cone of side s's
  signed normals is at most ||r|| plus each sample's distance of ``c_i +
  J_i(s_i)`` to the cone of its own (the triangle inequality; the cones
  add), so ``sum_i 2^|K_i|`` small problems bound the 2^|K| sides. A jump's
  part off N_i, of the order of the arguments' distance to their kink, is
  in its sample's distance; where N_i holds the jumps and r = 0 the bound is
  tight."""
  bound: float  # ||r|| + sum_i max over s_i of sample i's residual
  worst: np.ndarray  # bits of the side attaining every sample's largest
  degenerate: bool  # some sample's normals on one of its sides dependent
  # Per sample with a zero multiplier on some side (beyond the tolerance):
  # its bits' positions, and its sides' bits with the kinks whose multiplier
  # is zero there (those with none first, one of them kept).
  zero_multipliers: tuple[tuple[np.ndarray, tuple[_Choice, ...]], ...]
  worst_side: Side  # the side ``worst``, with its own residual


def _span(vectors: np.ndarray) -> np.ndarray:
  """Orthonormal rows spanning ``vectors``' rows."""
  _, singular, rows = np.linalg.svd(vectors, full_matrices=False)
  return rows[:int(np.sum(singular > _STRUCTURE_RTOL * singular[0]))]


def sample_structure(problem: Problem, base: np.ndarray, mask: np.ndarray,
                     residual_tol: float) -> Structure | None:
  """The structure of ``Structure``, checked (None where it is absent, or
  a sample has more than ``_MAX_SAMPLE_KINKS`` kinks)."""
  n = int(mask.sum())
  samples = np.nonzero(mask)[0]  # bits run over samples, then arguments
  groups = [np.flatnonzero(samples == i) for i in np.unique(samples)]
  if max(len(group) for group in groups) > _MAX_SAMPLE_KINKS:
    return None
  flat = np.asarray(problem.flat)
  # Each sample's sides need their gradient and the sample's own normals
  # only, not every kinked argument's normals and the residual.
  below = _side_piece(problem, base, mask, np.zeros(n, bool))
  g_below = below.piece.grad
  scale = float(np.linalg.norm(g_below))
  sides, spans = [], []  # per sample: bits -> (signed normals, jump)
  kinked = np.argwhere(mask)
  for group in groups:
    own = {}
    only = np.zeros_like(mask)
    only[tuple(kinked[group].T)] = True  # the sample's own kinked arguments
    for bits in itertools.product((False, True), repeat=len(group)):
      above = np.zeros(n, bool)
      above[group] = bits
      side = _side_piece(problem, base, mask, above) if any(bits) else below
      own[bits] = (side.normals(flat, only), side.piece.grad - g_below)
    span = _span(np.vstack([normals for normals, _ in own.values()]))
    sides.append(own)
    spans.append(span)
  stacked = np.vstack(spans)
  singular = np.linalg.svd(stacked, compute_uv=False)
  if singular[-1] <= _STRUCTURE_RTOL * singular[0]:
    return None  # the samples' normals not independent
  coeffs = np.linalg.lstsq(stacked.T, g_below, rcond=None)[0]
  bound = float(np.linalg.norm(g_below - stacked.T @ coeffs))
  worst, degenerate, zero_multipliers = np.zeros(n, bool), False, []
  parts = np.split(coeffs, np.cumsum([len(span) for span in spans])[:-1])
  for group, own, span, part in zip(groups, sides, spans, parts):
    largest, positive, zero = -1.0, [], []
    for bits, (normals, jump) in own.items():
      multipliers, residual = cone_fit(normals, span.T @ part + jump)
      if residual > largest:
        largest, worst[group] = residual, bits
      degenerate |= len(_span(normals)) < len(group)
      free = multipliers * np.linalg.norm(normals, axis=1) <= residual_tol
      (zero if free.any() else positive).append((np.array(bits), free))
    if zero:
      zero_multipliers.append((group, tuple(positive[:1] + zero)))
    bound += largest
  # Sample separability, checked at the side combining every sample's worst.
  mixed = side_at(problem, base, mask, worst)
  jumps = [own[tuple(worst[group])][1] for group, own in zip(groups, sides)]
  # Relative to the jumps too: at a stationary side g_below is ~0.
  if np.linalg.norm(mixed.piece.grad - g_below - sum(jumps)) > (
      _STRUCTURE_RTOL * (scale + sum(map(np.linalg.norm, jumps)))):
    return None
  return Structure(bound=bound, worst=worst, degenerate=degenerate,
                   zero_multipliers=tuple(zero_multipliers), worst_side=mixed)


def critical_sides(structure: Structure, limit: int
                   ) -> list[tuple[np.ndarray, np.ndarray]] | None:
  """The sides (bits) whose critical subspaces cover every side's, each
  with the kinks free there (bits: a zero multiplier); None beyond
  ``limit``.

  On a stationary side s the kinks P with a positive multiplier stay at 0
  to second order along any way down, and the others, Z, may move into the
  side. On ``M_P = {z_P = 0}`` the pieces of every side that agrees with s
  on Z coincide, so the Lagrangian's Hessian on its tangent depends on s
  through Z and s_Z alone: one side per combination of the samples' own
  zero-multiplier sides (or a side of theirs with none), the other samples
  on their worst sides. With no zero multiplier, one side: the manifold
  ``z_K = 0``."""
  options = [choices for _, choices in structure.zero_multipliers]
  if np.prod([len(choices) for choices in options]) > limit:
    return None
  combined = []
  for combination in itertools.product(*options):
    bits, free = structure.worst.copy(), np.zeros_like(structure.worst)
    for (group, _), (own_bits, own_free) in zip(structure.zero_multipliers,
                                                combination):
      bits[group], free[group] = own_bits, own_free
    combined.append((bits, free))
  return combined


def critical_curvature(side: Side, free: np.ndarray, tol: Tolerances
                       ) -> tuple[float, float, np.ndarray]:
  """The smallest eigenvalue of the side's Lagrangian Hessian on the
  subspace where its kinked arguments other than ``free`` ((m, k) bool)
  stay at 0, its tolerance, and its direction (in theta); with the
  multipliers of the piece's gradient on those arguments' normals. With no
  ``free`` argument: the Hessian of L on the kinks' manifold ``z_K = 0``
  (the same for every side)."""
  flat = np.asarray(side.piece.flat)
  held = side.kinked & ~free
  normals = side.normals(flat, held)
  multipliers = (np.linalg.lstsq(normals.T, side.piece.grad, rcond=None)[0]
                 if len(normals) else np.zeros(0))
  hess = side.lagrangian_hessian(flat, held, multipliers)
  tangent = (scipy.linalg.null_space(normals) if len(normals)
             else np.eye(flat.size))
  values, vectors = np.linalg.eigh(tangent.T @ hess @ tangent)
  return (float(values[0]), tol.eig_tolerance(values[0], values[-1]),
          tangent @ vectors[:, 0])
