"""The identities at a critical point (docs/theory.md#identities-at-a-critical-point).

Everything here reads a ``Problem`` (float64, one point, one data set) and its
derivative matrix D(theta) (``lminima.derivative``), with L = c ||Yhat - Y||_F^2
and r = vec(Yhat - Y):

(A) ``critical_point_identity``, for any model with a linear output layer:
    grad L = 2c D^T r, so at a critical point r is orthogonal to col(D), and
    vec Yhat lies in the column space of the output layer's block F kron I;
    hence L = c ||P_N[D] vec Y||^2 = c ||(I - F F^+) Y||_F^2 with F the design
    of the output layer (``Problem.features``).
(B) ``euler_identity``, stated for the MLP family only: for positively
    homogeneous activations (relu, leaky_relu, identity), scaling the group
    G_l = {W^(l), b^(l), b^(l+1), ..., b^(H+1)} by a > 0 scales Yhat by a, so
    vec Yhat = E^(l) g_l with E^(l) = [D^(l), D_b^(l), ..., D_b^(H+1)]; the
    output layer (l = H+1) satisfies it for every activation.
(C) ``subspace_bound``: if col(F kron I) is in col(D) at a critical point,
    L <= c ||(I - F F^+) Y||^2; the inclusion is measured as the relative
    residual ||P_N[D] M||_F / ||M||_F, M = F kron I_{d_y}.
(D) ``full_rank_check``: rank D = m d_y at a critical point forces L = 0.

Each identity is exact only at a differentiable critical point: certify first.
Every rank and projection uses one recorded relative tolerance, by default
``linalg.default_rank_tol((m d_y, n_params))`` (docs/theory.md,
"Numerics and rank tolerances"); the full-D form is ill-conditioned, the
last-layer form is the stable one.

Example:
  >>> import jax, numpy as np
  >>> from lminima import Problem
  >>> from lminima.models import MLP
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

from lminima import checks, classical, derivative, linalg
from lminima.models import HOMOGENEOUS_ACTIVATIONS, MLP, layer_name
from lminima.problem import Problem

BOUND_RTOL = 1e-8
"""A bound ``L <= B`` counts as holding when ``L <= B + BOUND_RTOL * (1 + B)``."""


class _Record:
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
    return linalg.default_rank_tol((problem.m * problem.d_y,
                                    problem.n_params))
  if not rank_tol > 0:
    raise ValueError(f"rank_tol must be positive, got {rank_tol}")
  return float(rank_tol)


def _basis_of_d(problem: Problem, tol: float) -> np.ndarray:
  """Orthonormal basis of col(D) at ``tol``; one SVD per point and tolerance."""
  return problem.cached(f"basis_D/{tol!r}", lambda: linalg.column_basis(
      problem.derivative().matrix, tol)[0])


def _residual_in_d(problem: Problem, target: np.ndarray, tol: float
                   ) -> np.ndarray:
  """(I - P[D]) target for a vector or a matrix of columns."""
  basis = _basis_of_d(problem, tol)
  return target - basis @ (basis.T @ target)


def _below(value: float, bound: float) -> bool:
  return bool(value <= bound + BOUND_RTOL * (1.0 + abs(bound)))


# ---------------------------------------------------------------------------
# Projection residuals and ranks.


@dataclasses.dataclass(frozen=True)
class Residual(_Record):
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


def _residual(matrix: np.ndarray, target: np.ndarray, c: float,
              rank_tol: float) -> Residual:
  proj = linalg.project(matrix, target, scale=c, rank_tol=rank_tol)
  return Residual(value=proj.value, rank=proj.rank, n_cols=matrix.shape[1],
                  rank_tol=proj.rank_tol)


def last_layer_residual(problem: Problem, rank_tol: float | None = None
                        ) -> Residual:
  """c ||(I - F F^+) Y||_F^2 and rank F, F = ``problem.features()``."""
  tol = resolve_rank_tol(problem, rank_tol)
  return _residual(problem.features(), np.asarray(problem.y), problem.c, tol)


def residuals(problem: Problem, *, rank_tol: float | None = None
              ) -> dict[str, Residual]:
  """Projection residuals c ||P_N[M] vec Y||^2 and ranks of D, its blocks, F.

  Keys: ``"D"``, every parameter block (``Problem.column_slices``) and
  ``"last_layer"`` (F = ``problem.features()``: rank F, value
  c ||(I - F F^+) Y||_F^2 = c ||P_N[F kron I] vec Y||^2).

  Example:
    >>> import jax, numpy as np
    >>> from lminima.models import MLP
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
  out = {"D": _residual(d.matrix, vec_y, problem.c, tol)}
  for name in d.column_slices:
    out[name] = _residual(d.block(name), vec_y, problem.c, tol)
  out["last_layer"] = last_layer_residual(problem, tol)
  return out


# ---------------------------------------------------------------------------
# (A) Critical-point identity.


@dataclasses.dataclass(frozen=True)
class CriticalPointIdentity(_Record):
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
    rank_d = int(_basis_of_d(problem, tol).shape[1])
  return CriticalPointIdentity(
      loss=loss, grad_norm=problem.grad_norm, full_value=full_value,
      last_value=last.value,
      gap_full=None if full_value is None else abs(loss - full_value),
      gap_last=abs(loss - last.value), rank_D=rank_d,
      rank_last_hidden=last.rank, rank_tol=tol, full_D_skipped=skipped)


# ---------------------------------------------------------------------------
# (B) Euler identity (MLP family).


@dataclasses.dataclass(frozen=True)
class EulerLayer(_Record):
  """Identity (B) for one layer l (module docstring).

  Attributes:
    layer: l (1-based; H+1 is the output layer).
    blocks: names of the columns of E^(l) = [D^(l), D_b^(l), ..., D_b^(H+1)].
    exact_by_homogeneity: whether vec Yhat = E^(l) g_l holds for every theta
      (homogeneous activation, or l = H+1).
    euler_residual: ||E^(l) g_l - vec Yhat||_2 (absolute, units of Yhat).
    projection_value: c ||P_N[E^(l)] vec Y||^2.
    gap: |L - projection_value| (0 only at a critical point where
      ``exact_by_homogeneity``).
    rank: numerical rank of E^(l).
  """
  layer: int
  blocks: tuple[str, ...]
  exact_by_homogeneity: bool
  euler_residual: float
  projection_value: float
  gap: float
  rank: int


@dataclasses.dataclass(frozen=True)
class EulerIdentity(_Record):
  """Identity (B) for every layer.

  Attributes:
    activation: the network's activation.
    homogeneous: whether it is positively homogeneous.
    loss: L(theta).
    grad_norm: ||grad L(theta)||_2.
    yhat_norm: ||vec Yhat||_2, the scale of the Euler residuals.
    rank_tol: relative cut-off used for the ranks and projections.
    layers: one ``EulerLayer`` per layer 1..H+1.
  """
  activation: str
  homogeneous: bool
  loss: float
  grad_norm: float
  yhat_norm: float
  rank_tol: float
  layers: tuple[EulerLayer, ...]

  @property
  def euler_residual_max(self) -> float:
    """Largest Euler residual over the layers."""
    return max(layer.euler_residual for layer in self.layers)


def euler_blocks(model: MLP, layer: int) -> tuple[str, ...]:
  """Block names of E^(l): W^(l) and, with biases, b^(l), ..., b^(H+1).

  Example:
    >>> euler_blocks(MLP(d_in=2, widths=(3, 3), d_out=1, bias=True), 2)
    ('layer_2/kernel', 'layer_2/bias', 'layer_3/bias')
  """
  n_layers = model.depth + 1
  if not 1 <= layer <= n_layers:
    raise ValueError(f"layer must be in 1..{n_layers}, got {layer}")
  later_biases = tuple(f"{layer_name(k)}/bias"
                       for k in range(layer, n_layers + 1) if model.bias)
  return (f"{layer_name(layer)}/kernel",) + later_biases


def _mlp_of(problem: Problem) -> MLP:
  if not isinstance(problem.module, MLP):
    raise ValueError("the Euler identity is stated for the MLP family only "
                     "(lminima.models.MLP); this problem's model is "
                     + ("a plain callable" if problem.module is None
                        else type(problem.module).__name__))
  return problem.module


def euler_terms(problem: Problem):
  """Yields (l, block names, E^(l), ||E^(l) g_l - vec Yhat||) for l = 1..H+1."""
  model = _mlp_of(problem)
  d = problem.derivative()
  flat = np.asarray(problem.flat)
  vec_yhat = d.yhat.reshape(-1)
  for l in range(1, model.depth + 2):
    names = euler_blocks(model, l)
    block = np.hstack([d.block(n) for n in names])
    group = np.concatenate([flat[d.column_slices[n]] for n in names])
    yield l, names, block, float(np.linalg.norm(block @ group - vec_yhat))


def euler_identity(problem: Problem, *, rank_tol: float | None = None
                   ) -> EulerIdentity:
  """Identity (B): vec Yhat = E^(l) g_l and L = c ||P_N[E^(l)] vec Y||^2.

  Computed for every activation and layer of an MLP; for non-homogeneous
  activations only the output layer satisfies the Euler identity
  (``exact_by_homogeneity``), which makes the others a measured departure.

  Raises:
    ValueError: if the problem's model is not an ``lminima.models.MLP``.

  Example:
    >>> import jax, numpy as np
    >>> model = MLP(d_in=2, widths=(4,), d_out=1, activation="relu")
    >>> x = np.random.default_rng(0).standard_normal((5, 2))
    >>> problem = Problem.for_module(model, model.init_params(
    ...     jax.random.PRNGKey(0)), x, np.sin(x[:, :1]))
    >>> out = euler_identity(problem)
    >>> out.euler_residual_max < 1e-13, len(out.layers)
    (True, 2)
  """
  model = _mlp_of(problem)
  tol = resolve_rank_tol(problem, rank_tol)
  homogeneous = model.activation in HOMOGENEOUS_ACTIVATIONS
  vec_y = np.asarray(problem.y).reshape(-1)
  loss = problem.loss
  layers = []
  for l, names, block, euler_residual in euler_terms(problem):
    proj = _residual(block, vec_y, problem.c, tol)
    layers.append(EulerLayer(
        layer=l, blocks=names,
        exact_by_homogeneity=homogeneous or l == model.depth + 1,
        euler_residual=euler_residual, projection_value=proj.value,
        gap=abs(loss - proj.value), rank=proj.rank))
  return EulerIdentity(
      activation=model.activation, homogeneous=homogeneous, loss=loss,
      grad_norm=problem.grad_norm,
      yhat_norm=float(np.linalg.norm(problem.yhat())), rank_tol=tol,
      layers=tuple(layers))


# ---------------------------------------------------------------------------
# (C) Subspace bound.


@dataclasses.dataclass(frozen=True)
class SubspaceBound(_Record):
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


def _design(problem: Problem, features: Any, intercept: bool | None
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
    >>> model = MLP(d_in=2, widths=(), d_out=1)
    >>> x = np.random.default_rng(0).standard_normal((6, 2))
    >>> problem = Problem.for_module(model, model.init_params(
    ...     jax.random.PRNGKey(0)), x, np.zeros((6, 1)))
    >>> subspace_bound(problem).inclusion_residual < 1e-14
    True
  """
  tol = resolve_rank_tol(problem, rank_tol)
  design = _design(problem, features, intercept)
  optimum = classical.basis_function_optimum(
      design, np.asarray(problem.y), normalization=problem.normalization,
      intercept=False, name="subspace_bound", rank_tol=tol)
  loss = problem.loss
  return SubspaceBound(
      loss=loss, grad_norm=problem.grad_norm, bound=float(optimum.value),
      inclusion_residual=inclusion_residual(problem, design, tol),
      holds=_below(loss, float(optimum.value)), tolerance=BOUND_RTOL,
      rank_features=int(optimum.rank), rank_tol=tol)


# ---------------------------------------------------------------------------
# (D) Full rank.


@dataclasses.dataclass(frozen=True)
class FullRankCheck(_Record):
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


# ---------------------------------------------------------------------------
# Per-row record (sweep).


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
    euler_residual_max: max_l ||E^(l) g_l - vec Yhat|| (identity B); None
      unless the model is an MLP with a homogeneous activation.
    linear_opt: L*_linear (intercept iff ``problem.intercept``).
    rf_opt: L* of random features of width d_H, same activation, ``seed`` and
      intercept; None unless the model is an MLP with hidden layers.
    inclusion_residual_linear: ||P_N[D] M||_F / ||M||_F, M = [X (1)] kron I.
    below_linear: L <= linear_opt + BOUND_RTOL * (1 + linear_opt).
    rank_tol: the relative cut-off used for every rank and projection here.
    full_D_skipped: None, or why the full-D fields are None.

  Example:
    >>> import jax, numpy as np
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
  euler_max = inclusion = None
  if fits:
    if model is not None and model.activation in HOMOGENEOUS_ACTIVATIONS:
      # Only the residuals: the per-layer projections would cost an SVD each.
      euler_max = max(term[-1] for term in euler_terms(problem))
    inclusion = inclusion_residual(problem, _design(problem, None, None), tol)
  return dict(
      rank_D=critical.rank_D,
      rank_D_frac=(critical.rank_D / (problem.m * problem.d_y)
                   if fits else None),
      rank_last_hidden=critical.rank_last_hidden,
      identity_gap_full=critical.gap_full,
      identity_gap_last=critical.gap_last,
      euler_residual_max=euler_max,
      linear_opt=float(linear.value),
      rf_opt=rf_opt,
      inclusion_residual_linear=inclusion,
      below_linear=_below(critical.loss, float(linear.value)),
      rank_tol=tol,
      full_D_skipped=critical.full_D_skipped)
