"""Small-batch vs large-batch training: sharpness of the minima reached.

Keskar et al. (ICLR 2017) report that large batches reach sharper minima that
generalize worse. This trains --num_seeds seeds at batch --small_batch and at
--large_batch_fraction of the training set (one population each) on offline
MNIST, measures train loss, test accuracy, the epsilon-sharpness (full space
and a random subspace) and lambda_max of every member, and writes
results.jsonl, interpolation.json, interpolation.png and report.md into
--workdir (lminima.sharpness_study.run; docs/theory.md#sharpness).

  python scripts/sharpness.py --workdir=runs/sharpness
  python scripts/sharpness.py --smoke --workdir=/tmp/sharpness_smoke   # < 1 min
"""

from absl import flags

from lminima import data as data_lib
from lminima import experiment
from lminima import records
from lminima import sharpness_config
from lminima import sharpness_study

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
  config = sharpness_config.get_config("smoke" if _SMOKE.value else "")
  experiment.set_given(config, {**_INTS, **_FLOATS, **_STRINGS})
  if _DATASET.value is not None:
    config.dataset = _DATASET.value
  if _EPS.value is not None:
    config.eps = experiment.number_list("eps", _EPS.value, float)
  if _WORKDIR.value is not None:
    config.workdir = _WORKDIR.value
  return config


def main(argv):
  experiment.main(
      argv, config_from_flags=config_from_flags,
      validate_config=sharpness_config.validate_config,
      run=sharpness_study.run,
      outputs=lambda config: {
          "results": f"{config.workdir}/{sharpness_config.RESULTS_FILE}",
          "report": f"{config.workdir}/{sharpness_config.REPORT_FILE}",
          "figure": f"{config.workdir}/{sharpness_config.FIGURE_FILE}"},
      errors=(data_lib.DataError, records.WorkdirError))


if __name__ == "__main__":
  experiment.run_script(
      main, interrupted="a sharpness run does not resume; rerun with a new "
      "--workdir (or delete that one)")
