"""Small-batch vs large-batch training: sharpness of the minima reached.

Keskar et al. (ICLR 2017) report that large batches reach sharper minima that
generalize worse. This trains num_seeds seeds at batch small_batch and at
large_batch_fraction of the training set (one population each) on offline
MNIST, measures train loss, test accuracy, the epsilon-sharpness (full space
and a random subspace) and lambda_max of every member, and writes
results.jsonl, interpolation.json, interpolation.png and report.md into the
workdir (lminima.related.sharpness.study.run; docs/theory.md#sharpness).

  python scripts/sharpness.py                        # runs/sharpness
  python scripts/sharpness.py --config=lminima/configs/sharpness.py:smoke
  python scripts/sharpness.py --smoke --workdir=/tmp/sharpness_smoke  # < 1 min

A config file (``--config=FILE[:ARG]``; default lminima/configs/sharpness.py)
has every field overridable as ``--config.FIELD=value``; the short flags
below apply on top when given.
"""


from absl import flags

from lminima import configs
from lminima import data as data_lib
from lminima.related.sharpness import config as sharpness_config
from lminima.related.sharpness import study as sharpness_study
from lminima.study import cli
from lminima.study import records

_DEFAULTS = sharpness_config.get_config()

_CONFIG, _SMOKE = cli.define_experiment_flags(
    "sharpness", "few images, seeds and epochs")
_EPS = flags.DEFINE_list("eps", None, "Box scales epsilon of the sharpness.")
_FIELDS = cli.define_field_flags(_DEFAULTS, {
    "workdir": "Where results go.",
    "dataset": "mnist5k or digits.",
    "n_train": "Training images.",
    "n_test": "Held-out test images.",
    "data_seed": "Seed of the image sample.",
    "depth": "Hidden layers.",
    "width": "Hidden units per layer.",
    "epochs": "Epochs at every batch size.",
    "small_batch": "The small batch size.",
    "num_seeds": "Seeds per batch size.",
    "subspace_dim": "Random subspace dimension (0: full space only).",
    "sharpness_iters": "Iterations of the inner maximization.",
    "learning_rate": "Learning rate.",
    "large_batch_fraction": "Large batch as a share of the training set.",
    "activation": "Hidden activation.",
    "optimizer": "sgd, momentum or adam.",
    "sharpness_method": "lbfgsb or projected_gradient."})


def config_from_flags():
  """The --config file's config with --smoke and the short flags applied."""
  config = configs.from_flags("sharpness", _CONFIG.value, _SMOKE.value)
  cli.set_given(config, _FIELDS)
  if _EPS.value is not None:
    config.eps = cli.number_list("eps", _EPS.value, float)
  return config


def main(argv):
  cli.main(
      argv, config_from_flags=config_from_flags,
      validate_config=sharpness_config.validate_config,
      run=sharpness_study.run,
      outputs=lambda config: {
          "results": f"{config.workdir}/{sharpness_config.RESULTS_FILE}",
          "report": f"{config.workdir}/{sharpness_config.REPORT_FILE}",
          "figure": f"{config.workdir}/{sharpness_config.FIGURE_FILE}"},
      errors=(data_lib.DataError, records.WorkdirError))


if __name__ == "__main__":
  cli.run_script(
      main, interrupted="a sharpness run does not resume; rerun with a new "
      "--workdir (or delete that one)")
