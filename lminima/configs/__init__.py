"""Studies as ``ml_collections`` config files, one per data set.

Each module here (``synthetic``, ``digits``, ``mnist5k``, ``mnist``,
``cifar10``, ``svhn``) has ``get_config(arg=None)``: the study with no
argument, and a ``smoke`` variant (``arg="smoke"``) that runs in seconds.
They are built on the one source of defaults, ``lminima.sweep.get_config``
(training defaults from ``lminima.population.TrainConfig``), and set only
what differs. Select one with

  python scripts/depth_width.py --config=lminima/configs/digits.py:smoke \\
      --config.steps=500

any field overridable as ``--config.FIELD=value``
(``ml_collections.config_flags``), or in Python with
``lminima.configs.load("digits", "smoke")``.
"""

from __future__ import annotations

import importlib
from typing import Any

import ml_collections

from lminima import sweep

STUDIES = ("synthetic", "digits", "mnist5k", "mnist", "cifar10", "svhn")
"""The config modules of this package."""

VARIANTS = ("", "smoke")
"""The arguments every ``get_config`` accepts ("" and None: the study)."""


def study(name: str, arg: str | None, *, dataset: str,
          data_options: dict[str, Any], full: dict[str, Any],
          smoke: dict[str, Any]) -> ml_collections.ConfigDict:
  """``sweep.get_config()`` with a study's fields set.

  Args:
    name: the study's name; the workdir is ``runs/<name>`` (``runs/<name>_
      smoke`` for the smoke variant).
    arg: the variant: None or "" for the study, "smoke" for the smoke run.
    dataset, data_options: the data source and its options.
    full: fields of the study (beyond the defaults).
    smoke: fields of the smoke variant, applied on top of ``full``;
      ``data_options`` here update the study's.

  Raises:
    ValueError: for an unknown variant.
  """
  variant = arg or ""
  if variant not in VARIANTS:
    raise ValueError(f"config {name}: unknown variant {arg!r}; choose "
                     f"{name}.py (the study) or {name}.py:smoke")
  config = sweep.get_config()
  config.dataset = dataset
  options = dict(data_options)
  fields = dict(full)
  if variant == "smoke":
    options.update(smoke.get("data_options", {}))
    fields.update({k: v for k, v in smoke.items() if k != "data_options"})
  config.data_options = options
  for key, value in fields.items():
    setattr(config, key, value)  # the config is locked: typos raise
  config.workdir = f"runs/{name}" + ("_smoke" if variant == "smoke" else "")
  config.progress = variant != "smoke"
  return config


def image_study(name: str, arg: str | None, *, n: int,
                depths: tuple[int, ...], widths: tuple[int, ...],
                dataset: str | None = None, grayscale: bool | None = None,
                smoke_n: int = 20, smoke_width: int = 1, smoke_steps: int = 50,
                smoke_refine_max_iters: int = 3) -> ml_collections.ConfigDict:
  """``study`` of a 10-class image data set and its smoke variant.

  The study: ``n`` images of the classes 0-9 (data seed 0), the ``depths`` x
  ``widths`` grid. The smoke variant: ``smoke_n`` images of the classes 0 and
  1, one seed of one depth-1 net of width ``smoke_width``, ``smoke_steps``
  training steps and ``smoke_refine_max_iters`` refinement iterations.

  Args:
    name, arg: as for ``study``.
    n, depths, widths: the study's subset size and grid.
    dataset: the data source (default: ``name``).
    grayscale: the ``grayscale`` data option, where the data set has one
      (None: not set).
    smoke_n, smoke_width, smoke_steps, smoke_refine_max_iters: the smoke
      variant's sizes.

  Example:
    >>> config = image_study("digits", "smoke", n=500, depths=(1, 2),
    ...                      widths=(2, 4), smoke_n=40)
    >>> config.data_options.n, config.data_options.classes, config.widths
    (40, (0, 1), (1,))
  """
  data_options = {"n": n, "seed": 0, "classes": tuple(range(10))}
  if grayscale is not None:
    data_options["grayscale"] = grayscale
  return study(
      name, arg, dataset=dataset or name, data_options=data_options,
      full={"depths": depths, "widths": widths},
      smoke={"data_options": {"n": smoke_n, "classes": (0, 1)},
             "depths": (1,), "widths": (smoke_width,), "num_seeds": 1,
             "steps": smoke_steps,
             "refine_max_iters": smoke_refine_max_iters})


def load(name: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """``lminima.configs.<name>.get_config(arg)``."""
  if name not in STUDIES:
    raise ValueError(f"unknown study {name!r}; choose one of {STUDIES}")
  module = importlib.import_module(f"lminima.configs.{name}")
  return module.get_config(arg)
