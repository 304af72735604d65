"""Trains, certifies and explains a depth x width x seed grid of MLPs.

Writes results.jsonl (one row per member, as each finishes), the report
(report.md with the claims table, claims.json, summary.csv, five figures) and
params/*.npz into --workdir. Rerunning with the same
workdir skips the members already recorded (a killed run loses nothing but
the member in progress).

  python scripts/depth_width.py                       # synthetic default
  python scripts/depth_width.py --dataset=digits --depths=1,2 --widths=8,32
  python scripts/depth_width.py --config=lminima/configs/digits.py:smoke \
      --config.steps=500
  python scripts/depth_width.py --config=lminima/configs/mnist5k.py \
      --shard=0/4                                     # shard 0 of 4

A study is a config file (``lminima/configs/*.py``, ``--config=FILE[:ARG]``)
whose fields are overridable as ``--config.FIELD=value``; without --config
the defaults are ``lminima.sweep.get_config()``. The short flags below apply
on top of either when given. Every bad value ends in one line on stderr,
``error: ...``, naming the field.
"""

import sys

from absl import flags
from absl import logging
from ml_collections import config_flags

from lminima import data as data_lib
from lminima import cache
from lminima import experiment
from lminima import records
from lminima import sweep
from lminima import sweep_config

_DEFAULTS = sweep.get_config()

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "A study config file, FILE[:ARG] (e.g. "
    "lminima/configs/synthetic.py:smoke); override its fields with "
    "--config.FIELD=value. Default: lminima.sweep.get_config().",
    lock_config=True)
_DATASET = flags.DEFINE_string("dataset", _DEFAULTS.dataset,
                               "synthetic, digits, mnist5k, mnist, cifar10 or "
                               "svhn_cropped.")
_N = flags.DEFINE_integer("n", None, "Subset size for real data sets "
                          "(synthetic: number of samples m).")
_DATA_SEED = flags.DEFINE_integer("data_seed", 0, "Seed of the data subset.")
_PCA_DIM = flags.DEFINE_integer(
    "pca_dim", None, "Image data sets: keep the top pca_dim principal "
    "components of the inputs (data option pca_dim; small d_x for "
    "under-parameterised designs).")
_DEPTHS = flags.DEFINE_list("depths", list(map(str, _DEFAULTS.depths)),
                            "Numbers of hidden layers.")
_WIDTHS = flags.DEFINE_list("widths", list(map(str, _DEFAULTS.widths)),
                            "Hidden widths (every hidden layer).")
flags.DEFINE_integer("num_seeds", _DEFAULTS.num_seeds,
                     "Seeds per (depth, width).")
flags.DEFINE_string("activation", _DEFAULTS.activation,
                    "relu, leaky_relu, tanh, softplus, sigmoid or identity.")
flags.DEFINE_bool("bias", _DEFAULTS.bias, "Biases in every layer.")
flags.DEFINE_bool("skip", _DEFAULTS.skip, "A linear skip connection X S from "
                  "the input to the output (the structure where the subspace "
                  "bound (C) must hold).")
flags.DEFINE_string("normalization", _DEFAULTS.normalization,
                    "Loss normalization: sum or mean.")
flags.DEFINE_string("optimizer", _DEFAULTS.optimizer, "sgd, momentum or adam.")
flags.DEFINE_float("learning_rate", _DEFAULTS.learning_rate, "Learning rate.")
flags.DEFINE_integer("steps", _DEFAULTS.steps, "Training steps.")
flags.DEFINE_integer("batch_size", _DEFAULTS.batch_size,
                     "Minibatch size; 0 for full batch.")
flags.DEFINE_string("width_strategy", _DEFAULTS.width_strategy,
                    "auto, per_width or masked.")
flags.DEFINE_integer("train_workers", _DEFAULTS.train_workers,
                     "Training programs run side by side from host threads; "
                     "0: one per usable core on a CPU, 1 on an accelerator.")
flags.DEFINE_bool("certify", _DEFAULTS.certify,
                  "Refine and certify every member.")
flags.DEFINE_integer("refine_max_iters", _DEFAULTS.refine_max_iters,
                     "Cap on Newton-type refinement iterations per member.")
flags.DEFINE_bool("theory", _DEFAULTS.theory,
                  "Compute theory quantities and classical optima.")
flags.DEFINE_string("workdir", _DEFAULTS.workdir, "Where results go.")
flags.DEFINE_string("data_dir", "", "tensorflow-datasets data directory "
                    "(pre-downloaded data works offline).")
flags.DEFINE_string("shard", _DEFAULTS.shard,
                    "i/N: run shard i of N of the grid (members i, i + N, "
                    "... in (depth, width, seed) order), writing "
                    "results.shard-i-of-N.jsonl; shards may run at once.")
flags.DEFINE_bool("progress", _DEFAULTS.progress, "Show a progress bar.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False,
    "Multi-host job (a TPU pod slice, a multi-node GPU job): call "
    "jax.distributed.initialize() and run shard process_index/process_count "
    "of the grid on this host's devices (instead of --shard).")
_COMPILATION_CACHE = flags.DEFINE_bool(
    "compilation_cache", True,
    "Keep compiled XLA programs in the user cache (lminima.cache) so that a "
    "rerun skips compilation; --nocompilation_cache turns it off.")

# Short flags copied to the config field of the same name when given.
_PLAIN_FIELDS = ("num_seeds", "activation", "bias", "skip", "normalization",
                 "optimizer", "learning_rate", "steps", "batch_size",
                 "width_strategy", "train_workers", "certify",
                 "refine_max_iters", "theory", "workdir", "data_dir", "shard",
                 "progress")


def _int_list(name: str, values: list[str]) -> tuple[int, ...]:
  try:
    return tuple(int(v) for v in values)
  except ValueError:
    raise sweep.ConfigError(f"{name} must be a comma-separated list of "
                            f"integers, got {','.join(values)!r}") from None


def _given(name: str) -> bool:
  return flags.FLAGS[name].present > 0


def config_from_flags():
  """The --config file's config (default: ``sweep.get_config()``) with the
  short flags that were given applied."""
  config = _CONFIG.value
  if config is None:
    config = sweep.get_config()
  if _given("dataset") and _DATASET.value != config.dataset:
    config.dataset = _DATASET.value
    config.data_options = {"seed": _DATA_SEED.value}
  if _given("data_seed"):
    config.data_options["seed"] = _DATA_SEED.value
  if _N.value is not None:
    config.data_options["m" if config.dataset == "synthetic" else "n"] = (
        _N.value)
  if _PCA_DIM.value is not None:
    # The image studies list pca_dim; other sources do not (and refuse it
    # in validate_config, with a one-line error naming the option).
    with config.data_options.unlocked():
      config.data_options["pca_dim"] = _PCA_DIM.value
  if _given("depths"):
    config.depths = _int_list("depths", _DEPTHS.value)
  if _given("widths"):
    config.widths = _int_list("widths", _WIDTHS.value)
  for name in _PLAIN_FIELDS:
    if _given(name):
      setattr(config, name, flags.FLAGS[name].value)
  return config


def _one_line(error: BaseException) -> str:
  """The message of ``error`` on one line, without a nested traceback."""
  while error.args and isinstance(error.args[0], BaseException):
    error = error.args[0]
  text = (error.args[0] if isinstance(error, KeyError) and error.args
          and isinstance(error.args[0], str) else str(error))
  lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
  if not lines:
    return type(error).__name__
  if "Traceback (most recent call last)" in text:
    head = text.split("Traceback (most recent call last)")[0]
    return " ".join(f"{head.strip()} {lines[-1]}".split())
  if "Failed loading config file" in text:
    return f"--config: cannot load the config file: {lines[-1]}"
  if isinstance(error, sweep_config.UnknownFieldError):
    return f"--config: {' '.join(lines)}"  # names the field already
  if isinstance(error, KeyError):
    return f"--config: unknown config field {' '.join(lines)}"
  return " ".join(" ".join(lines).split())


def parse_flags(argv):
  """absl's flag parsing, with any parse error as one ``error:`` line (the
  config file's overrides are applied here: a misspelt field ends here)."""
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # pylint: disable=broad-except
    sys.exit(f"error: {_one_line(e)}")


def main(argv):
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # no INFO lines of the backends
  try:
    config = config_from_flags()
    if _DISTRIBUTED.value:
      if _given("shard") or config.shard != _DEFAULTS.shard:
        raise sweep.ConfigError("--distributed picks the shard from the "
                                "process index; do not also give --shard")
      config.shard = sweep.process_shard()
    sweep.validate_config(config)
  except (ValueError, TypeError, AttributeError, KeyError, OSError,
          RuntimeError) as e:
    # Bad flags or config values, or no cluster to join: one line.
    sys.exit(f"error: {_one_line(e)}")
  if _COMPILATION_CACHE.value:
    cache.enable_compilation_cache()
  try:
    sweep.run(config)
  except (sweep.ConfigError, data_lib.DataError, sweep.WorkdirError) as e:
    sys.exit(f"error: {_one_line(e)}")
  workdir = config.workdir
  results = records.results_path(workdir, sweep.parse_shard(config.shard))
  # The sweep has logged the report's path.
  print(f"results: {results}\n"
        f"summary: {workdir}/{records.SUMMARY_FILE}\n"
        f"figures: {workdir}/*.png\n"
        f"params:  {workdir}/{records.PARAMS_DIR}/")


if __name__ == "__main__":
  experiment.run_script(
      main, flags_parser=parse_flags,
      interrupted="rerun the same command to resume; finished members are "
      "kept")
