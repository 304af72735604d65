"""The sweep's configuration: defaults, validation, the grid and its shards.

One ``ml_collections.ConfigDict`` describes a depth x width x seed study
(``get_config``; the study files in ``lminima/configs`` build on it). Its
training defaults come from ``lminima.train.population.TrainConfig``, so there
is one source of defaults. ``validate_config`` checks every field once and
raises a ``ConfigError`` whose one-line message names the field;
``check_against_data`` adds what needs the data (batch size, a memory estimate).

Example:
  >>> config = get_config()
  >>> try:
  ...   config.num_seed = 2
  ... except AttributeError as e:
  ...   print(e)
  unknown config field 'num_seed'; did you mean 'num_seeds'?
  >>> [(m.depth, m.width, m.seed) for m in grid(config)][:2]
  [(1, 2, 0), (1, 2, 1)]
"""

from __future__ import annotations

import difflib
import hashlib
import json
from typing import Any

import jax
import ml_collections
import numpy as np

from lminima import data as data_lib
from lminima.core import losses
from lminima.core import models
from lminima.core import tolerances as tolerances_lib
from lminima.critical import refinement
from lminima.study import memory
from lminima.train import planner
from lminima.train import population

# Fields that may change between runs sharing a workdir: the grid can grow, and
# where results go, which shard a process runs, how loudly it reports and how
# much memory it may use do not change a number.
_NOT_IN_FINGERPRINT = ("depths", "widths", "num_seeds", "min_certified",
                       "max_members", "workdir", "progress", "shard",
                       "memory_limit_bytes")

# Fields replaced by the data's provenance when run() is given the data.
DATA_FIELDS = ("dataset", "data_options", "data_dir")

class ConfigError(ValueError):
  """A config value is unusable; the one-line message names the field."""


class UnknownFieldError(AttributeError, KeyError):
  """A field the study config does not have (a misspelt name), read, or
  set while the config is locked.

  One line naming the field and the closest valid names, where
  ``ml_collections`` lists every field and its value (857 characters for
  the default config). An ``AttributeError`` (``config.num_seed = 3``) and a
  ``KeyError`` (``config["num_seed"] = 3``), as ``ml_collections`` raises.
  """

  def __str__(self) -> str:
    return str(self.args[0]) if self.args else ""


class StudyConfig(ml_collections.ConfigDict):
  """The sweep's ``ConfigDict``: reading a field it does not have, or
  setting one while it is locked, raises an ``UnknownFieldError`` with a
  one-line message."""

  def __setitem__(self, key, value):
    if (self.is_locked and isinstance(key, str) and "." not in key
        and key not in self):
      raise UnknownFieldError(unknown_field_message(key, self.keys()))
    super().__setitem__(key, value)

  def __getitem__(self, key):
    try:
      return super().__getitem__(key)
    except KeyError:
      if not isinstance(key, str) or "." in key or key in self:
        raise
      raise UnknownFieldError(unknown_field_message(key, self.keys())
                              ) from None

  def __setattr__(self, attribute, value):
    try:
      super().__setattr__(attribute, value)
    except AttributeError as e:
      raise _unwrapped(e) from None

  def __getattr__(self, attribute):
    try:
      return super().__getattr__(attribute)
    except AttributeError as e:
      raise _unwrapped(e) from None


def _unwrapped(error: AttributeError) -> AttributeError:
  """The ``UnknownFieldError`` that ``ConfigDict`` wrapped into ``error``
  (its attribute access turns the ``KeyError`` of item access into an
  ``AttributeError``), else ``error``."""
  if error.args and isinstance(error.args[0], UnknownFieldError):
    return error.args[0]
  return error


def unknown_field_message(name: str, fields) -> str:
  """``unknown config field 'name'`` and the closest of ``fields`` (all of
  them when they are few)."""
  fields = sorted(map(str, fields))
  close = difflib.get_close_matches(name, fields, n=3)
  if close:
    hint = f"; did you mean {' or '.join(map(repr, close))}?"
  elif len(fields) <= 8:
    hint = f"; the fields are {', '.join(map(repr, fields))}"
  else:
    hint = "; no field has a close name (print the config to see them)"
  return f"unknown config field {name!r}{hint}"


def get_config() -> ml_collections.ConfigDict:
  """Default sweep: synthetic data, depths 1-3, widths 2-16, 3 seeds.

  The one source of defaults: training defaults come from
  ``lminima.train.population.TrainConfig``, and the study configs
  (``lminima/configs/*.py``) are built on this one. The returned config is
  locked: setting a field it does not have (``config.num_seed = 5``) raises
  an ``UnknownFieldError`` naming the closest fields instead of being
  silently ignored. ``data_options`` stays open (its keys
  are the data source's options, checked by ``validate_config``).

  Finishes in under a minute on a 2-core CPU, compilation included.
  """
  defaults = population.TrainConfig()
  config = StudyConfig()
  config.dataset = "synthetic"
  # Source options for lminima.data.load (e.g. n, classes, grayscale).
  config.data_options = ml_collections.ConfigDict(
      {"m": 100, "d_x": 5, "d_y": 2, "seed": 0}, type_safe=False)
  config.data_dir = ""
  config.depths = (1, 2, 3)
  config.widths = (2, 4, 8, 16)
  config.num_seeds = 3
  # Coverage: a cell with fewer than min_certified certified local minima
  # gets num_seeds more seeds a round until it has them or has tried
  # max_members members (``lminima.study.coverage``); 0: off.
  config.min_certified = 0
  config.max_members = 0
  for name in ("activation", "bias", "skip", "normalization", "optimizer",
               "learning_rate", "steps"):
    config[name] = getattr(defaults, name)
  config.batch_size = 0  # 0: full batch.
  config.width_strategy = "auto"
  # Training programs run side by side; 0: lminima.train.driver.default_workers
  # (the usable cores on a CPU, 1 on an accelerator).
  config.train_workers = 0
  config.certify = True
  config.refine_method = "auto"  # lm (dense) up to 5000 params, else newton_mr
  config.refine_max_iters = 200
  # Every tolerance of refinement, fate, certificate and claims
  # (lminima.core.tolerances.Tolerances): --config.tolerances.grad_rtol=...
  config.tolerances = tolerances_lib.DEFAULT.to_dict()
  # Continuation of members that did not converge (lminima.critical.outcomes);
  # 0: none.
  config.fate_iters = 200
  config.dense_max_params = 3000
  config.theory = True
  config.memory_budget_bytes = 2**30
  # Refuse grids whose estimated memory exceeds this (0: the accelerator's
  # memory, or the host's on CPU); see lminima.study.memory.
  config.memory_limit_bytes = 0
  config.workdir = "runs/depth_width"
  config.shard = "0/1"  # "i/N": this process runs shard i of N.
  config.progress = True
  config.lock()
  config.data_options.unlock()
  return config


def tolerances(config: ml_collections.ConfigDict
               ) -> tolerances_lib.Tolerances:
  """The config's ``Tolerances``.

  Raises:
    ConfigError: an unknown or bad tolerance, naming it.
  """
  given = dict(config.tolerances)
  known = {f for f in tolerances_lib.DEFAULT.to_dict()}
  for name in sorted(set(given) - known):
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ConfigError(f"unknown config field 'tolerances.{name}'{hint}")
  try:
    return tolerances_lib.Tolerances(**given)
  except (TypeError, ValueError) as e:
    raise ConfigError(f"config field 'tolerances': {e}") from None


def _field_error(name: str, message: str) -> ConfigError:
  return ConfigError(f"{name} {message}")


def _is_int(value: Any) -> bool:
  return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _int_tuple(config: ml_collections.ConfigDict, name: str,
               minimum: int) -> tuple[int, ...]:
  values = config[name]
  if _is_int(values):
    values = (values,)
  if isinstance(values, str) or not np.iterable(values):
    raise _field_error(name, f"must be a list of integers, got {values!r}")
  values = tuple(values)
  if not values:
    raise _field_error(name, "is empty; give at least one value")
  if not all(_is_int(v) and v >= minimum for v in values):
    raise _field_error(name, f"must be integers >= {minimum}, got {values}")
  if len(set(values)) != len(values):
    raise _field_error(name, f"repeats a value: {values}")
  return values


def parse_shard(shard: str) -> tuple[int, int]:
  """``"i/N"`` -> ``(i, N)`` with 0 <= i < N; raises ``ConfigError``."""
  try:
    index, count = (int(part) for part in str(shard).split("/"))
  except ValueError:
    raise _field_error("shard", f"must be i/N (shard i of N, 0 <= i < N), "
                       f"got {shard!r}") from None
  if not 0 <= index < count:
    raise _field_error("shard", f"must be i/N with 0 <= i < N, got {shard!r}")
  return index, count


def process_shard(initialize: Any = None) -> str:
  """The shard of this process in a multi-host job: ``"i/N"``.

  Calls ``jax.distributed.initialize()`` (on a TPU pod slice, or under Slurm
  and other launchers JAX recognizes, it finds the coordinator itself), then
  returns ``f"{jax.process_index()}/{jax.process_count()}"``. Each process
  trains and certifies its shard on its own local devices and writes its own
  results file; every number is computed in one process, so the rows equal a
  single-host run's.

  Args:
    initialize: the initializer (tests pass a stub); default
      ``jax.distributed.initialize``.
  """
  (initialize or jax.distributed.initialize)()
  return f"{jax.process_index()}/{jax.process_count()}"


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ``ConfigError`` (a ValueError) naming the field of a bad value.

  Checks every field once, before anything runs: unknown or missing fields
  (a misspelt ``num_seed``), types, ranges, names (optimizer, activation,
  ...), the data set name and its options. What needs the data (the batch
  size, the memory of the grid) is checked by ``check_against_data``.
  """
  known = set(get_config().keys())
  given = set(config.keys())
  for name in sorted(given - known):
    close = difflib.get_close_matches(name, sorted(known), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ConfigError(f"unknown config field {name!r}{hint}")
  for name in sorted(known - given):
    raise ConfigError(f"config has no field {name!r}; build configs on "
                      "lminima.study.sweep.get_config()")
  _int_tuple(config, "depths", 1)
  _int_tuple(config, "widths", 1)
  for name, minimum in (("num_seeds", 1), ("steps", 1), ("batch_size", 0),
                        ("refine_max_iters", 0), ("fate_iters", 0),
                        ("train_workers", 0), ("min_certified", 0),
                        ("max_members", 0),
                        ("dense_max_params", 1),
                        ("memory_budget_bytes", 1),
                        ("memory_limit_bytes", 0)):
    value = config[name]
    if not _is_int(value) or value < minimum:
      raise _field_error(name, f"must be an integer >= {minimum}, got "
                         f"{value!r}")
  try:
    population.check_learning_rate(config.learning_rate, "learning_rate")
  except ValueError as e:
    raise ConfigError(str(e)) from None
  tolerances(config)
  for name, choices in (("activation", tuple(models.ACTIVATIONS)),
                        ("normalization", losses.NORMALIZATIONS),
                        ("optimizer", population.OPTIMIZERS),
                        ("width_strategy", planner.WIDTH_STRATEGIES),
                        ("refine_method", refinement.METHODS),
                        ("dataset", data_lib.NAMES)):
    if config[name] not in choices:
      raise _field_error(name, f"must be one of {', '.join(choices)}; got "
                         f"{config[name]!r}")
  for name in ("bias", "skip", "certify", "theory", "progress"):
    if not isinstance(config[name], bool):
      raise _field_error(name, f"must be true or false, got {config[name]!r}")
  for name in ("data_dir", "workdir", "shard"):
    if not isinstance(config[name], str):
      raise _field_error(name, f"must be a string, got {config[name]!r}")
  if not config.workdir:
    raise _field_error("workdir", "is empty")
  if config.min_certified:
    if config.max_members < config.num_seeds:
      raise _field_error("max_members", f"must be >= num_seeds "
                         f"({config.num_seeds}) when min_certified is set, "
                         f"got {config.max_members}")
    if parse_shard(config.shard)[1] > 1:
      raise _field_error("min_certified", "needs the whole grid in one "
                         "process (its rounds depend on every member of a "
                         "cell); run without --shard")
  parse_shard(config.shard)
  options = config.data_options
  if not isinstance(options, (dict, ml_collections.ConfigDict)):
    raise _field_error("data_options", f"must be a dict of options of "
                       f"{config.dataset!r}, got {options!r}")
  try:
    data_lib.check_options(config.dataset, dict(options))
  except data_lib.DataError as e:
    raise _field_error("data_options", f"({e})") from None


def load_data(config: ml_collections.ConfigDict) -> data_lib.Dataset:
  options = dict(config.data_options)
  if config.data_dir:
    options["data_dir"] = config.data_dir
  return data_lib.load(config.dataset, **options)


def train_config(config: ml_collections.ConfigDict
                 ) -> population.TrainConfig:
  return population.TrainConfig(
      activation=config.activation, bias=config.bias, skip=config.skip,
      normalization=config.normalization, optimizer=config.optimizer,
      learning_rate=config.learning_rate, steps=config.steps,
      batch_size=config.batch_size or None)


def config_fingerprint(config: ml_collections.ConfigDict,
                       data: data_lib.Dataset | None = None) -> str:
  """Hash of everything that changes a member's numbers.

  With ``data`` (data passed to ``run`` rather than loaded from the config),
  the data's provenance replaces the config's data fields.
  """
  fields = {k: v for k, v in config.to_dict().items()
            if k not in _NOT_IN_FINGERPRINT}
  for name in ("skip", "train_workers"):
    if not fields.get(name):
      # Absent before the field existed: a sweep at its default keeps its
      # fingerprint, so its existing workdirs stay resumable.
      fields.pop(name, None)
  if data is not None:
    for name in DATA_FIELDS:
      fields.pop(name)
    fields["data"] = data.provenance
  text = json.dumps(fields, sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def grid(config: ml_collections.ConfigDict) -> list[population.Member]:
  """Every member of the grid, in (depth, width, seed) order."""
  return [population.Member(depth=d, width=w, seed=s)
          for d in config.depths for w in config.widths
          for s in range(config.num_seeds)]


def shard_members(config: ml_collections.ConfigDict
                  ) -> list[population.Member]:
  """The members of this process's shard: grid members k = i, i + N, ..."""
  index, count = parse_shard(config.shard)
  return grid(config)[index::count]


def check_against_data(config: ml_collections.ConfigDict,
                       data: data_lib.Dataset) -> None:
  """What ``validate_config`` cannot check without the data; ``ConfigError``.

  The batch size must not exceed the samples, and the grid must fit the
  memory limit (``lminima.study.memory``).
  """
  if config.batch_size > data.m:
    raise _field_error("batch_size", f"{config.batch_size} exceeds the "
                       f"{data.m} samples of the data; use batch_size <= "
                       f"{data.m} (0 = full batch)")
  excess = memory.excess(config, data)
  if excess:
    raise _field_error("widths", excess)
