"""Every experiment as ``ml_collections`` config files.

Each module here has ``get_config(arg=None)``: the experiment with no
argument, a ``smoke`` variant (``arg="smoke"``) that runs in seconds, and the
named variants of its ``VARIANTS`` dict (``variants(name)`` lists them).

* The depth-width studies, one per data set (``STUDIES``: ``synthetic``,
  ``digits``, ``mnist5k``, ``mnist``, ``cifar10``, ``svhn``), are built on
  the one source of defaults, ``lminima.study.sweep.get_config`` (training
  defaults from ``lminima.train.population.TrainConfig``), and set only
  what differs.
* The related experiments (``EXPERIMENTS``: ``eliminate``, ``sharpness``)
  are built on ``lminima.related.eliminate.study.get_config`` and
  ``lminima.related.sharpness.config.get_config``.

Each experiment's ``run(config, workdir)`` runs it, and its script
(``scripts/depth_width.py``, ``scripts/eliminate.py``,
``scripts/sharpness.py``) takes ``--config=FILE[:ARG]``. Select one with

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

from lminima.study import sweep

STUDIES = ("synthetic", "digits", "mnist5k", "mnist", "cifar10", "svhn")
"""The depth-width studies' config modules (``scripts/depth_width.py``)."""

EXPERIMENTS = ("eliminate", "sharpness")
"""The related experiments' config modules (``scripts/eliminate.py``,
``scripts/sharpness.py``)."""

def study(name: str, arg: str | None, *, dataset: str,
          data_options: dict[str, Any], full: dict[str, Any],
          smoke: dict[str, Any],
          variants: dict[str, dict[str, Any]] | None = None
          ) -> ml_collections.ConfigDict:
  """``sweep.get_config()`` with a study's fields set.

  Args:
    name: the study's name; the workdir is ``runs/<name>`` (``runs/<name>_
      <variant>`` for a variant).
    arg: the variant: None or "" for the study, "smoke" for the smoke run, or
      a key of ``variants``.
    dataset, data_options: the data source and its options.
    full: fields of the study (beyond the defaults).
    smoke: fields of the smoke variant, applied on top of ``full``;
      ``data_options`` here update the study's.
    variants: further named variants, each applied like ``smoke``.

  Raises:
    ValueError: for an unknown variant.
  """
  variant = arg or ""
  chosen = variant_fields(name, variant, {"smoke": smoke, **(variants or {})})
  config = sweep.get_config()
  config.dataset = dataset
  options = dict(data_options)
  fields = dict(full)
  options.update(chosen.get("data_options", {}))
  fields.update({k: v for k, v in chosen.items() if k != "data_options"})
  config.data_options = options
  for key, value in fields.items():
    setattr(config, key, value)  # the config is locked: typos raise
  config.workdir = f"runs/{name}" + (f"_{variant}" if variant else "")
  config.progress = variant != "smoke"
  return config


def variant_fields(name: str, arg: str | None,
                   variants: dict[str, dict[str, Any]]) -> dict[str, Any]:
  """The fields of variant ``arg`` of config file ``name`` (None or "": the
  file's own config, no fields).

  Raises:
    ValueError: for an unknown variant, naming the ones there are.
  """
  named = {"": {}, **variants}
  if (arg or "") not in named:
    raise ValueError(
        f"config {name}: unknown variant {arg!r}; choose {name}.py or "
        + ", ".join(f"{name}.py:{v}" for v in named if v))
  return named[arg or ""]


def with_variant(config: ml_collections.ConfigDict, name: str,
                 arg: str | None, variants: dict[str, dict[str, Any]]
                 ) -> ml_collections.ConfigDict:
  """``config`` with the fields of variant ``arg`` of config file ``name``
  set (``variant_fields``); returns it."""
  for key, value in variant_fields(name, arg, variants).items():
    setattr(config, key, value)
  return config


def from_flags(name: str, config: ml_collections.ConfigDict | None,
               smoke: bool) -> ml_collections.ConfigDict:
  """A script's config: the ``--config`` file's (``config``; None: the file
  ``name``'s own), with the file's smoke variant on top when ``smoke``."""
  config = load(name) if config is None else config
  if smoke:
    module = importlib.import_module(f"lminima.configs.{_check(name)}")
    with_variant(config, name, "smoke", module.VARIANTS)
  return config


def variants(name: str) -> tuple[str, ...]:
  """The variants of study ``name`` beyond the study itself: "smoke" and the
  keys of the config module's ``VARIANTS`` dict, if it has one."""
  module = importlib.import_module(f"lminima.configs.{_check(name)}")
  return tuple(dict.fromkeys(("smoke", *getattr(module, "VARIANTS", {}))))


def image_study(name: str, arg: str | None, *, n: int,
                depths: tuple[int, ...], widths: tuple[int, ...],
                num_seeds: int = 3, pca_dim: int | None = None,
                dataset: str | None = None, grayscale: bool | None = None,
                smoke_n: int = 20, smoke_width: int = 1, smoke_steps: int = 50,
                smoke_refine_max_iters: int = 3,
                variants: dict[str, dict[str, Any]] | None = None
                ) -> ml_collections.ConfigDict:
  """``study`` of a 10-class image data set and its smoke variant.

  The study: ``n`` images of the classes 0-9 (data seed 0), the ``depths`` x
  ``widths`` x ``num_seeds`` grid, inputs reduced to their top ``pca_dim``
  principal components when given. The smoke variant: ``smoke_n`` images of
  the classes 0 and 1 (at most ``smoke_n // 2`` components), one seed of one
  depth-1 net of width ``smoke_width``, ``smoke_steps`` training steps and
  ``smoke_refine_max_iters`` refinement iterations.

  Args:
    name, arg, variants: as for ``study``.
    n, depths, widths, num_seeds, pca_dim: the study's subset size, grid and
      input dimension.
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
  data_options = {"n": n, "seed": 0, "classes": tuple(range(10)),
                  "pca_dim": _optional_int(pca_dim)}
  smoke_options = {"n": smoke_n, "classes": (0, 1)}
  if grayscale is not None:
    data_options["grayscale"] = grayscale
  if pca_dim is not None:
    smoke_options["pca_dim"] = min(pca_dim, smoke_n // 2)
  variants = {name: {**fields, "data_options": {
      k: _optional_int(v) if k == "pca_dim" else v
      for k, v in fields.get("data_options", {}).items()}}
              for name, fields in (variants or {}).items()}
  return study(
      name, arg, dataset=dataset or name, data_options=data_options,
      full={"depths": depths, "widths": widths, "num_seeds": num_seeds},
      smoke={"data_options": smoke_options,
             "depths": (1,), "widths": (smoke_width,), "num_seeds": 1,
             "steps": smoke_steps,
             "refine_max_iters": smoke_refine_max_iters},
      variants=variants)


def _optional_int(value: int | None) -> Any:
  """An int option that may be None, still settable from the command line
  (``--config.data_options.pca_dim=8``: ml_collections cannot override a
  plain None)."""
  return ml_collections.config_dict.placeholder(int) if value is None \
      else value


def _check(name: str) -> str:
  if name not in STUDIES + EXPERIMENTS:
    raise ValueError(f"unknown study or experiment {name!r}; choose one of "
                     f"{STUDIES + EXPERIMENTS}")
  return name


def load(name: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """``lminima.configs.<name>.get_config(arg)``."""
  module = importlib.import_module(f"lminima.configs.{_check(name)}")
  return module.get_config(arg)
