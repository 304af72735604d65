"""Small-batch vs large-batch training: sharpness of the minima reached.

Keskar et al. (ICLR 2017) report that large batches reach sharper minima that
generalize worse. This trains --num_seeds seeds at batch --small_batch and at
--large_batch_fraction of the training set (one population each) on offline
MNIST, measures train loss, test accuracy, the epsilon-sharpness (full space
and a random subspace) and lambda_max of every member, and writes
results.jsonl, interpolation.json, interpolation.png and report.md into
--workdir (lminima.sharpness.run; docs/theory.md#sharpness).

  python scripts/sharpness.py --workdir=runs/sharpness
  python scripts/sharpness.py --smoke --workdir=/tmp/sharpness_smoke   # < 1 min
"""

import sys

from absl import app
from absl import flags

from lminima import data as data_lib
from lminima import records
from lminima import sharpness

_WORKDIR = flags.DEFINE_string("workdir", None, "Where results go (default: "
                               "runs/sharpness, smoke: runs/sharpness_smoke).")
_SMOKE = flags.DEFINE_bool("smoke", False, "A tiny run (under a minute): few "
                           "images, seeds and epochs.")
_DATASET = flags.DEFINE_string("dataset", None, "mnist5k or digits.")
_EPS = flags.DEFINE_list("eps", None, "Box scales epsilon of the sharpness.")
_INTS = {name: flags.DEFINE_integer(name, None, help_text) for name, help_text
         in (("n_train", "Training images."),
             ("n_test", "Held-out test images."),
             ("data_seed", "Seed of the image sample."),
             ("depth", "Hidden layers."),
             ("width", "Hidden units per layer."),
             ("epochs", "Epochs at every batch size."),
             ("small_batch", "The small batch size."),
             ("num_seeds", "Seeds per batch size."),
             ("subspace_dim", "Random subspace dimension (0: full space "
              "only)."),
             ("sharpness_iters", "Iterations of the inner maximization."))}
_FLOATS = {name: flags.DEFINE_float(name, None, help_text) for name, help_text
           in (("learning_rate", "Learning rate."),
               ("large_batch_fraction", "Large batch as a share of the "
                "training set."))}
_STRINGS = {name: flags.DEFINE_string(name, None, help_text)
            for name, help_text
            in (("activation", "Hidden activation."),
                ("optimizer", "sgd, momentum or adam."),
                ("sharpness_method", "lbfgsb or projected_gradient."))}


def config_from_flags():
  """The default (or smoke) config with the given flags applied."""
  config = sharpness.get_config("smoke" if _SMOKE.value else "")
  for name, flag in {**_INTS, **_FLOATS, **_STRINGS}.items():
    if flag.value is not None:
      setattr(config, name, flag.value)
  if _DATASET.value is not None:
    config.dataset = _DATASET.value
  if _EPS.value is not None:
    try:
      config.eps = tuple(float(v) for v in _EPS.value)
    except ValueError:
      raise ValueError(f"--eps must be a comma-separated list of numbers, got "
                       f"{','.join(_EPS.value)!r}") from None
  if _WORKDIR.value is not None:
    config.workdir = _WORKDIR.value
  return config


def main(argv):
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}")
  try:
    config = config_from_flags()
    sharpness.validate_config(config)
  except ValueError as e:  # Bad flags: one line, no traceback.
    sys.exit(f"error: {e}")
  try:
    sharpness.run(config)
  except (data_lib.DataError, records.WorkdirError) as e:
    sys.exit(f"error: {e}")
  workdir = config.workdir
  print(f"results: {workdir}/{sharpness.RESULTS_FILE}\n"
        f"report:  {workdir}/{sharpness.REPORT_FILE}\n"
        f"figure:  {workdir}/{sharpness.FIGURE_FILE}")


if __name__ == "__main__":
  app.run(main)
