"""Data sets as plain float64 arrays with provenance.

``load(name, **options)`` returns a ``Dataset`` whose ``provenance`` dict holds
everything needed to rebuild the identical arrays: ``load(**ds.provenance)``
gives the same ``x`` and ``y``.

Sources:
  * ``synthetic`` (default): Gaussian inputs, targets from a fixed random tanh
    teacher network plus optional Gaussian noise; deterministic from ``seed``.

Arrays are float64 numpy: training casts them to float32, certificates and
theory use them as they are.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class Dataset:
  """Inputs ``x`` (m, d_x), targets ``y`` (m, d_y) and their provenance."""
  x: np.ndarray
  y: np.ndarray
  provenance: dict[str, Any]

  @property
  def m(self) -> int:
    return self.x.shape[0]

  @property
  def d_x(self) -> int:
    return self.x.shape[1]

  @property
  def d_y(self) -> int:
    return self.y.shape[1]


def synthetic(m: int = 200, d_x: int = 10, d_y: int = 2, seed: int = 0,
              teacher_width: int = 16, noise: float = 0.1) -> Dataset:
  """Teacher-student regression data.

  x_i ~ N(0, I_{d_x}); y_i = tanh(x_i A / sqrt(d_x)) B / sqrt(teacher_width)
  + noise * eps_i with A (d_x x teacher_width), B (teacher_width x d_y) and eps
  standard normal, all drawn from ``numpy.random.default_rng(seed)``.

  Example:
    >>> ds = synthetic(m=5, d_x=3, d_y=1, seed=1)
    >>> ds.x.shape, ds.y.shape
    ((5, 3), (5, 1))
  """
  for name, value in (("m", m), ("d_x", d_x), ("d_y", d_y),
                      ("teacher_width", teacher_width)):
    if int(value) <= 0:
      raise ValueError(f"synthetic: {name} must be positive, got {value}")
  if noise < 0:
    raise ValueError(f"synthetic: noise must be >= 0, got {noise}")
  rng = np.random.default_rng(seed)
  a = rng.standard_normal((d_x, teacher_width))
  b = rng.standard_normal((teacher_width, d_y))
  x = rng.standard_normal((m, d_x))
  y = np.tanh(x @ a / np.sqrt(d_x)) @ b / np.sqrt(teacher_width)
  y = y + noise * rng.standard_normal((m, d_y))
  provenance = dict(name="synthetic", m=int(m), d_x=int(d_x), d_y=int(d_y),
                    seed=int(seed), teacher_width=int(teacher_width),
                    noise=float(noise))
  return Dataset(x=x, y=y, provenance=provenance)


_SOURCES = {"synthetic": synthetic}


def load(name: str = "synthetic", **options: Any) -> Dataset:
  """Loads the data set ``name`` with source-specific ``options``.

  ``load(**ds.provenance)`` rebuilds ``ds`` exactly.
  """
  try:
    source = _SOURCES[name]
  except KeyError:
    raise ValueError(f"unknown dataset {name!r}; choose one of "
                     f"{sorted(_SOURCES)}") from None
  return source(**options)
