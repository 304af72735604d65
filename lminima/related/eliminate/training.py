"""Full-batch Adam on any ``Objective`` (plain or augmented), in float32.

The elimination experiment trains objectives that are not MLP members (the
augmented network and its penalty), which ``lminima.train`` does not take:
``train`` is one ``lax.scan`` of optax's Adam per objective.

Example:
  >>> import jax, numpy as np
  >>> from lminima.core.models import MLP
  >>> from lminima.core.problem import ModuleMethod, Objective
  >>> x = np.random.default_rng(0).standard_normal((8, 2))
  >>> model = MLP(d_in=2, widths=(2,), d_out=1)
  >>> objective = Objective(ModuleMethod(model), "squared", "mean")
  >>> params = model.init_params(jax.random.PRNGKey(0))
  >>> result = train(objective, params, x, np.sin(x[:, :1]), steps=50)
  >>> bool(result.loss < objective(params, x, np.sin(x[:, :1]))), result.diverged
  (True, False)
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lminima.core.problem import Objective
from lminima.dtypes import TRAIN_DTYPE


@dataclasses.dataclass(frozen=True)
class TrainResult:
  """``params`` (float32) after ``steps`` Adam steps, the objective there, and
  whether it (or a parameter) is NaN/inf."""
  params: Any
  loss: float
  diverged: bool


@functools.partial(jax.jit, static_argnums=(0, 4, 5))
def _adam(objective, params, x, y, steps, learning_rate):
  optimizer = optax.adam(learning_rate)

  def step(carry, _):
    params, state = carry
    grads = jax.grad(objective)(params, x, y)
    updates, state = optimizer.update(grads, state, params)
    return (optax.apply_updates(params, updates), state), None

  (params, _), _ = jax.lax.scan(step, (params, optimizer.init(params)), None,
                                length=steps)
  return params, objective(params, x, y)


def train(objective: Objective, params: Any, x: Any, y: Any, *,
          steps: int = 2000, learning_rate: float = 0.01) -> TrainResult:
  """Full-batch Adam on any ``Objective`` (plain or augmented), in float32.

  One compiled program per objective, shapes and (steps, learning_rate).
  """
  if steps <= 0 or not learning_rate > 0:
    raise ValueError(f"train: need steps > 0 and learning_rate > 0, got "
                     f"steps={steps}, learning_rate={learning_rate}")
  cast = lambda a: jnp.asarray(a, TRAIN_DTYPE)
  params, loss = _adam(objective, jax.tree_util.tree_map(cast, params),
                       cast(x), cast(y), int(steps), float(learning_rate))
  params = jax.tree_util.tree_map(np.asarray, params)
  finite = all(np.all(np.isfinite(leaf))
               for leaf in jax.tree_util.tree_leaves(params))
  return TrainResult(params=params, loss=float(loss),
                     diverged=not (finite and math.isfinite(float(loss))))
