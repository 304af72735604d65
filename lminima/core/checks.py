"""Input checks shared by every module: one message per kind of bad input."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np


def float64_matrix(a: Any, name: str) -> np.ndarray:
  """``a`` as a finite float64 matrix with at least one row.

  Raises:
    ValueError: naming ``name``, if ``a`` is not 2-D, has no rows, or holds
      NaN or inf.

  Example:
    >>> float64_matrix([[1, 2]], "x").dtype
    dtype('float64')
  """
  a = np.asarray(a, dtype=np.float64)
  if a.ndim != 2:
    raise ValueError(f"{name} must be a 2-D array (m, d), got shape {a.shape}")
  if a.shape[0] == 0:
    raise ValueError(f"{name} has no rows (m = 0)")
  if not np.all(np.isfinite(a)):
    raise ValueError(f"{name} contains NaN or inf")
  return a


def finite_tree(tree: Any, name: str) -> None:
  """Raises ValueError if ``tree`` has no array leaves or a NaN/inf entry.

  Example:
    >>> finite_tree({"w": np.ones(2)}, "params")
  """
  leaves = jax.tree_util.tree_leaves(tree)
  if not leaves:
    raise ValueError(f"{name} has no array leaves")
  for leaf in leaves:
    if not np.all(np.isfinite(np.asarray(leaf))):
      raise ValueError(f"{name} contains NaN or inf (did training diverge?)")


def float64_tree(tree: Any, name: str) -> None:
  """Raises ValueError unless every leaf of ``tree`` is float64.

  Example:
    >>> float64_tree([np.ones(2, np.float32)], "params")
    Traceback (most recent call last):
    ...
    ValueError: params must be float64 (exact computations), got a float32 leaf; build an lminima.Problem, which casts
  """
  for leaf in jax.tree_util.tree_leaves(tree):
    dtype = np.dtype(getattr(leaf, "dtype", np.asarray(leaf).dtype))
    if dtype != np.float64:
      raise ValueError(
          f"{name} must be float64 (exact computations), got a {dtype} leaf; "
          "build an lminima.Problem, which casts")


def targets(y: Any, m: int) -> np.ndarray:
  """Targets as a finite (m, d_y) float64 matrix; a length-m vector gets d_y = 1.

  Example:
    >>> targets([1.0, 2.0], 2).shape
    (2, 1)
  """
  y = np.asarray(y, dtype=np.float64)
  y = float64_matrix(y[:, None] if y.ndim == 1 else y, "y")
  if y.shape[0] != m:
    raise ValueError(f"y has {y.shape[0]} rows but the features have m={m}")
  return y


def integer(value: Any, name: str, minimum: int = 1) -> int:
  """``value`` as an int >= ``minimum``; rejects bools and floats."""
  if (isinstance(value, bool) or not isinstance(value, (int, np.integer))
      or value < minimum):
    raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
  return int(value)


def positive_float(value: Any, name: str) -> float:
  """``value`` as a finite float > 0."""
  value = float(value)
  if not np.isfinite(value) or value <= 0:
    raise ValueError(f"{name} must be finite and > 0, got {value}")
  return value
