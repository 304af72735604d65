"""The theory quantities of one refined member: the numbers of a sweep row.

``theory_record(problem)`` computes, at a (refined) point, the rank of D and
of the output layer's design, both forms of identity (A), the Euler residual
(B) for homogeneous MLPs, the linear and random-feature optima and the
inclusion residual of the linear design (C) (docs/theory.md), from one SVD of
D and with one recorded rank tolerance.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lminima.core.models import HOMOGENEOUS_ACTIVATIONS, MLP
from lminima.core.problem import Problem
from lminima.theory import classical
from lminima.theory.euler import euler_terms
from lminima.theory.identities import (below, critical_point_identity,
                                       design_matrix, inclusion_residual,
                                       rank_of_d, resolve_rank_tol)

LOOSE_RANK_TOL = 1e-8
"""The second relative tolerance at which rank D is recorded: where the two
ranks differ, D is ill-conditioned and its rank is a matter of tolerance
(docs/theory.md#numerics-and-rank-tolerances)."""


def theory_record(problem: Problem, *, seed: int = 0,
                  rank_tol: float | None = None) -> dict[str, Any]:
  """The theory quantities of one (refined) point, JSON-ready.

  D(theta) is decomposed once (one SVD) and serves identity (A), the rank and
  the inclusion of the linear design.

  Keys:
    rank_D, rank_D_frac (= rank_D / (m d_y)): rank of the full D.
    rank_last_hidden: rank of F, the output layer's design.
    identity_gap_full, identity_gap_last: |L - c||P_N[D] vec Y||^2| and
      |L - c||(I - F F^+) Y||^2| (identity A; 0 at a critical point).
    yhat_norm: ||vec Yhat||, the scale of the Euler residual.
    euler_residual_max: max_l ||E^(l) g_l - vec Yhat|| (identity B); None
      unless the model is an MLP with a homogeneous activation.
    linear_opt: L*_linear (intercept iff ``problem.intercept``).
    rf_opt: L* of random features of width d_H, same activation, ``seed`` and
      intercept; None unless the model is an MLP with hidden layers.
    inclusion_residual_linear: ||P_N[D] M||_F / ||M||_F, M = [X (1)] kron I.
    below_linear: L <= linear_opt (1 + BOUND_RTOL).
    rank_tol: the relative cut-off used for every rank and projection here.
    rank_D_loose, rank_tol_loose: rank of D at the looser relative cut-off
      ``max(rank_tol, LOOSE_RANK_TOL)``, from the same SVD.
    full_D_skipped: None, or why the full-D fields are None.

  Example:
    >>> import jax, numpy as np
    >>> from lminima import Problem
    >>> model = MLP(d_in=2, widths=(3,), d_out=1)
    >>> x = np.random.default_rng(0).standard_normal((12, 2))
    >>> rec = theory_record(Problem.for_module(
    ...     model, model.init_params(jax.random.PRNGKey(0)), x, x[:, :1] ** 2))
    >>> rec["rank_D"], rec["rank_last_hidden"]  # n_params = 13 > rank
    (12, 4)
  """
  tol = resolve_rank_tol(problem, rank_tol)
  critical = critical_point_identity(problem, rank_tol=tol)
  x2d = np.asarray(problem.x).reshape(problem.m, -1)
  y = np.asarray(problem.y)
  linear = classical.linear_regression_optimum(
      x2d, y, normalization=problem.normalization,
      intercept=problem.intercept, rank_tol=tol)
  model = problem.module if isinstance(problem.module, MLP) else None
  rf_opt = (float(classical.random_features_optimum(
      x2d, y, model.widths[-1], model.activation, seed=seed,
      normalization=problem.normalization, intercept=problem.intercept,
      rank_tol=tol).value)
            if model is not None and model.widths else None)
  fits = critical.full_D_skipped is None
  loose = max(tol, LOOSE_RANK_TOL)
  euler_max = inclusion = None
  if fits:
    if model is not None and model.activation in HOMOGENEOUS_ACTIVATIONS:
      # Only the residuals: the per-layer projections would cost an SVD each.
      euler_max = max(term[-1] for term in euler_terms(problem))
    inclusion = inclusion_residual(problem,
                                   design_matrix(problem, None, None), tol)
  return dict(
      rank_D=critical.rank_D,
      rank_D_frac=(critical.rank_D / (problem.m * problem.d_y)
                   if fits else None),
      rank_last_hidden=critical.rank_last_hidden,
      identity_gap_full=critical.gap_full,
      identity_gap_last=critical.gap_last,
      euler_residual_max=euler_max,
      yhat_norm=float(np.linalg.norm(problem.yhat())),
      linear_opt=float(linear.value),
      rf_opt=rf_opt,
      inclusion_residual_linear=inclusion,
      below_linear=below(critical.loss, float(linear.value)),
      rank_tol=tol,
      rank_D_loose=rank_of_d(problem, loose),
      rank_tol_loose=loose,
      full_D_skipped=critical.full_D_skipped)
