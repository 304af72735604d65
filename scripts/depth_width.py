"""Trains, certifies and explains a depth x width x seed grid of MLPs.

Writes results.jsonl (one row per member, as each finishes), summary.csv,
loss_vs_width.png and params/*.npz into --workdir. Rerunning with the same
workdir skips the members already recorded.

  python scripts/depth_width.py                       # synthetic default
  python scripts/depth_width.py --dataset=digits --depths=1,2 --widths=8,32
"""

import sys

from absl import app
from absl import flags

from lminima import data as data_lib
from lminima import records
from lminima import sweep

_DEFAULTS = sweep.get_config()

_DATASET = flags.DEFINE_string("dataset", _DEFAULTS.dataset,
                               "synthetic, digits, mnist5k, mnist, cifar10 or "
                               "svhn_cropped.")
_N = flags.DEFINE_integer("n", None, "Subset size for real data sets "
                          "(synthetic: number of samples m).")
_DATA_SEED = flags.DEFINE_integer("data_seed", 0, "Seed of the data subset.")
_DEPTHS = flags.DEFINE_list("depths", list(map(str, _DEFAULTS.depths)),
                            "Numbers of hidden layers.")
_WIDTHS = flags.DEFINE_list("widths", list(map(str, _DEFAULTS.widths)),
                            "Hidden widths (every hidden layer).")
_NUM_SEEDS = flags.DEFINE_integer("num_seeds", _DEFAULTS.num_seeds,
                                  "Seeds per (depth, width).")
_ACTIVATION = flags.DEFINE_string("activation", _DEFAULTS.activation,
                                  "relu, leaky_relu, tanh, softplus, sigmoid "
                                  "or identity.")
_BIAS = flags.DEFINE_bool("bias", _DEFAULTS.bias, "Biases in every layer.")
_NORMALIZATION = flags.DEFINE_string("normalization", _DEFAULTS.normalization,
                                     "Loss normalization: sum or mean.")
_OPTIMIZER = flags.DEFINE_string("optimizer", _DEFAULTS.optimizer,
                                 "sgd, momentum or adam.")
_LEARNING_RATE = flags.DEFINE_float("learning_rate", _DEFAULTS.learning_rate,
                                    "Learning rate.")
_STEPS = flags.DEFINE_integer("steps", _DEFAULTS.steps, "Training steps.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", _DEFAULTS.batch_size,
                                   "Minibatch size; 0 for full batch.")
_WIDTH_STRATEGY = flags.DEFINE_string("width_strategy",
                                      _DEFAULTS.width_strategy,
                                      "auto, per_width or masked.")
_CERTIFY = flags.DEFINE_bool("certify", _DEFAULTS.certify,
                             "Refine and certify every member.")
_REFINE_MAX_ITERS = flags.DEFINE_integer(
    "refine_max_iters", _DEFAULTS.refine_max_iters,
    "Cap on Newton-type refinement iterations per member.")
_THEORY = flags.DEFINE_bool("theory", _DEFAULTS.theory,
                            "Compute theory quantities and classical optima.")
_WORKDIR = flags.DEFINE_string("workdir", _DEFAULTS.workdir,
                               "Where results go.")
_DATA_DIR = flags.DEFINE_string("data_dir", "", "tensorflow-datasets data "
                                "directory (pre-downloaded data works offline).")


def _int_list(name: str, values: list[str]) -> tuple[int, ...]:
  try:
    return tuple(int(v) for v in values)
  except ValueError:
    raise ValueError(f"--{name} must be a comma-separated list of integers, "
                     f"got {','.join(values)!r}") from None


def config_from_flags():
  """The default config with the command-line flags applied."""
  config = sweep.get_config()
  config.dataset = _DATASET.value
  if config.dataset != "synthetic":
    config.data_options = {"seed": _DATA_SEED.value}
    if _N.value is not None:
      config.data_options["n"] = _N.value
  else:
    config.data_options.seed = _DATA_SEED.value
    if _N.value is not None:
      config.data_options.m = _N.value
  config.depths = _int_list("depths", _DEPTHS.value)
  config.widths = _int_list("widths", _WIDTHS.value)
  for name in ("num_seeds", "activation", "bias", "normalization", "optimizer",
               "learning_rate", "steps", "batch_size", "width_strategy",
               "certify", "refine_max_iters", "theory", "workdir",
               "data_dir"):
    setattr(config, name, flags.FLAGS[name].value)
  return config


def main(argv):
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}")
  try:
    config = config_from_flags()
    sweep.validate_config(config)
  except ValueError as e:  # Bad flags: one line, no traceback.
    sys.exit(f"error: {e}")
  try:
    sweep.run(config)
  except (data_lib.DataError, sweep.WorkdirError) as e:
    sys.exit(f"error: {e}")
  workdir = config.workdir
  print(f"results: {workdir}/{records.RESULTS_FILE}\n"
        f"summary: {workdir}/{records.SUMMARY_FILE}\n"
        f"figure:  {workdir}/{records.FIGURE_FILE}\n"
        f"params:  {workdir}/{records.PARAMS_DIR}/")


if __name__ == "__main__":
  app.run(main)
