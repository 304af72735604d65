"""The memory a study's grid needs, estimated before anything runs.

``memory_estimate`` gives, per depth, the peak bytes of training its
population (float32) and of analysing one member (float64);
``memory_limit`` what the machine allows (``memory_limit_bytes``, else the
accelerator's or the host's memory); ``excess`` says when the grid does not
fit (``lminima.study.config.check_against_data`` refuses it then).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import ml_collections

from lminima import data as data_lib
from lminima.core import models
from lminima.train import planner

# Bytes per trained parameter: float32 parameters, gradient, two Adam moments,
# the frozen copy of divergence and slack.
_TRAIN_BYTES_PER_PARAM = 4 * 6
# Bytes per activation of one sample in one hidden unit: float32
# pre-activation, activation and their cotangents.
_TRAIN_BYTES_PER_UNIT = 4 * 4
# float64 vectors of n_params that refinement and the certificate keep alive.
_ANALYSIS_VECTORS = 40


def _n_params(d_x: int, d_y: int, depth: int, width: int,
              skip: bool = False) -> int:
  """Parameters of the MLP with biases (an upper bound without them)."""
  return models.MLP(d_x, (width,) * depth, d_y, skip=skip).n_params


def memory_estimate(config: ml_collections.ConfigDict, data: data_lib.Dataset
                    ) -> list[dict[str, Any]]:
  """Estimated peak bytes per depth: training its population, analysing one.

  Training (float32): the whole population's state counts as alive at once
  (a bound: only ``train_workers`` programs run at a time); per member
  ``_TRAIN_BYTES_PER_PARAM`` bytes per parameter (at the widest width for
  ``width_strategy="masked"``) plus ``_TRAIN_BYTES_PER_UNIT`` bytes per
  sample and hidden unit of a batch, plus the host copy of a depth's initial
  state when its members start together (``planner.start_groups``; at most
  ``planner.START_TOGETHER_BYTES``). Analysis (float64, one member at a
  time): ``_ANALYSIS_VECTORS`` parameter vectors plus the dense objects
  (Hessian, D(theta)), each capped by ``memory_budget_bytes``.

  Returns one dict per depth: depth, widest width, n_params of the widest
  member, train_bytes, analysis_bytes.
  """
  batch = config.batch_size or data.m
  estimates = []
  for depth in config.depths:
    widest = max(config.widths)
    train_bytes = 0
    for width in config.widths:
      shaped = widest if config.width_strategy == "masked" else width
      per_member = (_n_params(data.d_x, data.d_y, depth, shaped, config.skip)
                    * _TRAIN_BYTES_PER_PARAM
                    + batch * shaped * depth * _TRAIN_BYTES_PER_UNIT)
      train_bytes += per_member * config.num_seeds
    n_params = _n_params(data.d_x, data.d_y, depth, widest, config.skip)
    train_bytes += planner.shared_start_bytes(
        len(config.widths) * config.num_seeds, n_params)
    dense = min(config.memory_budget_bytes,
                8 * n_params * max(n_params, data.m * data.d_y))
    analysis_bytes = (8 * n_params * _ANALYSIS_VECTORS
                      + (2 * dense if config.certify or config.theory else 0))
    estimates.append(dict(depth=depth, width=widest, n_params=n_params,
                          train_bytes=train_bytes,
                          analysis_bytes=analysis_bytes))
  return estimates


def memory_limit(config: ml_collections.ConfigDict) -> tuple[int, str]:
  """``(bytes, where the number comes from)`` that a grid may use."""
  if config.memory_limit_bytes:
    return int(config.memory_limit_bytes), "memory_limit_bytes"
  try:
    stats = jax.local_devices()[0].memory_stats() or {}
  except Exception:  # pylint: disable=broad-except  # backends differ
    stats = {}
  if stats.get("bytes_limit"):
    return (int(stats["bytes_limit"]),
            f"{jax.local_devices()[0].platform} memory")
  try:
    host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  except (ValueError, OSError, AttributeError):
    return 2**63 - 1, "unknown"
  return int(host), "host memory"


def _gb(n: float) -> str:
  return f"{n / 1e9:.3g} GB"


def excess(config: ml_collections.ConfigDict, data: data_lib.Dataset
           ) -> str | None:
  """Why the grid does not fit ``memory_limit`` (the first depth and phase
  over it), or None."""
  limit, source = memory_limit(config)
  for estimate in memory_estimate(config, data):
    for key, what in (("train_bytes", f"to train its "
                       f"{len(config.widths) * config.num_seeds} members "
                       "(float32)"),
                      ("analysis_bytes", "to refine and certify a member "
                       "(float64)")):
      if estimate[key] > limit:
        return (f"too large: depth {estimate['depth']} x width "
                f"{estimate['width']} ({estimate['n_params']:.3g} parameters "
                f"per member) needs about {_gb(estimate[key])} {what}, above "
                f"the {_gb(limit)} limit ({source}; memory_limit_bytes "
                "overrides); use smaller widths or depths")
  return None
