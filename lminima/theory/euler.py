"""Identity (B), the Euler identity of the MLP family (docs/theory.md#b-euler-identity).

For positively homogeneous activations (relu, leaky_relu, identity), scaling
the parameter group G_l = {W^(l), b^(l), b^(l+1), ..., b^(H+1)} by a > 0
scales Yhat by a: every hidden layer k >= l then has Z^(k) scaled by a, hence
h^(k) too. Differentiating at a = 1 (Euler) gives

    vec Yhat = E^(l) g_l,   E^(l) = [D^(l), D_b^(l), ..., D_b^(H+1)],

g_l the parameters of G_l stacked in the same order. Without biases
E^(l) = D^(l); the output layer (l = H+1) satisfies it for every activation,
since it is linear. At a critical point the columns of E^(l) are columns of D,
so L = c ||P_N[E^(l)] vec Y||^2. Stated for ``lminima.core.models.MLP`` only.

With the linear skip connection (``MLP(skip=True)``, Yhat = ... + X S) the
group above is not enough: scaling it leaves X S unscaled. Yhat is linear in
S, so adding S to every group restores the identity: G_l = {W^(l), b^(l),
..., b^(H+1), S} scales Yhat by a, and E^(l) gains the columns D_S = X kron
I_{d_y} (``euler_blocks`` lists ``"skip/kernel"`` last).

Example:
  >>> import jax, numpy as np
  >>> from lminima import Problem
  >>> model = MLP(d_in=2, widths=(4,), d_out=1, activation="relu")
  >>> x = np.random.default_rng(0).standard_normal((5, 2))
  >>> problem = Problem.for_module(model, model.init_params(
  ...     jax.random.PRNGKey(0)), x, np.sin(x[:, :1]))
  >>> out = euler_identity(problem)
  >>> out.euler_residual_max < 1e-13, len(out.layers)
  (True, 2)
"""

from __future__ import annotations

import dataclasses

import numpy as np

from lminima.core.models import HOMOGENEOUS_ACTIVATIONS, MLP, SKIP, layer_name
from lminima.core.problem import Problem
from lminima.theory.identities import (Record, projection_residual,
                                       resolve_rank_tol)

@dataclasses.dataclass(frozen=True)
class EulerLayer(Record):
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
class EulerIdentity(Record):
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
  """Block names of E^(l): W^(l) and, with biases, b^(l), ..., b^(H+1); the
  skip kernel S last for a skip model (module docstring).

  Example:
    >>> euler_blocks(MLP(d_in=2, widths=(3, 3), d_out=1, bias=True), 2)
    ('layer_2/kernel', 'layer_2/bias', 'layer_3/bias')
    >>> euler_blocks(MLP(d_in=2, widths=(3,), d_out=1, skip=True), 1)
    ('layer_1/kernel', 'layer_1/bias', 'layer_2/bias', 'skip/kernel')
  """
  n_layers = model.depth + 1
  if not 1 <= layer <= n_layers:
    raise ValueError(f"layer must be in 1..{n_layers}, got {layer}")
  later_biases = tuple(f"{layer_name(k)}/bias"
                       for k in range(layer, n_layers + 1) if model.bias)
  skip = (f"{SKIP}/kernel",) if model.skip else ()
  return (f"{layer_name(layer)}/kernel",) + later_biases + skip


def _mlp_of(problem: Problem) -> MLP:
  if not isinstance(problem.module, MLP):
    raise ValueError("the Euler identity is stated for the MLP family only "
                     "(lminima.core.models.MLP); this problem's model is "
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
    ValueError: if the problem's model is not an ``lminima.core.models.MLP``.
  """
  model = _mlp_of(problem)
  tol = resolve_rank_tol(problem, rank_tol)
  homogeneous = model.activation in HOMOGENEOUS_ACTIVATIONS
  vec_y = np.asarray(problem.y).reshape(-1)
  loss = problem.loss
  layers = []
  for l, names, block, euler_residual in euler_terms(problem):
    proj = projection_residual(block, vec_y, problem.c, tol)
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
