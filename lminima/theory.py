"""The derivative matrix D(theta) and the identities of DESIGN 1.3.

Everything here is float64 and refers to exactly the (x, y) passed in.

Ordering conventions (fixed once, used everywhere):

* Rows: vec(Yhat) is sample-major, row ``i * d_y + k`` holds ``yhat[i, k]``
  (``Yhat.reshape(-1)`` of the (m, d_y) array).
* Columns of the full D: the order of ``jax.flatten_util.ravel_pytree(params)``
  (= ``lminima.hessian.flatten_params``), i.e. layer by layer, and inside a
  layer the bias before the weights (JAX flattens dict keys in sorted order):

      D = [D_b^(1), D^(1), D_b^(2), D^(2), ..., D_b^(H+1), D^(H+1)]

  (no bias blocks when ``bias=False``). Inside the weight block D^(l) the column
  ``a * d_l + b`` is the derivative with respect to ``W^(l)[a, b]``, the
  row-major order of ``W^(l).reshape(-1)``.

With these orderings the output layer's blocks are Kronecker products,

    D^(H+1)   = h^(H) kron I_{d_y}      (m d_y x d_H d_y),
    D_b^(H+1) = 1_m   kron I_{d_y}      (m d_y x d_y),

so rank D^(H+1) = d_y rank h^(H), and ``P_N[F kron I] vec Y = vec((I - F F^+) Y)``
for any feature matrix F (m x p): every "I kron F" of DESIGN 1.3, written in
sample-major order, is ``F kron I_{d_y}``.

Identities (DESIGN 1.3), with L = c ||Yhat - Y||_F^2 and r = vec(Yhat - Y):

(A) ``critical_point_identity``: grad L = 2c D^T r. At a critical point
    r is orthogonal to col(D) and vec Yhat lies in col(D^(H+1), D_b^(H+1)), hence
    vec Yhat = P[D] vec Y and L = c ||P_N[D] vec Y||^2 = c ||(I - F F^+) Y||_F^2
    with F = h^(H) (plus a ones column when biases are on).
(B) ``euler_identity``: for positively homogeneous activations (relu,
    leaky_relu, identity), scaling the parameter group
    G_l = {W^(l), b^(l), b^(l+1), ..., b^(H+1)} by a > 0 scales Yhat by a:
    every hidden layer k >= l then has Z^(k) scaled by a, hence h^(k) too.
    Differentiating at a = 1 (Euler) gives

        vec Yhat = E^(l) g_l,   E^(l) = [D^(l), D_b^(l), ..., D_b^(H+1)],

    g_l the parameters of G_l stacked in the same order. Without biases
    E^(l) = D^(l) and this is the statement vec Yhat = D^(l) vec W^(l) for every
    layer; with biases it holds for every layer once the biases of layer l and
    of all later layers are included (the bias-free block alone, or
    [D^(l), D_b^(l)] alone, qualifies only for l = H+1, and there for every
    activation since the output layer is linear). At a critical point the
    columns of E^(l) are columns of D, so L = c ||P_N[E^(l)] vec Y||^2.
(C) ``subspace_bound``: if col(F kron I) is in col(D) at a critical point,
    L <= c ||P_N[F kron I] vec Y||^2 = c ||(I - F F^+) Y||^2. The inclusion is
    measured as the relative residual ||P_N[D] M||_F / ||M||_F, M = F kron I.
(D) ``full_rank_check``: rank D = m d_y at a critical point forces L = 0.

Numerics: the full-D projections are ill-conditioned (DESIGN 1.3); every rank
and projection uses ``lminima.linalg`` with one recorded relative tolerance,
by default ``linalg.default_rank_tol((m d_y, n_params))``. Compare the full-D
form with the last-layer form, which is stable.

Example:
  >>> import jax, numpy as np
  >>> from lminima.models import MLP
  >>> model = MLP(d_in=2, widths=(3,), d_out=1, activation="tanh")
  >>> params = model.init(jax.random.PRNGKey(0))
  >>> x = np.random.default_rng(0).standard_normal((5, 2))
  >>> derivative_matrix(model, params, x).matrix.shape
  (5, 13)
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from lminima import EXACT_DTYPE, classical, linalg
from lminima.losses import loss_scale, squared_loss
from lminima.models import HOMOGENEOUS_ACTIVATIONS, MLP, Params, cast_params

DEFAULT_MEMORY_BUDGET_BYTES = 2**30
"""Largest full D (m d_y x n_params float64) built unless told otherwise."""

BOUND_RTOL = 1e-8
"""A bound ``L <= B`` counts as holding when ``L <= B + BOUND_RTOL * (1 + B)``."""


class _Record:
  """Mixin: ``to_dict`` for frozen dataclasses of JSON-ready fields."""

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


# ---------------------------------------------------------------------------
# Input handling.


def _prepare(model: MLP, params: Params, x, y=None):
  """Validates shapes and finiteness; returns float64 params, x (and y)."""
  model.check_params(params)
  x = np.asarray(x, dtype=np.float64)
  if x.ndim != 2 or x.shape[1] != model.d_in:
    raise ValueError(f"x must have shape (m, {model.d_in}), got {x.shape}")
  if x.shape[0] == 0:
    raise ValueError("x has no samples")
  if not np.all(np.isfinite(x)):
    raise ValueError("x contains NaN or inf")
  params = cast_params(params, EXACT_DTYPE)
  if not all(bool(jnp.all(jnp.isfinite(leaf)))
             for leaf in jax.tree_util.tree_leaves(params)):
    raise ValueError("params contain NaN or inf")
  if y is None:
    return params, x
  y = np.asarray(y, dtype=np.float64)
  if y.shape != (x.shape[0], model.d_out):
    raise ValueError(
        f"y must have shape ({x.shape[0]}, {model.d_out}) to match x "
        f"{x.shape} and d_out={model.d_out}, got {y.shape}")
  if not np.all(np.isfinite(y)):
    raise ValueError("y contains NaN or inf")
  return params, x, y


def _resolve_rank_tol(model: MLP, m: int, rank_tol: float | None) -> float:
  """One relative tolerance for every rank/projection of a call."""
  if rank_tol is None:
    return linalg.default_rank_tol((m * model.d_out, model.n_params))
  if not rank_tol > 0:
    raise ValueError(f"rank_tol must be positive, got {rank_tol}")
  return float(rank_tol)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _loss_and_grad(model: MLP, normalization: str, params: Params, x, y):
  def loss(p):
    return squared_loss(model.apply(p, x), y, normalization)
  value, grad = jax.value_and_grad(loss)(params)
  return value, ravel_pytree(grad)[0]


def _loss_and_grad_norm(model, params, x, y, normalization):
  """L(theta) and ||grad L|| in float64 (autodiff of the loss itself)."""
  value, grad = _loss_and_grad(model, normalization, params, jnp.asarray(x),
                               jnp.asarray(y))
  return float(value), float(jnp.linalg.norm(grad))


# ---------------------------------------------------------------------------
# The derivative matrix.


def derivative_matrix_nbytes(model: MLP, m: int) -> int:
  """Bytes of the float64 full D: ``m * d_y * n_params * 8``.

  Cheap predicate for callers that must decide whether to build D.

  Example:
    >>> derivative_matrix_nbytes(MLP(d_in=2, widths=(3,), d_out=1), 5)
    520
  """
  if m <= 0:
    raise ValueError(f"need m > 0 samples, got m={m}")
  return int(m) * model.d_out * model.n_params * np.dtype(np.float64).itemsize


def _column_slices(model: MLP) -> dict[str, slice]:
  """Column ranges of each parameter block, in ravel_pytree order."""
  slices, start = {}, 0
  sizes = model.layer_sizes
  for l, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:]), start=1):
    widths = {"w": fan_in * fan_out}
    if model.bias:
      widths["b"] = fan_out
    for key in sorted(widths):  # JAX flattens dict keys in sorted order.
      slices[f"layer_{l}/{key}"] = slice(start, start + widths[key])
      start += widths[key]
  return slices


@dataclasses.dataclass(frozen=True)
class DerivativeMatrix:
  """D(theta) = d vec(Yhat) / d theta at one point, on one input batch.

  Attributes:
    matrix: the full D, float64 (m d_y x n_params); rows sample-major, columns
      in ``ravel_pytree(params)`` order (module docstring).
    yhat: network output Yhat (m x d_y) at the same point.
    column_slices: ``{"layer_l/w": slice, "layer_l/b": slice}`` in column order.
  """
  matrix: np.ndarray
  yhat: np.ndarray
  column_slices: dict[str, slice]

  def block(self, name: str) -> np.ndarray:
    """The columns of parameter block ``name`` (e.g. ``"layer_2/w"``); a view."""
    try:
      return self.matrix[:, self.column_slices[name]]
    except KeyError:
      raise ValueError(f"unknown block {name!r}; choose one of "
                       f"{list(self.column_slices)}") from None

  @property
  def weight_blocks(self) -> tuple[np.ndarray, ...]:
    """(D^(1), ..., D^(H+1))."""
    return tuple(self.block(n) for n in self.column_slices if n.endswith("/w"))

  @property
  def bias_blocks(self) -> tuple[np.ndarray, ...]:
    """(D_b^(1), ..., D_b^(H+1)); empty without biases."""
    return tuple(self.block(n) for n in self.column_slices if n.endswith("/b"))


@functools.partial(jax.jit, static_argnums=0)
def _jacobian(model: MLP, params: Params, x: jax.Array) -> jax.Array:
  # Rows of different samples are independent, so D is built per sample:
  # intermediates stay O(d_y * width) per sample instead of O(m) per row.
  # Per sample, reverse mode needs d_y passes and forward mode n_params, and
  # n_params >= d_H d_y >= d_y always, so reverse mode is never the costlier.
  def single(p, xi):
    return model.apply(p, xi[None, :])[0]
  per_leaf = jax.vmap(jax.jacrev(single), in_axes=(None, 0))(params, x)
  rows = x.shape[0] * model.d_out
  return jnp.concatenate([leaf.reshape(rows, -1)
                          for leaf in jax.tree_util.tree_leaves(per_leaf)],
                         axis=1)


def derivative_matrix(model: MLP, params: Params, x, *,
                      memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES
                      ) -> DerivativeMatrix:
  """The derivative matrix D(theta) of DESIGN 1.2, in float64.

  D[i d_y + k, j] = d yhat[i, k] / d theta_j, with theta_j in
  ``ravel_pytree(params)`` order; see the module docstring for the block layout
  and D^(H+1) = h^(H) kron I_{d_y}. It satisfies grad L = 2c D^T vec(Yhat - Y).

  Args:
    model: the network.
    params: its parameters (cast to float64).
    x: inputs (m x d_x).
    memory_budget_bytes: refuse, before allocating, when D would need more
      (``derivative_matrix_nbytes``).

  Returns:
    A ``DerivativeMatrix``.

  Raises:
    ValueError: on bad shapes, non-finite inputs, or a D over the budget.

  Example:
    >>> import jax, numpy as np
    >>> model = MLP(d_in=2, widths=(3,), d_out=2, activation="relu", bias=False)
    >>> params = model.init(jax.random.PRNGKey(0))
    >>> d = derivative_matrix(model, params, np.ones((4, 2)))
    >>> d.matrix.shape, d.block("layer_2/w").shape
    ((8, 12), (8, 6))
  """
  params, x = _prepare(model, params, x)
  nbytes = derivative_matrix_nbytes(model, x.shape[0])
  if nbytes > memory_budget_bytes:
    raise ValueError(
        f"D would need {nbytes} bytes (m*d_y*n_params*8 = {x.shape[0]}*"
        f"{model.d_out}*{model.n_params}*8) > memory budget "
        f"{memory_budget_bytes}; check derivative_matrix_nbytes first")
  xj = jnp.asarray(x)
  return DerivativeMatrix(
      matrix=np.asarray(_jacobian(model, params, xj)),
      yhat=np.asarray(model.apply(params, xj)),
      column_slices=_column_slices(model))


def _derivative_for(model: MLP, params: Params, x: np.ndarray,
                    derivative: DerivativeMatrix | None,
                    memory_budget_bytes: int) -> DerivativeMatrix:
  """A caller's precomputed D(theta), shape-checked, or D(theta) built now."""
  if derivative is None:
    return derivative_matrix(model, params, x,
                             memory_budget_bytes=memory_budget_bytes)
  want = (x.shape[0] * model.d_out, model.n_params)
  if derivative.matrix.shape != want:
    raise ValueError(f"derivative has shape {derivative.matrix.shape}, "
                     f"expected {want} for this model and x")
  return derivative


def _exact_point(model: MLP, params: Params, x, y, normalization: str,
                 rank_tol: float | None, derivative: DerivativeMatrix | None,
                 memory_budget_bytes: int):
  """Validated float64 (params, x, y), the rank tolerance, c, D(theta), L and
  ||grad L||: what every identity at a point starts from."""
  params, x, y = _prepare(model, params, x, y)
  tol = _resolve_rank_tol(model, x.shape[0], rank_tol)
  c = loss_scale(normalization, x.shape[0])
  derivative = _derivative_for(model, params, x, derivative,
                               memory_budget_bytes)
  loss, grad_norm = _loss_and_grad_norm(model, params, x, y, normalization)
  return params, x, y, tol, c, derivative, loss, grad_norm


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


def _with_intercept(features: np.ndarray, intercept: bool) -> np.ndarray:
  if not intercept:
    return features
  return np.hstack([features, np.ones((features.shape[0], 1))])


def residuals(model: MLP, params: Params, x, y, *,
              normalization: str = "mean", rank_tol: float | None = None,
              derivative: DerivativeMatrix | None = None,
              memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES
              ) -> dict[str, Residual]:
  """Projection residuals c ||P_N[M] vec Y||^2 and ranks of D, blocks, h^(H).

  Keys: ``"D"``, every block name (``"layer_l/w"``, ``"layer_l/b"``) and
  ``"last_hidden"``: F = h^(H) with a ones column when biases are on (X for
  ``widths=()``), value c ||(I - F F^+) Y||_F^2 = c ||P_N[F kron I] vec Y||^2,
  rank and columns of F itself (rank F kron I_{d_y} = d_y rank F).

  Args:
    model, params, x, y: the network, its parameters and the data.
    normalization: ``"sum"`` or ``"mean"`` (the c of ``losses.loss_scale``).
    rank_tol: relative cut-off; default ``default_rank_tol((m d_y, n_params))``.
    derivative: a precomputed ``derivative_matrix`` at the same point.
    memory_budget_bytes: passed to ``derivative_matrix`` when computing D.

  Example:
    >>> import jax, numpy as np
    >>> model = MLP(d_in=2, widths=(), d_out=1)
    >>> x = np.random.default_rng(0).standard_normal((6, 2)); y = x[:, :1]
    >>> out = residuals(model, model.init(jax.random.PRNGKey(0)), x, y)
    >>> out["D"].rank, round(out["D"].value, 12)
    (3, 0.0)
  """
  params, x, y = _prepare(model, params, x, y)
  m = x.shape[0]
  tol = _resolve_rank_tol(model, m, rank_tol)
  c = loss_scale(normalization, m)
  derivative = _derivative_for(model, params, x, derivative,
                               memory_budget_bytes)
  vec_y = y.reshape(-1)
  out = {"D": _residual(derivative.matrix, vec_y, c, tol)}
  for name in derivative.column_slices:
    out[name] = _residual(derivative.block(name), vec_y, c, tol)
  out["last_hidden"] = _last_hidden_residual(model, params, x, y,
                                             normalization, tol)
  return out


def _last_hidden_residual(model, params, x, y, normalization, tol) -> Residual:
  """c ||(I - F F^+) Y||_F^2, rank F: the basis-function optimum on h^(H)."""
  optimum = classical.hidden_features_optimum(
      model, params, x, y, normalization=normalization, rank_tol=tol)
  return Residual(value=float(optimum.value), rank=int(optimum.rank),
                  n_cols=model.layer_sizes[-2] + int(model.bias),
                  rank_tol=tol)


# ---------------------------------------------------------------------------
# (A) Critical-point identity.


@dataclasses.dataclass(frozen=True)
class CriticalPointIdentity(_Record):
  """Both sides of identity (A); exact only at a differentiable critical point.

  Attributes:
    loss: L(theta) = c ||Yhat - Y||_F^2.
    grad_norm: ||grad L(theta)||_2 (how critical the point is).
    full_value: c ||P_N[D] vec Y||^2, or None when D was skipped.
    last_value: c ||(I - F F^+) Y||_F^2, F = h^(H) (+ ones column).
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


def critical_point_identity(
    model: MLP, params: Params, x, y, *, normalization: str = "mean",
    rank_tol: float | None = None,
    derivative: DerivativeMatrix | None = None,
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES
) -> CriticalPointIdentity:
  """Identity (A): L = c ||P_N[D] vec Y||^2 = c ||(I - F F^+) Y||_F^2.

  When D does not fit ``memory_budget_bytes`` (and none is given) the full-D
  fields are None and ``full_D_skipped`` says why; the last-layer form, which
  is cheap and numerically stable, is always computed.

  Example:
    >>> import jax, numpy as np
    >>> model = MLP(d_in=2, widths=(), d_out=1, bias=False)
    >>> x = np.random.default_rng(0).standard_normal((6, 2))
    >>> y = np.random.default_rng(1).standard_normal((6, 1))
    >>> w = np.linalg.lstsq(x, y, rcond=None)[0]  # a critical point
    >>> out = critical_point_identity(model, ({"w": w},), x, y)
    >>> out.gap_full < 1e-14 and out.gap_last < 1e-14
    True
  """
  params, x, y = _prepare(model, params, x, y)
  m = x.shape[0]
  tol = _resolve_rank_tol(model, m, rank_tol)
  c = loss_scale(normalization, m)
  loss, grad_norm = _loss_and_grad_norm(model, params, x, y, normalization)
  last = _last_hidden_residual(model, params, x, y, normalization, tol)
  if derivative is None:
    nbytes = derivative_matrix_nbytes(model, m)
    if nbytes > memory_budget_bytes:
      return CriticalPointIdentity(
          loss=loss, grad_norm=grad_norm, full_value=None,
          last_value=last.value, gap_full=None,
          gap_last=abs(loss - last.value), rank_D=None,
          rank_last_hidden=last.rank, rank_tol=tol,
          full_D_skipped=_skip_reason(nbytes, memory_budget_bytes))
  derivative = _derivative_for(model, params, x, derivative,
                               memory_budget_bytes)
  full = _residual(derivative.matrix, y.reshape(-1), c, tol)
  return CriticalPointIdentity(
      loss=loss, grad_norm=grad_norm, full_value=full.value,
      last_value=last.value, gap_full=abs(loss - full.value),
      gap_last=abs(loss - last.value), rank_D=full.rank,
      rank_last_hidden=last.rank, rank_tol=tol,
      full_D_skipped=None)


def _skip_reason(nbytes: int, budget: int) -> str:
  return (f"D needs {nbytes} bytes (m*d_y*n_params*8), over the memory "
          f"budget of {budget} bytes")


# ---------------------------------------------------------------------------
# (B) Euler identity.


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
    ('layer_2/w', 'layer_2/b', 'layer_3/b')
  """
  n_layers = model.depth + 1
  if not 1 <= layer <= n_layers:
    raise ValueError(f"layer must be in 1..{n_layers}, got {layer}")
  later_biases = tuple(f"layer_{k}/b" for k in range(layer, n_layers + 1)
                       if model.bias)
  return (f"layer_{layer}/w",) + later_biases


def euler_identity(model: MLP, params: Params, x, y, *,
                   normalization: str = "mean", rank_tol: float | None = None,
                   derivative: DerivativeMatrix | None = None,
                   memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES
                   ) -> EulerIdentity:
  """Identity (B): vec Yhat = E^(l) g_l and L = c ||P_N[E^(l)] vec Y||^2.

  Computed for every activation and layer; for non-homogeneous activations only
  the output layer satisfies the Euler identity (``exact_by_homogeneity``),
  which makes the residual of the others a measured departure.

  Example:
    >>> import jax, numpy as np
    >>> model = MLP(d_in=2, widths=(4,), d_out=1, activation="relu")
    >>> params = model.init(jax.random.PRNGKey(0), dtype=np.float64)
    >>> x = np.random.default_rng(0).standard_normal((5, 2))
    >>> out = euler_identity(model, params, x, np.zeros((5, 1)))
    >>> out.euler_residual_max < 1e-13
    True
  """
  params, x, y, tol, c, derivative, loss, grad_norm = _exact_point(
      model, params, x, y, normalization, rank_tol, derivative,
      memory_budget_bytes)
  homogeneous = model.activation in HOMOGENEOUS_ACTIVATIONS
  layers = []
  for l, names, block, euler_residual in _euler_terms(model, params,
                                                      derivative):
    proj = _residual(block, y.reshape(-1), c, tol)
    layers.append(EulerLayer(
        layer=l, blocks=names,
        exact_by_homogeneity=homogeneous or l == model.depth + 1,
        euler_residual=euler_residual, projection_value=proj.value,
        gap=abs(loss - proj.value), rank=proj.rank))
  return EulerIdentity(
      activation=model.activation, homogeneous=homogeneous, loss=loss,
      grad_norm=grad_norm,
      yhat_norm=float(np.linalg.norm(derivative.yhat)),
      rank_tol=tol, layers=tuple(layers))


def _euler_terms(model: MLP, params: Params, derivative: DerivativeMatrix):
  """Yields (l, block names, E^(l), ||E^(l) g_l - vec Yhat||) for l = 1..H+1."""
  vec_yhat = derivative.yhat.reshape(-1)
  for l in range(1, model.depth + 2):
    names = euler_blocks(model, l)
    block = np.hstack([derivative.block(n) for n in names])
    group = np.concatenate([_param_block(params, n) for n in names])
    yield l, names, block, float(np.linalg.norm(block @ group - vec_yhat))


def _param_block(params: Params, name: str) -> np.ndarray:
  """Parameters of block ``"layer_l/w"`` or ``"layer_l/b"``, flattened."""
  layer, key = name.split("/")
  return np.asarray(params[int(layer[len("layer_"):]) - 1][key]).reshape(-1)


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


def subspace_bound(model: MLP, params: Params, x, y, features=None, *,
                   intercept: bool | None = None, normalization: str = "mean",
                   rank_tol: float | None = None,
                   derivative: DerivativeMatrix | None = None,
                   memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES
                   ) -> SubspaceBound:
  """Identity (C): if col(F kron I) is in col(D) at a critical point, L <= bound.

  Args:
    model, params, x, y: the network, its parameters and the data.
    features: F (m x p); default x, giving the linear model (M = I kron X in
      output-major order, ``X kron I_{d_y}`` in the sample-major order used).
      Pass random features Phi for a basis-function model.
    intercept: append a ones column to F; default ``model.bias``.
    normalization, rank_tol, derivative, memory_budget_bytes: as in
      ``residuals``.

  Example:
    >>> import jax, numpy as np
    >>> model = MLP(d_in=2, widths=(), d_out=1)
    >>> x = np.random.default_rng(0).standard_normal((6, 2))
    >>> out = subspace_bound(model, model.init(jax.random.PRNGKey(0)), x,
    ...                      np.zeros((6, 1)))
    >>> out.inclusion_residual < 1e-14
    True
  """
  params, x, y = _prepare(model, params, x, y)
  m = x.shape[0]
  tol = _resolve_rank_tol(model, m, rank_tol)
  features = x if features is None else np.asarray(features, dtype=np.float64)
  if features.ndim != 2 or features.shape[0] != m:
    raise ValueError(f"features must have shape ({m}, p), got "
                     f"{features.shape}")
  features = _with_intercept(features, model.bias if intercept is None
                             else intercept)
  derivative = _derivative_for(model, params, x, derivative,
                               memory_budget_bytes)
  loss, grad_norm = _loss_and_grad_norm(model, params, x, y, normalization)
  bound = classical.basis_function_optimum(
      features, y, normalization=normalization, intercept=False,
      name="subspace_bound", rank_tol=tol)
  design = np.kron(features, np.eye(model.d_out))
  in_d = linalg.project(derivative.matrix, design, rank_tol=tol).fitted
  norm = np.linalg.norm(design)
  inclusion = float(np.linalg.norm(design - in_d) / norm) if norm > 0 else 0.0
  return SubspaceBound(
      loss=loss, grad_norm=grad_norm, bound=float(bound.value),
      inclusion_residual=inclusion,
      holds=_below(loss, float(bound.value)), tolerance=BOUND_RTOL,
      rank_features=int(bound.rank), rank_tol=tol)


def _below(value: float, bound: float) -> bool:
  return bool(value <= bound + BOUND_RTOL * (1.0 + abs(bound)))


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


def full_rank_check(model: MLP, params: Params, x, y, *,
                    normalization: str = "mean", rank_tol: float | None = None,
                    derivative: DerivativeMatrix | None = None,
                    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES
                    ) -> FullRankCheck:
  """Identity (D): rank D vs m d_y, and the loss there.

  Example:
    >>> import jax, numpy as np
    >>> model = MLP(d_in=3, widths=(), d_out=1, bias=False)
    >>> x = np.eye(3)  # 3 samples, 3 parameters: D = x is full rank
    >>> out = full_rank_check(model, model.init(jax.random.PRNGKey(0)), x,
    ...                       np.ones((3, 1)))
    >>> out.full_rank, out.rank_D
    (True, 3)
  """
  params, x, y, tol, c, derivative, loss, grad_norm = _exact_point(
      model, params, x, y, normalization, rank_tol, derivative,
      memory_budget_bytes)
  full = _residual(derivative.matrix, y.reshape(-1), c, tol)
  n_rows = x.shape[0] * model.d_out
  return FullRankCheck(
      rank_D=full.rank, n_rows=n_rows, n_params=model.n_params,
      full_rank=full.rank == n_rows, loss=loss, grad_norm=grad_norm,
      residual=full.value, rank_tol=tol)


# ---------------------------------------------------------------------------
# Per-row record (sweep).


def theory_record(model: MLP, params: Params, x, y, *,
                  normalization: str = "mean", seed: int = 0,
                  memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
                  rank_tol: float | None = None) -> dict[str, Any]:
  """The theory quantities of one (refined) member, JSON-ready.

  Keys:
    rank_D, rank_D_frac (= rank_D / (m d_y)): rank of the full D.
    rank_last_hidden: rank of F = h^(H) (+ ones column with biases).
    identity_gap_full, identity_gap_last: |L - c||P_N[D] vec Y||^2| and
      |L - c||(I - F F^+) Y||^2| (identity A; 0 at a critical point).
    euler_residual_max: max_l ||E^(l) g_l - vec Yhat|| (identity B), None for
      non-homogeneous activations.
    linear_opt: L*_linear (intercept iff the model has biases).
    rf_opt: L* of random features of width d_H, same activation, ``seed`` and
      intercept; None for ``widths=()``.
    inclusion_residual_linear: ||P_N[D] M||_F / ||M||_F, M = [X (1)] kron I.
    below_linear: L <= linear_opt + BOUND_RTOL * (1 + linear_opt).
    rank_tol: the relative cut-off used for every rank and projection here
      (classical optima use their own, see ``lminima.classical``).
    full_D_skipped: None, or why the full-D fields (rank_D, rank_D_frac,
      identity_gap_full, inclusion_residual_linear, euler_residual_max) are None.

  Example:
    >>> import jax, numpy as np
    >>> model = MLP(d_in=2, widths=(3,), d_out=1)
    >>> x = np.random.default_rng(0).standard_normal((6, 2))
    >>> rec = theory_record(model, model.init(jax.random.PRNGKey(0)), x,
    ...                     np.zeros((6, 1)))
    >>> rec["rank_D"] <= 6
    True
  """
  params, x, y = _prepare(model, params, x, y)
  m = x.shape[0]
  tol = _resolve_rank_tol(model, m, rank_tol)
  nbytes = derivative_matrix_nbytes(model, m)
  fits = nbytes <= memory_budget_bytes
  derivative = (derivative_matrix(model, params, x,
                                  memory_budget_bytes=memory_budget_bytes)
                if fits else None)
  common = dict(normalization=normalization, rank_tol=tol,
                derivative=derivative, memory_budget_bytes=memory_budget_bytes)
  critical = critical_point_identity(model, params, x, y, **common)
  linear_opt = float(classical.linear_regression_optimum(
      x, y, normalization=normalization, intercept=model.bias).value)
  rf_opt = (float(classical.random_features_optimum(
      x, y, model.widths[-1], model.activation, seed=seed,
      normalization=normalization, intercept=model.bias).value)
            if model.widths else None)
  euler_max = inclusion = None
  if fits:
    if model.activation in HOMOGENEOUS_ACTIVATIONS:
      # Only the residuals: the per-layer projections would cost an SVD each.
      euler_max = max(term[-1] for term in _euler_terms(model, params,
                                                        derivative))
    inclusion = subspace_bound(model, params, x, y,
                               **common).inclusion_residual
  return dict(
      rank_D=critical.rank_D,
      rank_D_frac=(critical.rank_D / (m * model.d_out) if fits else None),
      rank_last_hidden=critical.rank_last_hidden,
      identity_gap_full=critical.gap_full,
      identity_gap_last=critical.gap_last,
      euler_residual_max=euler_max,
      linear_opt=linear_opt,
      rf_opt=rf_opt,
      inclusion_residual_linear=inclusion,
      below_linear=_below(critical.loss, linear_opt),
      rank_tol=tol,
      full_D_skipped=critical.full_D_skipped)
