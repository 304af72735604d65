"""Losses with an explicit normalization (docs/theory.md#setup-and-notation).

The squared loss is ``L = c * sum_i ||yhat_i - y_i||^2`` with

* ``c = 1/2`` for ``normalization="sum"``,
* ``c = 1/(2m)`` for ``normalization="mean"`` (m = number of samples).

Every classical optimum and every identity in lminima uses the same ``c``;
``loss_scale`` is the single place that defines it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

NORMALIZATIONS = ("sum", "mean")


def loss_scale(normalization: str, m: int) -> float:
  """Returns the constant ``c`` of ``L = c * ||Yhat - Y||_F^2``.

  Args:
    normalization: ``"sum"`` (c = 1/2) or ``"mean"`` (c = 1/(2m)).
    m: number of samples the loss sums over.

  Example:
    >>> loss_scale("mean", 4)
    0.125
  """
  if normalization == "sum":
    return 0.5
  if normalization == "mean":
    if m <= 0:
      raise ValueError(f"need m > 0 samples, got m={m}")
    return 0.5 / m
  raise ValueError(
      f"unknown normalization {normalization!r}; choose one of {NORMALIZATIONS}")


def squared_loss(yhat: jax.Array, y: jax.Array,
                 normalization: str = "mean", *,
                 total_m: int | None = None) -> jax.Array:
  """Squared loss ``c * ||yhat - y||_F^2`` over an (m, d_y) batch.

  With ``total_m`` the batch is a minibatch of B rows drawn from a set of
  ``total_m`` samples, and the result is the unbiased estimate
  ``c(total_m) * (total_m / B) * ||yhat - y||_F^2`` of the full loss.

  Args:
    yhat: predictions, shape (B, d_y).
    y: targets, shape (B, d_y).
    normalization: ``"sum"`` or ``"mean"``, see the module docstring.
    total_m: size of the full set when the batch is a minibatch.

  Returns:
    A scalar in the dtype of ``yhat``.

  Example:
    >>> import jax.numpy as jnp
    >>> float(squared_loss(jnp.ones((2, 1)), jnp.zeros((2, 1)), "sum"))
    1.0
    >>> float(squared_loss(jnp.ones((2, 1)), jnp.zeros((2, 1)), "mean",
    ...                    total_m=8))
    0.5
  """
  if yhat.shape != y.shape:
    raise ValueError(f"yhat shape {yhat.shape} != y shape {y.shape}")
  if total_m is None:
    scale = loss_scale(normalization, yhat.shape[0])
  else:
    scale = loss_scale(normalization, total_m) * total_m / yhat.shape[0]
  return scale * jnp.sum(jnp.square(yhat - y))


def softmax_cross_entropy(logits: jax.Array, y: jax.Array,
                          normalization: str = "mean") -> jax.Array:
  """Cross-entropy of softmax(logits) against one-hot (or soft) targets ``y``.

  ``sum`` gives ``-sum_i y_i . log softmax(logits_i)``; ``mean`` divides by m.
  """
  if logits.shape != y.shape:
    raise ValueError(f"logits shape {logits.shape} != y shape {y.shape}")
  total = -jnp.sum(y * jax.nn.log_softmax(logits, axis=-1))
  if normalization == "sum":
    return total
  if normalization == "mean":
    return total / logits.shape[0]
  raise ValueError(
      f"unknown normalization {normalization!r}; choose one of {NORMALIZATIONS}")
