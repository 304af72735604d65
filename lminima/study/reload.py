"""A recorded member back as a ``Problem``: its model, data and refined point.

``load_member(workdir, depth, width, seed)`` reads a finished sweep's row and
saved float64 parameters (``lminima.study.records``) and rebuilds the member's
``Problem`` on its training data, for further analysis (``scripts/spectrum.py``,
``scripts/check_minima.py``).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from lminima import data as data_lib
from lminima.core import models
from lminima.core.problem import Problem
from lminima.study.records import WorkdirError, read_workdir_rows


def member_model(row: dict[str, Any], d_x: int, d_y: int) -> models.MLP:
  """The MLP of a row (rows written before the skip existed have none)."""
  return models.MLP(d_x, (row["width"],) * row["depth"], d_y,
                    row["activation"], row["bias"],
                    skip=bool(row.get("skip", False)))


def load_member(workdir: str, depth: int, width: int, seed: int,
                data: data_lib.Dataset | None = None
                ) -> tuple[Problem, dict[str, Any]]:
  """The refined member (depth, width, seed) of a finished sweep.

  Returns ``(problem, row)``: the member's ``Problem`` at its refined float64
  parameters from ``params/``, on the training data, and its row. The data
  are rebuilt from the row's provenance, or are ``data`` when given: a sweep
  on a user's arrays (``data.from_arrays``) needs them passed back, and they
  must be the same arrays (``data.check_provenance``).

  Raises:
    WorkdirError: no such member, or it has no refined parameters.
    data.DataError: ``data`` are not the member's data, or the member's data
      are a user's arrays and ``data`` is not given.
  """
  rows = [r for r in read_workdir_rows(workdir)
          if (r["depth"], r["width"], r["seed"]) == (depth, width, seed)]
  if not rows:
    raise WorkdirError(f"no member depth={depth} width={width} seed={seed} in "
                       f"{workdir}; run scripts/depth_width.py there first")
  row = rows[-1]
  if not row.get("params_file"):
    raise WorkdirError(f"member depth={depth} width={width} seed={seed} has no "
                       f"refined parameters (diverged, or run with "
                       f"--nocertify)")
  with np.load(os.path.join(workdir, row["params_file"])) as arrays:
    variables = models.params_from_arrays(arrays)
  if data is None:
    data = data_lib.load(**row["dataset"])
  else:
    data_lib.check_provenance(data, row["dataset"])
  model = member_model(row, data.d_x, data.d_y)
  problem = Problem.for_module(model, variables, data.x, data.y,
                               normalization=row["normalization"])
  return problem, row
