"""Members of different widths in one padded network.

To train members of different widths in one compiled program, a member is
embedded in a network of the largest widths (``widen``), with 0/1 unit masks
``masks[l]`` of shape (d_l,) multiplied into h^(l) (``width_masks``; the MLP's
``forward`` takes them). Padded weights are exactly zero (``pad_params``)
and, because masked units contribute nothing to the output, their gradients
are exactly zero too, so they stay zero under sgd/momentum/adam;
``unpad_params`` takes a member back out.

Example:
  >>> import jax
  >>> from lminima.core.models import MLP
  >>> small = MLP(d_in=2, widths=(3,), d_out=1)
  >>> big = widen(small, (5,))
  >>> padded = pad_params(small.init_params(jax.random.PRNGKey(0)), big)
  >>> padded["params"]["layer_1"]["kernel"].shape
  (2, 5)
  >>> unpad_params(padded, small)["params"]["layer_1"]["kernel"].shape
  (2, 3)
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp

from lminima.core.models import MLP, Params
from lminima.dtypes import TRAIN_DTYPE


def widen(model: MLP, widths: Sequence[int]) -> MLP:
  """The same architecture with other hidden widths."""
  return model.clone(widths=tuple(widths), parent=None)


def width_masks(true_widths: Sequence[int] | jax.Array,
                max_widths: Sequence[int], dtype=TRAIN_DTYPE
                ) -> tuple[jax.Array, ...]:
  """0/1 unit masks selecting the first ``true_widths[l]`` of ``max_widths[l]``.

  ``true_widths`` may be traced (one member of a vmapped population).
  """
  if len(true_widths) != len(max_widths):
    raise ValueError(f"depth mismatch: {true_widths} vs {max_widths}")
  if not isinstance(true_widths, jax.Array) and any(
      t > m for t, m in zip(true_widths, max_widths)):
    raise ValueError(f"true widths {true_widths} exceed padded {max_widths}")
  return tuple((jnp.arange(m) < t).astype(dtype)
               for t, m in zip(true_widths, max_widths))


def pad_params(variables: Params, padded: MLP) -> Params:
  """Embeds ``variables`` in the larger ``padded`` model, padding with zeros."""
  def pad(leaf, target):
    return jnp.zeros(target.shape, leaf.dtype).at[
        tuple(slice(0, n) for n in leaf.shape)].set(leaf)
  return jax.tree_util.tree_map(pad, variables, _shapes(padded))


def unpad_params(variables: Params, model: MLP) -> Params:
  """Inverse of ``pad_params``: the active block of each layer for ``model``."""
  return jax.tree_util.tree_map(
      lambda leaf, target: leaf[tuple(slice(0, n) for n in target.shape)],
      variables, _shapes(model))


@functools.lru_cache(maxsize=256)
def _shapes(model: MLP) -> Params:
  """Shapes of ``model``'s variables, traced once per model (hashable)."""
  return jax.eval_shape(model.init_params, jax.random.PRNGKey(0))
