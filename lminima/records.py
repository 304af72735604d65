"""The workdir format: file names, the row schema, reading and appending rows.

A sweep's workdir holds

* ``results.jsonl``: one JSON object per member, appended and flushed as the
  member finishes (the row schema is ``ROW_FIELDS``; a field a member does not
  have, e.g. the certificate of a diverged member, is absent);
* ``params/depth{d}_width{w}_seed{s}.npz``: the refined float64 parameters,
  keys ``layer_l/kernel`` and ``layer_l/bias`` (``models.params_to_arrays``);
* ``config.json``, ``summary.csv`` and figures.

JSON has no NaN or inf: non-finite floats are stored as null.

Example:
  >>> import os, tempfile
  >>> path = os.path.join(tempfile.mkdtemp(), RESULTS_FILE)
  >>> append_row(path, {"depth": 1, "loss": float("nan")})
  >>> read_rows(path)
  [{'depth': 1, 'loss': None}]
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import jax
import numpy as np

from lminima import data as data_lib
from lminima import models
from lminima.problem import Problem

RESULTS_FILE = "results.jsonl"
SUMMARY_FILE = "summary.csv"
FIGURE_FILE = "loss_vs_width.png"
PARAMS_DIR = "params"
CONFIG_FILE = "config.json"

VERDICTS = ("local_min", "saddle", "not_critical", "non_differentiable")
"""Certificate verdicts (docs/theory.md#certificates), in the order decided."""

ROW_FIELDS = {
    # identity and provenance
    "depth", "width", "seed", "dataset", "activation", "bias",
    "normalization", "optimizer", "n_params", "config_fingerprint",
    "versions", "wall_s",
    # end of training (float32)
    "loss", "grad_norm", "diverged", "steps", "train_wall_s",
    # refinement (float64)
    "loss_refined", "grad_norm_refined", "refine_iters", "refine_stop_reason",
    "refine_method", "param_norm_start", "param_norm_refined", "params_file",
    # certificate at the refined point (lminima.certify.Certificate)
    "verdict", "cert_method", "lambda_min", "lambda_max", "residual_min",
    "residual_max", "index", "n_flat", "grad_norm_rel", "grad_tol",
    "eig_tol", "kink_tol", "min_abs_preactivation",
    # theory at the refined point (lminima.theory.theory_record)
    "rank_D", "rank_D_frac", "rank_last_hidden", "identity_gap_full",
    "identity_gap_last", "euler_residual_max", "linear_opt", "rf_opt",
    "inclusion_residual_linear", "below_linear", "rank_tol",
    "full_D_skipped",
}
"""Every field a results.jsonl row may hold."""


class WorkdirError(ValueError):
  """The workdir is missing something, or holds another configuration."""


def params_path(workdir: str, depth: int, width: int, seed: int) -> str:
  """Where member (depth, width, seed) keeps its refined parameters."""
  return os.path.join(workdir, PARAMS_DIR,
                      f"depth{depth}_width{width}_seed{seed}.npz")


def json_float(value: Any) -> float | None:
  """``float(value)``, with NaN/inf as None (JSON has no spelling for them)."""
  value = float(value)
  return value if math.isfinite(value) else None


def _encode(value: Any) -> Any:
  if isinstance(value, (np.generic, jax.Array)):
    value = value.item() if np.ndim(value) == 0 else np.asarray(value).tolist()
  if isinstance(value, float):
    return json_float(value)
  if isinstance(value, dict):
    return {k: _encode(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_encode(v) for v in value]
  return value


def encode_row(row: dict[str, Any],
               schema: frozenset[str] | set[str] = ROW_FIELDS) -> str:
  """One JSON line for ``row`` (numpy/JAX scalars as numbers, NaN as null).

  Raises:
    ValueError: on a field outside ``schema`` (the sweep's ``ROW_FIELDS`` by
      default; other scripts pass their own).
  """
  unknown = set(row) - set(schema)
  if unknown:
    raise ValueError(f"unknown row fields {sorted(unknown)}; add them to the "
                     "row schema")
  return json.dumps(_encode(row), allow_nan=False)


def append_row(path: str, row: dict[str, Any],
               schema: frozenset[str] | set[str] = ROW_FIELDS) -> None:
  """Appends ``row`` to the JSONL file ``path`` and flushes it to disk."""
  line = encode_row(row, schema) + "\n"
  with open(path, "a") as f:
    f.write(line)
    f.flush()
    os.fsync(f.fileno())


def read_rows(path: str) -> list[dict[str, Any]]:
  """Rows of a results.jsonl file; a torn last line (killed run) is skipped."""
  if not os.path.exists(path):
    return []
  rows = []
  with open(path) as f:
    for line in f:
      line = line.strip()
      if not line:
        continue
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError:
        continue  # Only a write cut short by a kill can leave a partial line.
  return rows


def member_model(row: dict[str, Any], d_x: int, d_y: int) -> models.MLP:
  """The MLP of a row."""
  return models.MLP(d_x, (row["width"],) * row["depth"], d_y,
                    row["activation"], row["bias"])


def load_member(workdir: str, depth: int, width: int, seed: int
                ) -> tuple[Problem, dict[str, Any]]:
  """The refined member (depth, width, seed) of a finished sweep.

  Returns ``(problem, row)``: the member's ``Problem`` at its refined float64
  parameters from ``params/``, on the training data rebuilt from the row's
  provenance, and its row.
  """
  rows = [r for r in read_rows(os.path.join(workdir, RESULTS_FILE))
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
  data = data_lib.load(**row["dataset"])
  model = member_model(row, data.d_x, data.d_y)
  problem = Problem.for_module(model, variables, data.x, data.y,
                               normalization=row["normalization"])
  return problem, row
