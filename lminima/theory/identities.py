"""The identities at a critical point (docs/theory.md#identities-at-a-critical-point).

Everything here reads a ``Problem`` (float64, one point, one data set) and its
derivative matrix D(theta) (``lminima.core.derivative``), with
L = c ||Yhat - Y||_F^2 and r = vec(Yhat - Y):

(A) ``critical_point_identity``, for any model with a linear output layer:
    grad L = 2c D^T r, so at a critical point r is orthogonal to col(D), and
    vec Yhat lies in the column space of the output layer's block F kron I;
    hence L = c ||P_N[D] vec Y||^2 = c ||(I - F F^+) Y||_F^2 with F the design
    of the output layer (``Problem.features``).
(B) the Euler identity, stated for the MLP family only, is in
    ``lminima.theory.euler``; ``lminima.theory.quantities.theory_record``
    collects a member's quantities for the sweep's rows.
(C) ``subspace_bound``: if col(F kron I) is in col(D) at a critical point,
    L <= c ||(I - F F^+) Y||^2; the inclusion is measured as the relative
    residual ||P_N[D] M||_F / ||M||_F, M = F kron I_{d_y}.
(D) ``full_rank_check``: rank D = m d_y at a critical point forces L = 0.

Each identity is exact only at a differentiable critical point: certify first.
Every rank and projection uses one recorded relative tolerance, by default
``projections.default_rank_tol((m d_y, n_params))`` (docs/theory.md,
"Numerics and rank tolerances"); the full-D form is ill-conditioned, the
last-layer form is the stable one.

Example:
  >>> import jax, numpy as np
  >>> from lminima import Problem
  >>> from lminima.core.models import MLP
  >>> model = MLP(d_in=2, widths=(), d_out=1, bias=False)
  >>> x = np.random.default_rng(0).standard_normal((6, 2))
  >>> y = np.random.default_rng(1).standard_normal((6, 1))
  >>> w = np.linalg.lstsq(x, y, rcond=None)[0]  # the global minimum
  >>> problem = Problem.for_module(
  ...     model, {"params": {"layer_1": {"kernel": w}}}, x, y)
  >>> out = critical_point_identity(problem)
  >>> bool(out.gap_full < 1e-14 and out.gap_last < 1e-14), out.rank_D
  (True, 2)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from lminima.core import checks
from lminima.core import derivative
from lminima.core import tolerances
from lminima.core.problem import Problem
from lminima.linalg import projections
from lminima.theory import classical

BOUND_RTOL = tolerances.DEFAULT.bound_rtol
"""A bound ``L <= B`` counts as holding when ``L <= B (1 + BOUND_RTOL)``."""


class Record:
  """Mixin: ``to_dict`` for frozen dataclasses of JSON-ready fields."""

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def resolve_rank_tol(problem: Problem, rank_tol: float | None) -> float:
  """One relative tolerance for every rank and projection of a call.

  Every function here starts from it, so it also refuses problems whose
  objective is not the plain squared loss: the identities are about that one.
  """
  objective = problem.objective
  if objective.loss != "squared" or objective.penalty is not None:
    raise ValueError("the identities hold for the plain squared loss; this "
                     f"problem's loss is {objective.loss!r}"
                     + (" with a penalty" if objective.penalty else ""))
  if rank_tol is None:
    return projections.default_rank_tol((problem.m * problem.d_y,
                                    problem.n_params))
  if not rank_tol > 0:
    raise ValueError(f"rank_tol must be positive, got {rank_tol}")
  return float(rank_tol)


def _svd_of_d(problem: Problem) -> tuple[np.ndarray, np.ndarray]:
  """U and singular values of D(theta): one SVD per point, any tolerance."""
  return problem.cached("svd_D", lambda: projections.left_singular(
      problem.derivative().matrix))


def _basis_of_d(problem: Problem, tol: float) -> np.ndarray:
  """Orthonormal basis of col(D) at the relative tolerance ``tol``."""
  u, s = _svd_of_d(problem)
  return u[:, projections.kept(s, tol)]


def rank_of_d(problem: Problem, rank_tol: float) -> int | None:
  """Numerical rank of D(theta) at ``rank_tol``; None when D does not fit.

  Reuses the SVD of the other theory functions, so a second tolerance is free.
  """
  if derivative.skip_reason(problem) is not None:
    return None
  return int(np.count_nonzero(
      projections.kept(_svd_of_d(problem)[1], rank_tol)))


def _residual_in_d(problem: Problem, target: np.ndarray, tol: float
                   ) -> np.ndarray:
  """(I - P[D]) target for a vector or a matrix of columns."""
  basis = _basis_of_d(problem, tol)
  return target - basis @ (basis.T @ target)


def below(value: float, bound: float, rtol: float = BOUND_RTOL,
          floor: float = 0.0) -> bool:
  """``value <= bound + rtol |bound| + floor``: the (C) comparison."""
  return bool(value <= bound + rtol * abs(bound) + floor)


# ---------------------------------------------------------------------------
# Projection residuals and ranks.


@dataclasses.dataclass(frozen=True)
class Residual(Record):
  """c ||P_N[M] vec Y||^2 and rank M for one matrix M.

  Attributes:
    value: c ||(I - M M^+) vec Y||^2.
    rank: numerical rank of M at ``rank_tol``.
    n_cols: number of columns of M.
    rank_tol: relative singular-value cut-off used.
  """
  value: float
  rank: int
  n_cols: int
  rank_tol: float


def projection_residual(matrix: np.ndarray, target: np.ndarray, c: float,
              rank_tol: float) -> Residual:
  proj = projections.project(matrix, target, scale=c, rank_tol=rank_tol)
  return Residual(value=proj.value, rank=proj.rank, n_cols=matrix.shape[1],
                  rank_tol=proj.rank_tol)


def last_layer_residual(problem: Problem, rank_tol: float | None = None
                        ) -> Residual:
  """c ||(I - F F^+) Y||_F^2 and rank F, F = ``problem.features()``."""
  tol = resolve_rank_tol(problem, rank_tol)
  return projection_residual(problem.features(), np.asarray(problem.y),
                             problem.c, tol)


def residuals(problem: Problem, *, rank_tol: float | None = None
              ) -> dict[str, Residual]:
  """Projection residuals c ||P_N[M] vec Y||^2 and ranks of D, its blocks, F.

  Keys: ``"D"``, every parameter block (``Problem.column_slices``) and
  ``"last_layer"`` (F = ``problem.features()``: rank F, value
  c ||(I - F F^+) Y||_F^2 = c ||P_N[F kron I] vec Y||^2).

  Example:
    >>> import jax, numpy as np
    >>> from lminima.core.models import MLP
    >>> model = MLP(d_in=2, widths=(), d_out=1)
    >>> x = np.random.default_rng(0).standard_normal((6, 2)); y = x[:, :1]
    >>> out = residuals(Problem.for_module(
    ...     model, model.init_params(jax.random.PRNGKey(0)), x, y))
    >>> out["D"].rank, round(out["D"].value, 12), list(out)[-1]
    (3, 0.0, 'last_layer')
  """
  tol = resolve_rank_tol(problem, rank_tol)
  d = problem.derivative()
  vec_y = np.asarray(problem.y).reshape(-1)
  out = {"D": projection_residual(d.matrix, vec_y, problem.c, tol)}
  for name in d.column_slices:
    out[name] = projection_residual(d.block(name), vec_y, problem.c, tol)
  out["last_layer"] = last_layer_residual(problem, tol)
  return out


# ---------------------------------------------------------------------------
# (A) Critical-point identity.


@dataclasses.dataclass(frozen=True)
class CriticalPointIdentity(Record):
  """Both sides of identity (A); exact only at a differentiable critical point.

  Attributes:
    loss: L(theta) = c ||Yhat - Y||_F^2.
    grad_norm: ||grad L(theta)||_2 (how critical the point is).
    full_value: c ||P_N[D] vec Y||^2, or None when D was skipped.
    last_value: c ||(I - F F^+) Y||_F^2, F the output layer's design.
    gap_full: |L - full_value|, or None.
    gap_last: |L - last_value|.
    rank_D: numerical rank of D, or None.
    rank_last_hidden: numerical rank of F.
    rank_tol: relative cut-off used for both.
    full_D_skipped: None, or why the full-D fields are None.
  """
  loss: float
  grad_norm: float
  full_value: float | None
  last_value: float
  gap_full: float | None
  gap_last: float
  rank_D: int | None
  rank_last_hidden: int
  rank_tol: float
  full_D_skipped: str | None


def critical_point_identity(problem: Problem, *,
                            rank_tol: float | None = None
                            ) -> CriticalPointIdentity:
  """Identity (A): L = c ||P_N[D] vec Y||^2 = c ||(I - F F^+) Y||_F^2.

  When D does not fit the problem's memory budget the full-D fields are None
  and ``full_D_skipped`` says why; the last-layer form, cheap and numerically
  stable, is always computed.
  """
  tol = resolve_rank_tol(problem, rank_tol)
  loss = problem.loss
  last = last_layer_residual(problem, tol)
  skipped = derivative.skip_reason(problem)
  full_value = rank_d = None
  if skipped is None:
    vec_y = np.asarray(problem.y).reshape(-1)
    full_value = problem.c * float(np.sum(np.square(
        _residual_in_d(problem, vec_y, tol))))
    rank_d = rank_of_d(problem, tol)
  return CriticalPointIdentity(
      loss=loss, grad_norm=problem.grad_norm, full_value=full_value,
      last_value=last.value,
      gap_full=None if full_value is None else abs(loss - full_value),
      gap_last=abs(loss - last.value), rank_D=rank_d,
      rank_last_hidden=last.rank, rank_tol=tol, full_D_skipped=skipped)


# ---------------------------------------------------------------------------
# (C) Subspace bound.


@dataclasses.dataclass(frozen=True)
class SubspaceBound(Record):
  """Identity (C) for one feature matrix F (M = F kron I_{d_y}).

  Attributes:
    loss: L(theta).
    grad_norm: ||grad L(theta)||_2 (the bound needs a critical point).
    bound: c ||P_N[M] vec Y||^2 = c ||(I - F F^+) Y||_F^2.
    inclusion_residual: ||P_N[D] M||_F / ||M||_F (0 when col(M) is in col(D)).
    holds: L <= bound + tolerance * (1 + bound).
    tolerance: the relative tolerance of ``holds`` (``BOUND_RTOL``).
    rank_features: numerical rank of F.
    rank_tol: relative cut-off used.
  """
  loss: float
  grad_norm: float
  bound: float
  inclusion_residual: float
  holds: bool
  tolerance: float
  rank_features: int
  rank_tol: float


def design_matrix(problem: Problem, features: Any, intercept: bool | None
            ) -> np.ndarray:
  """F (default: the inputs, flattened per sample) with a ones column."""
  features = checks.float64_matrix(
      np.asarray(problem.x).reshape(problem.m, -1) if features is None
      else features, "features")
  if features.shape[0] != problem.m:
    raise ValueError(f"features must have shape ({problem.m}, p), got "
                     f"{features.shape}")
  if problem.intercept if intercept is None else intercept:
    features = np.hstack([features, np.ones((problem.m, 1))])
  return features


def inclusion_residual(problem: Problem, design: np.ndarray,
                       rank_tol: float | None = None) -> float:
  """||P_N[D] M||_F / ||M||_F with M = design kron I_{d_y} (0 for M = 0)."""
  tol = resolve_rank_tol(problem, rank_tol)
  m_matrix = np.kron(design, np.eye(problem.d_y))
  norm = np.linalg.norm(m_matrix)
  if norm == 0:
    return 0.0
  return float(np.linalg.norm(_residual_in_d(problem, m_matrix, tol)) / norm)


def subspace_bound(problem: Problem, features: Any = None, *,
                   intercept: bool | None = None,
                   rank_tol: float | None = None) -> SubspaceBound:
  """Identity (C): if col(F kron I) is in col(D) at a critical point, L <= bound.

  Args:
    problem: the objective at the point.
    features: F (m x p); default the inputs (flattened per sample), giving the
      linear model. Pass random features Phi for a basis-function model.
    intercept: append a ones column to F; default ``problem.intercept``.
    rank_tol: relative cut-off; default ``resolve_rank_tol``.

  Example:
    >>> import jax, numpy as np
    >>> from lminima.core.models import MLP
    >>> model = MLP(d_in=2, widths=(), d_out=1)
    >>> x = np.random.default_rng(0).standard_normal((6, 2))
    >>> problem = Problem.for_module(model, model.init_params(
    ...     jax.random.PRNGKey(0)), x, np.zeros((6, 1)))
    >>> subspace_bound(problem).inclusion_residual < 1e-14
    True
  """
  tol = resolve_rank_tol(problem, rank_tol)
  design = design_matrix(problem, features, intercept)
  optimum = classical.basis_function_optimum(
      design, np.asarray(problem.y), normalization=problem.normalization,
      intercept=False, name="subspace_bound", rank_tol=tol)
  loss = problem.loss
  return SubspaceBound(
      loss=loss, grad_norm=problem.grad_norm, bound=float(optimum.value),
      inclusion_residual=inclusion_residual(problem, design, tol),
      holds=below(loss, float(optimum.value)), tolerance=BOUND_RTOL,
      rank_features=int(optimum.rank), rank_tol=tol)


# ---------------------------------------------------------------------------
# (D) Full rank.


@dataclasses.dataclass(frozen=True)
class FullRankCheck(Record):
  """Identity (D): rank D = m d_y at a critical point forces L = 0.

  Attributes:
    rank_D: numerical rank of D.
    n_rows: m d_y.
    n_params: number of columns of D (necessary: n_params >= m d_y).
    full_rank: rank_D == n_rows.
    loss: L(theta).
    grad_norm: ||grad L(theta)||_2.
    residual: c ||P_N[D] vec Y||^2 (0 when full rank).
    rank_tol: relative cut-off used.
  """
  rank_D: int
  n_rows: int
  n_params: int
  full_rank: bool
  loss: float
  grad_norm: float
  residual: float
  rank_tol: float


def full_rank_check(problem: Problem, *, rank_tol: float | None = None
                    ) -> FullRankCheck:
  """Identity (D): rank D vs m d_y, and the loss there.

  Example:
    >>> import jax, numpy as np
    >>> from lminima.core.models import MLP
    >>> model = MLP(d_in=3, widths=(), d_out=1, bias=False)
    >>> problem = Problem.for_module(  # 3 samples, 3 parameters: D = x
    ...     model, model.init_params(jax.random.PRNGKey(0)), np.eye(3),
    ...     np.ones((3, 1)))
    >>> out = full_rank_check(problem)
    >>> out.full_rank, out.rank_D, round(out.residual, 12)
    (True, 3, 0.0)
  """
  tol = resolve_rank_tol(problem, rank_tol)
  identity = critical_point_identity(problem, rank_tol=tol)
  if identity.full_D_skipped is not None:
    raise ValueError(identity.full_D_skipped)
  n_rows = problem.m * problem.d_y
  return FullRankCheck(
      rank_D=identity.rank_D, n_rows=n_rows, n_params=problem.n_params,
      full_rank=identity.rank_D == n_rows, loss=identity.loss,
      grad_norm=identity.grad_norm, residual=identity.full_value,
      rank_tol=tol)
