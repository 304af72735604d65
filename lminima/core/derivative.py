"""The derivative matrix D(theta) of any model, in float64.

D(theta) = d vec(Yhat) / d theta (docs/theory.md, "The derivative matrix") with
rows sample-major (row ``i * d_y + k`` holds ``yhat[i, k]``) and columns in the
flat parameter order of the problem (``ravel_pytree``; docs/theory.md,
"Orderings"). It satisfies grad L = 2c D^T vec(Yhat - Y). Every parameter leaf
is a block of columns, named by its path (``Problem.column_slices``): for the
MLP family ``"layer_l/kernel"`` (D^(l), column ``a * d_l + b`` for
``W^(l)[a, b]``) and ``"layer_l/bias"`` (D_b^(l)). The output layer's blocks
are Kronecker products, D^(H+1) = h^(H) kron I_{d_y} and
D_b^(H+1) = 1_m kron I_{d_y}.

Example:
  >>> import jax, numpy as np
  >>> from lminima import Problem
  >>> from lminima.core.models import MLP
  >>> model = MLP(d_in=2, widths=(3,), d_out=2, activation="relu", bias=False)
  >>> problem = Problem.for_module(model, model.init_params(
  ...     jax.random.PRNGKey(0)), np.ones((4, 2)), np.zeros((4, 2)))
  >>> d = problem.derivative()
  >>> d.matrix.shape, d.block("layer_2/kernel").shape
  ((8, 12), (8, 6))
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np


class ProblemLike(Protocol):
  """What D needs of a ``lminima.Problem`` (named structurally, so that this
  module does not import the one that calls it)."""
  m: int
  d_y: int
  n_params: int
  memory_budget_bytes: int
  apply_fn: Any
  params: Any
  x: Any

  def yhat(self) -> np.ndarray: ...

  def column_slices(self) -> dict[str, slice]: ...


def derivative_matrix_nbytes(problem: ProblemLike) -> int:
  """Bytes of the float64 D: ``m * d_y * n_params * 8``."""
  return problem.m * problem.d_y * problem.n_params * 8


def skip_reason(problem: ProblemLike) -> str | None:
  """Why D would not be built (over the memory budget), or None."""
  nbytes = derivative_matrix_nbytes(problem)
  if nbytes <= problem.memory_budget_bytes:
    return None
  return (f"D needs {nbytes} bytes (m*d_y*n_params*8 = {problem.m}*"
          f"{problem.d_y}*{problem.n_params}*8), over the memory budget of "
          f"{problem.memory_budget_bytes} bytes")


@dataclasses.dataclass(frozen=True)
class DerivativeMatrix:
  """D(theta) at one point on one input batch.

  Attributes:
    matrix: the full D, float64 (m d_y x n_params), module docstring layout.
    yhat: model output Yhat (m x d_y) at the same point.
    column_slices: parameter block name -> column range, in column order.
  """
  matrix: np.ndarray
  yhat: np.ndarray
  column_slices: dict[str, slice]

  def block(self, name: str) -> np.ndarray:
    """The columns of parameter block ``name``; a view."""
    try:
      return self.matrix[:, self.column_slices[name]]
    except KeyError:
      raise ValueError(f"unknown block {name!r}; choose one of "
                       f"{list(self.column_slices)}") from None


def derivative_matrix(problem: ProblemLike) -> DerivativeMatrix:
  """D(theta) of ``problem`` (prefer the cached ``problem.derivative()``).

  Raises:
    ValueError: when D would exceed ``problem.memory_budget_bytes``.
  """
  reason = skip_reason(problem)
  if reason is not None:
    raise ValueError(reason + "; check derivative.skip_reason first")
  matrix = _jacobian(problem.apply_fn, problem.params, problem.x)
  return DerivativeMatrix(matrix=np.asarray(matrix), yhat=problem.yhat(),
                          column_slices=problem.column_slices())


@functools.partial(jax.jit, static_argnums=0)
def _jacobian(apply_fn, params, x):
  # Rows of different samples are independent, so D is built per sample:
  # intermediates stay O(d_y * width) per sample instead of O(m) per row.
  # Per sample, reverse mode needs d_y passes and forward mode n_params, and
  # n_params >= d_y for any model with a linear output layer.
  def single(p, xi):
    return apply_fn(p, xi[None])[0]
  per_leaf = jax.vmap(jax.jacrev(single), in_axes=(None, 0))(params, x)
  leaves = jax.tree_util.tree_leaves(per_leaf)  # each (m, d_y, *leaf shape)
  rows = x.shape[0] * leaves[0].shape[1]
  return jnp.concatenate([leaf.reshape(rows, -1) for leaf in leaves], axis=1)
