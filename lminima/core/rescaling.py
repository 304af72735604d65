"""The norm of a positively homogeneous MLP, least over its rescalings.

With ``sigma(a z) = a sigma(z)`` for ``a > 0`` (relu, leaky_relu,
identity), scaling hidden unit j's incoming weights and bias by ``a_j`` and
its outgoing weights by ``1 / a_j`` leaves the network's function, hence L,
unchanged. ``||theta||`` can then grow along a path on which nothing about
the function grows, so growth of ``||theta||`` alone is weak evidence of an
escape to infinity (docs/theory.md#escape-to-infinity). The balanced norm,
``min_a ||theta(a)||``, is the same at every point of a rescaling orbit.

With ``t = log a^2`` per hidden unit (``t = 0`` for inputs and outputs),

  ||theta(a)||^2 = sum_l sum_ij W_l[i, j]^2 exp(t_j - t_i)
                   + sum_l sum_j b_l[j]^2 exp(t_j) + (unscaled terms),

a sum of exponentials of linear functions of t: convex. For one unit,
given the others, it is ``A_j e^{t_j} + B_j e^{-t_j}`` (A_j its incoming
weights and bias, B_j its outgoing weights, each weighted by its
neighbours' scales), least at ``e^{t_j} = sqrt(B_j / A_j)``, value
``2 sqrt(A_j B_j)``: coordinate descent, sweep after sweep. A unit with
``A_j B_j = 0`` contributes nothing in the infimum (its scale goes to 0 or
infinity), and its weights are left out.

Example:
  >>> import jax, numpy as np
  >>> from lminima.core.models import MLP
  >>> model = MLP(d_in=2, widths=(3,), d_out=1, activation="relu")
  >>> params = model.init_params(jax.random.PRNGKey(0), np.float64)
  >>> scaled = jax.tree_util.tree_map(np.array, params)
  >>> scaled["params"]["layer_1"]["kernel"][:, 0] *= 10.0
  >>> scaled["params"]["layer_1"]["bias"][0] *= 10.0
  >>> scaled["params"]["layer_2"]["kernel"][0] /= 10.0
  >>> bool(np.isclose(balanced_norm(model, params),
  ...                 balanced_norm(model, scaled), rtol=1e-9))
  True
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lminima.core.models import HOMOGENEOUS_ACTIVATIONS, MLP, layer_name

_SWEEPS = 10000
_RTOL = 1e-13


def rescalable(module: Any) -> bool:
  """Whether ``module`` is an MLP with hidden units whose activation is
  positively homogeneous (its hidden units can be rescaled)."""
  return (isinstance(module, MLP) and bool(module.widths)
          and module.activation in HOMOGENEOUS_ACTIVATIONS)


def balanced_norm(module: MLP, variables: Any) -> float:
  """``min`` over positive rescalings of the hidden units of ``||theta||``.

  Args:
    module: an MLP that ``rescalable`` accepts.
    variables: its flax variables.

  Returns:
    The balanced norm (module docstring).

  Raises:
    ValueError: the module is not ``rescalable``.
  """
  if not rescalable(module):
    raise ValueError("balanced_norm: needs an MLP with hidden units and a "
                     f"positively homogeneous activation "
                     f"{HOMOGENEOUS_ACTIVATIONS}")
  params = variables["params"]
  n_layers = module.depth + 1
  squares = [np.asarray(params[layer_name(l)]["kernel"], np.float64) ** 2
             for l in range(1, n_layers + 1)]
  biases = [np.asarray(params[layer_name(l)]["bias"], np.float64) ** 2
            if "bias" in params[layer_name(l)] else np.zeros(w.shape[1])
            for l, w in enumerate(squares, start=1)]
  fixed = float(biases[-1].sum()) + sum(
      float(np.sum(np.asarray(v, np.float64) ** 2))
      for name, layer in params.items()
      if not name.startswith("layer_") for v in layer.values())
  # Units that contribute nothing in the infimum: their weights out, until
  # none is left (dropping one can leave a neighbour without weights).
  while True:
    dropped = False
    for l in range(module.depth):
      incoming = squares[l].sum(0) + biases[l]
      outgoing = squares[l + 1].sum(1)
      dead = (incoming == 0) != (outgoing == 0)
      if dead.any():
        squares[l][:, dead], biases[l][dead] = 0.0, 0.0
        squares[l + 1][dead] = 0.0
        dropped = True
    if not dropped:
      break
  # Scales e^{t} per layer: inputs and outputs fixed at 1.
  scales = [np.ones(w.shape[0]) for w in squares] + [
      np.ones(squares[-1].shape[1])]
  value = np.inf
  for _ in range(_SWEEPS):
    for l in range(1, n_layers):
      incoming = (scales[l - 1] ** -1.0) @ squares[l - 1] + biases[l - 1]
      outgoing = squares[l] @ scales[l + 1]
      live = (incoming > 0) & (outgoing > 0)
      scales[l] = np.where(live, np.sqrt(outgoing / np.where(
          live, incoming, 1.0)), 1.0)
    new = fixed + sum(
        float(scales[l + 1] @ ((scales[l] ** -1.0) @ squares[l])
              + (scales[l + 1] @ biases[l] if l < n_layers - 1 else 0.0))
        for l in range(n_layers))
    if value - new <= _RTOL * new:
      return float(np.sqrt(new))
    value = new
  return float(np.sqrt(value))
