"""The sharpness experiment's settings: defaults, validation, file names.

The small-batch vs large-batch experiment (``lminima.related.sharpness.study``,
``scripts/sharpness.py``) is described by one ``ml_collections.ConfigDict``:
``get_config`` gives the defaults (``lminima/configs/sharpness.py`` its
variants, such as a tiny ``"smoke"`` run),
``validate_config`` raises a one-line ValueError for an unusable one, and
``batch_sizes`` gives the two batch sizes it compares. ``ROW_FIELDS`` is the
schema of a row of its ``results.jsonl``.

Example:
  >>> from lminima import configs
  >>> config = configs.load("sharpness", "smoke")
  >>> validate_config(config)
  >>> batch_sizes(config)
  (16, 20)
  >>> config.eps = (0.0,)
  >>> validate_config(config)
  Traceback (most recent call last):
  ...
  ValueError: --eps must be finite positive numbers, got (0.0,)
"""

from __future__ import annotations

import math

import ml_collections

from lminima.core import models
from lminima.related.sharpness import measures as sharpness
from lminima.study import records
from lminima.train import population

RESULTS_FILE = records.RESULTS_FILE
REPORT_FILE = "report.md"
FIGURE_FILE = "interpolation.png"
INTERPOLATION_FILE = "interpolation.json"
DATASETS = ("mnist5k", "digits")
"""Offline image sources the experiment accepts."""

ROW_FIELDS = frozenset({
    # identity and provenance
    "batch_size", "batch_role", "seed", "dataset", "depth", "width",
    "activation", "bias", "normalization", "optimizer", "epochs", "n_params",
    "versions", "config",
    # end of training (float32)
    "loss", "diverged", "steps", "train_wall_s",
    # at the trained point, float64
    "train_loss", "grad_norm", "train_accuracy", "test_loss", "test_accuracy",
    "sharpness", "lambda_max", "residual_max", "lambda_method", "trace",
    "trace_method", "analysis_wall_s",
})
"""Every field a row of the experiment's results.jsonl may hold."""


def get_config() -> ml_collections.ConfigDict:
  """The experiment's default settings (the config file
  ``lminima/configs/sharpness.py`` adds its variants).

  The default trains a one-hidden-layer relu MLP (width 32) with Adam on 2,000
  offline MNIST images, 8 seeds at batch 64 and 8 at 10% of the set, for
  the same number of epochs; 1,000 held-out images test it.
  """
  config = ml_collections.ConfigDict()
  config.dataset = "mnist5k"
  config.n_train = 2000
  config.n_test = 1000
  config.data_seed = 0
  config.depth = 1
  config.width = 32
  config.activation = "relu"
  config.bias = True
  config.normalization = "mean"
  config.optimizer = "adam"
  config.learning_rate = 1e-3
  config.epochs = 100
  config.small_batch = 64
  config.large_batch_fraction = 0.1
  config.num_seeds = 8
  config.eps = (1e-3, 5e-4)
  config.subspace_dim = 100  # 0: full space only
  config.subspace_seed = 0
  config.sharpness_method = "lbfgsb"
  config.sharpness_iters = 10
  config.lanczos_iters = 80
  config.trace_matvecs = 60
  config.interp_points = 31
  config.workdir = "runs/sharpness"
  config.progress = True
  return config


def batch_sizes(config: ml_collections.ConfigDict) -> tuple[int, int]:
  """(small, large): ``small_batch`` and ``large_batch_fraction * n_train``."""
  return (int(config.small_batch),
          max(1, int(round(config.large_batch_fraction * config.n_train))))


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError with a one-line message for an unusable config."""
  def positive_int(name, minimum=1):
    value = config[name]
    if isinstance(value, bool) or int(value) != value or value < minimum:
      raise ValueError(f"--{name} must be an integer >= {minimum}, got "
                       f"{value!r}")
  if config.dataset not in DATASETS:
    raise ValueError(f"--dataset must be one of {DATASETS}, got "
                     f"{config.dataset!r}")
  for name in ("n_train", "n_test", "depth", "width", "epochs",
               "small_batch", "num_seeds", "sharpness_iters",
               "lanczos_iters", "interp_points"):
    positive_int(name, minimum=2 if name in ("n_train", "interp_points")
                 else 1)
  positive_int("data_seed", 0)
  positive_int("subspace_dim", 0)
  positive_int("subspace_seed", 0)
  positive_int("trace_matvecs", 3)
  if not 0 < config.large_batch_fraction <= 1:
    raise ValueError(f"--large_batch_fraction must be in (0, 1], got "
                     f"{config.large_batch_fraction}")
  small = batch_sizes(config)[0]
  if small > config.n_train:
    raise ValueError(f"--small_batch={small} exceeds --n_train="
                     f"{config.n_train}")
  if not (isinstance(config.learning_rate, (int, float))
          and math.isfinite(config.learning_rate)
          and config.learning_rate > 0):
    raise ValueError(f"--learning_rate must be a finite positive number, "
                     f"got {config.learning_rate!r}")
  if not config.eps:
    raise ValueError("--eps is empty; give at least one value")
  for eps in config.eps:
    try:
      sharpness.check_eps(eps)
    except ValueError:
      raise ValueError(f"--eps must be finite positive numbers, got "
                       f"{tuple(config.eps)}") from None
  if config.sharpness_method not in sharpness.METHODS:
    raise ValueError(f"--sharpness_method must be one of "
                     f"{sharpness.METHODS}, got {config.sharpness_method!r}")
  models.get_activation(config.activation)
  population.TrainConfig(activation=config.activation,
                         optimizer=config.optimizer,
                         normalization=config.normalization)
  if not config.workdir:
    raise ValueError("--workdir is empty")
