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
the defaults are ``lminima.study.sweep.get_config()``. The short flags below
apply on top of either when given. Every bad value ends in one line on stderr,
``error: ...``, naming the field.
"""

from absl import flags
from absl import logging
from ml_collections import config_flags

from lminima import data as data_lib
from lminima.study import cli
from lminima.study import records
from lminima.study import sweep
from lminima.train import cache

_DEFAULTS = sweep.get_config()

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "A study config file, FILE[:ARG] (e.g. "
    "lminima/configs/synthetic.py:smoke); override its fields with "
    "--config.FIELD=value. Default: lminima.study.sweep.get_config().",
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
# Short flags for config fields of the same name, applied when given.
_FIELDS = cli.define_field_flags(_DEFAULTS, {
    "num_seeds": "Seeds per (depth, width).",
    "activation": "relu, leaky_relu, tanh, softplus, sigmoid or identity.",
    "bias": "Biases in every layer.",
    "skip": "A linear skip connection X S from the input to the output (the "
            "structure where the subspace bound (C) must hold).",
    "normalization": "Loss normalization: sum or mean.",
    "optimizer": "sgd, momentum or adam.",
    "learning_rate": "Learning rate.",
    "steps": "Training steps.",
    "batch_size": "Minibatch size; 0 for full batch.",
    "width_strategy": "auto, per_width or masked.",
    "train_workers": "Training programs run side by side from host threads; "
                     "0: one per usable core on a CPU, 1 on an accelerator.",
    "certify": "Refine and certify every member.",
    "refine_max_iters": "Cap on Newton-type refinement iterations per "
                        "member.",
    "theory": "Compute theory quantities and classical optima.",
    "workdir": "Where results go.",
    "data_dir": "tensorflow-datasets data directory (pre-downloaded data "
                "works offline).",
    "shard": "i/N: run shard i of N of the grid (members i, i + N, ... in "
             "(depth, width, seed) order), writing results.shard-i-of-N.jsonl; "
             "shards may run at once.",
    "progress": "Show a progress bar."})
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False,
    "Multi-host job (a TPU pod slice, a multi-node GPU job): call "
    "jax.distributed.initialize() and run shard process_index/process_count "
    "of the grid on this host's devices (instead of --shard).")
_COMPILATION_CACHE = flags.DEFINE_bool(
    "compilation_cache", True,
    "Keep compiled XLA programs in the user cache (lminima.train.cache) so "
    "that a rerun skips compilation; --nocompilation_cache turns it off.")


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
    config.depths = cli.number_list("depths", _DEPTHS.value)
  if _given("widths"):
    config.widths = cli.number_list("widths", _WIDTHS.value)
  cli.set_given(config, _FIELDS)
  if _DISTRIBUTED.value:
    if _given("shard") or config.shard != _DEFAULTS.shard:
      raise sweep.ConfigError("--distributed picks the shard from the "
                              "process index; do not also give --shard")
    config.shard = sweep.process_shard()
  return config


def main(argv):
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # no INFO lines of the backends
  if _COMPILATION_CACHE.value:
    cache.enable_compilation_cache()
  cli.main(
      argv, config_from_flags=config_from_flags,
      validate_config=sweep.validate_config, run=sweep.run,
      outputs=lambda config: {
          # The sweep has logged the report's path.
          "results": records.results_path(config.workdir,
                                          sweep.parse_shard(config.shard)),
          "summary": f"{config.workdir}/{records.SUMMARY_FILE}",
          "figures": f"{config.workdir}/*.png",
          "params": f"{config.workdir}/{records.PARAMS_DIR}/"},
      errors=(sweep.ConfigError, data_lib.DataError, sweep.WorkdirError))


if __name__ == "__main__":
  cli.run_script(
      main,
      interrupted="rerun the same command to resume; finished members are "
      "kept")
