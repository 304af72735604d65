"""Plain vs augmented networks (Kawaguchi & Kaelbling 2020) over seeds and widths.

For each loss (squared, softmax cross-entropy), width and seed: the plain
network trained and refined; the augmented network (one neuron a_k exp(w_k . x
+ b_k) per output, penalty lam/2 ||a||^2) trained and refined from the same
start; and the augmented objective refined from the plain member's refined
point with a = 0. Every end point is certified. Writes results.jsonl (one row
per member and variant), config.json and report.md into --workdir
(lminima.eliminate_study; docs/theory.md#eliminating-bad-local-minima).

  python scripts/eliminate.py --workdir=runs/eliminate
  python scripts/eliminate.py --smoke --workdir=/tmp/eliminate_smoke  # < 1 min
"""

import os

from absl import flags

from lminima import eliminate_study
from lminima import experiment
from lminima import records

_DEFAULTS = eliminate_study.get_config()

_SMOKE = flags.DEFINE_bool("smoke", False, "Tiny run (one width, two seeds, "
                           "short training); other flags still apply.")
_WORKDIR = flags.DEFINE_string("workdir", _DEFAULTS.workdir,
                               "Where results go.")
_LOSSES = flags.DEFINE_list("losses", None, "squared and/or cross_entropy "
                            f"(default {','.join(_DEFAULTS.losses)}).")
_WIDTHS = flags.DEFINE_list("widths", None, "Hidden widths (default "
                            f"{','.join(map(str, _DEFAULTS.widths))}).")
_M = flags.DEFINE_integer("m", None, "Number of samples (default "
                          f"{_DEFAULTS.data.m}).")
# Flags copied to the config field of the same name when given.
_FIELDS = {name: define(name, None, f"{help_text} (default "
                        f"{_DEFAULTS[name]}).")
           for define, name, help_text in (
               (flags.DEFINE_integer, "num_seeds", "Seeds per width"),
               (flags.DEFINE_integer, "steps", "Adam steps"),
               (flags.DEFINE_float, "lam", "Penalty weight lam > 0"),
               (flags.DEFINE_integer, "refine_max_iters",
                "LM iterations per refinement"),
               (flags.DEFINE_integer, "continue_iters",
                "Further LM iterations without the escape stop"))}


def config_from_flags():
  """The default (or smoke) config with the command-line flags applied."""
  config = eliminate_study.get_config("smoke" if _SMOKE.value else "default")
  config.workdir = _WORKDIR.value
  if _LOSSES.value is not None:
    config.losses = tuple(_LOSSES.value)
  if _WIDTHS.value is not None:
    config.widths = experiment.number_list("widths", _WIDTHS.value)
  if _M.value is not None:
    config.data.m = _M.value
  experiment.set_given(config, _FIELDS)
  return config


def main(argv):
  experiment.main(
      argv, config_from_flags=config_from_flags,
      validate_config=eliminate_study.validate_config,
      run=eliminate_study.run,
      outputs=lambda config: {
          "results": os.path.join(config.workdir, records.RESULTS_FILE),
          "report": os.path.join(config.workdir,
                                 eliminate_study.REPORT_FILE)})


if __name__ == "__main__":
  experiment.run_script(
      main, interrupted="rerun the same command to resume; finished members "
      "are kept")
