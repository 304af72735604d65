"""The data container every source returns, and the error they raise."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np


class DataError(ValueError):
  """A data set cannot be built as asked; the message names the fix."""


@dataclasses.dataclass(frozen=True)
class Dataset:
  """Inputs ``x`` (m, d_x), targets ``y`` (m, d_y) and their provenance.

  Unflattened images (``flatten=False``) keep ``x`` as (m, H, W, C); ``d_x`` is
  then the number of features per sample, H * W * C.
  """
  x: np.ndarray
  y: np.ndarray
  provenance: dict[str, Any]

  @property
  def m(self) -> int:
    return self.x.shape[0]

  @property
  def d_x(self) -> int:
    return int(np.prod(self.x.shape[1:]))

  @property
  def d_y(self) -> int:
    return self.y.shape[1]
