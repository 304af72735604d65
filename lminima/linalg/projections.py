"""Stable float64 projections and ranks shared by theory and classical models.

For a matrix M (n x p) and targets Y (n x k, or a vector of length n),

    P[M] Y = M M^+ Y,   residual(M, Y) = c * ||(I - M M^+) Y||_F^2.

Both are computed from a thin SVD M = U S V^T, keeping the singular values
``s > rank_tol * s_max``; the projection is ``U_r U_r^T Y``. The relative tolerance
is recorded with every result because the answer depends on it when M is
ill-conditioned (docs/theory.md#numerics-and-rank-tolerances). The default,
``max(n, p) * eps(float64)``, is numpy's ``matrix_rank`` default.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from lminima.core import checks


def default_rank_tol(shape: tuple[int, ...]) -> float:
  """numpy.linalg.matrix_rank's relative tolerance: max(n, p) * eps."""
  return float(max(shape) * np.finfo(np.float64).eps)


@dataclasses.dataclass(frozen=True)
class Projection:
  """Result of projecting Y onto col(M).

  Attributes:
    value: c * ||(I - P[M]) Y||_F^2.
    fitted: P[M] Y, same shape as Y.
    rank: numerical rank of M at ``rank_tol``.
    rank_tol: relative singular-value cut-off used.
  """
  value: float
  fitted: np.ndarray
  rank: int
  rank_tol: float


def left_singular(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Thin SVD's U and singular values s (descending) of M; empty for M = []."""
  m = checks.float64_matrix(m, "M")
  if m.size == 0:
    return np.zeros((m.shape[0], 0)), np.zeros((0,))
  u, s, _ = np.linalg.svd(m, full_matrices=False)
  return u, s


def kept(s: np.ndarray, rank_tol: float) -> np.ndarray:
  """Mask of the singular values above ``rank_tol`` times the largest."""
  if not s.size or not s[0] > 0:
    return np.zeros_like(s, bool)
  return s > rank_tol * s[0]


def column_basis(m: np.ndarray, rank_tol: float | None = None
                 ) -> tuple[np.ndarray, float]:
  """Orthonormal basis U_r of col(M) and the relative tolerance used."""
  m = checks.float64_matrix(m, "M")
  if rank_tol is None:
    rank_tol = default_rank_tol(m.shape)
  u, s = left_singular(m)
  return u[:, kept(s, rank_tol)], float(rank_tol)


def project(m: np.ndarray, y: np.ndarray, scale: float = 1.0,
            rank_tol: float | None = None) -> Projection:
  """Projects ``y`` onto col(``m``); see the module docstring.

  Example:
    >>> import numpy as np
    >>> p = project(np.eye(3)[:, :2], np.ones(3), scale=0.5)
    >>> round(p.value, 12), p.rank
    (0.5, 2)
  """
  m = checks.float64_matrix(m, "M")
  y = np.asarray(y, dtype=np.float64)
  if y.shape[0] != m.shape[0]:
    raise ValueError(f"M has {m.shape[0]} rows but Y has {y.shape[0]}")
  if not np.all(np.isfinite(y)):
    raise ValueError("Y contains NaN or inf")
  basis, tol = column_basis(m, rank_tol)
  y2 = y.reshape(y.shape[0], -1)
  fitted = basis @ (basis.T @ y2)
  value = scale * float(np.sum(np.square(y2 - fitted)))
  return Projection(value=value, fitted=fitted.reshape(y.shape),
                    rank=basis.shape[1], rank_tol=tol)
