"""Plain vs augmented networks (Kawaguchi & Kaelbling 2020) over seeds and widths.

For each loss (squared, softmax cross-entropy), width and seed: the plain
network trained and refined; the augmented network (one neuron a_k exp(w_k . x
+ b_k) per output, penalty lam/2 ||a||^2) trained and refined from the same
start; and the augmented objective refined from the plain member's refined
point with a = 0. Every end point is certified. Writes results.jsonl (one row
per member and variant), config.json and report.md into the workdir
(lminima.related.eliminate.study; docs/theory.md#eliminating-bad-local-minima).

  python scripts/eliminate.py                        # runs/eliminate
  python scripts/eliminate.py --config=lminima/configs/eliminate.py:smoke
  python scripts/eliminate.py --smoke --workdir=/tmp/eliminate_smoke  # < 1 min

A config file (``--config=FILE[:ARG]``; default lminima/configs/eliminate.py)
has every field overridable as ``--config.FIELD=value``; the short flags
below apply on top when given.
"""

import os

from absl import flags

from lminima import configs
from lminima.related.eliminate import study as eliminate_study
from lminima.study import cli
from lminima.study import records

_DEFAULTS = eliminate_study.get_config()

_CONFIG, _SMOKE = cli.define_experiment_flags(
    "eliminate", "one width, two seeds, short training")
_LOSSES = flags.DEFINE_list("losses", None, "squared and/or cross_entropy "
                            f"(default {','.join(_DEFAULTS.losses)}).")
_WIDTHS = flags.DEFINE_list("widths", None, "Hidden widths (default "
                            f"{','.join(map(str, _DEFAULTS.widths))}).")
_M = flags.DEFINE_integer("m", None, "Number of samples (default "
                          f"{_DEFAULTS.data.m}).")
_FIELDS = cli.define_field_flags(_DEFAULTS, {
    "workdir": "Where results go.",
    "num_seeds": "Seeds per width.",
    "steps": "Adam steps.",
    "lam": "Penalty weight lam > 0.",
    "refine_max_iters": "LM iterations per refinement.",
    "continue_iters": "Further LM iterations without the escape stop."})


def config_from_flags():
  """The --config file's config with --smoke and the short flags applied."""
  config = configs.from_flags("eliminate", _CONFIG.value, _SMOKE.value)
  if _LOSSES.value is not None:
    config.losses = tuple(_LOSSES.value)
  if _WIDTHS.value is not None:
    config.widths = cli.number_list("widths", _WIDTHS.value)
  if _M.value is not None:
    config.data.m = _M.value
  cli.set_given(config, _FIELDS)
  return config


def main(argv):
  cli.main(
      argv, config_from_flags=config_from_flags,
      validate_config=eliminate_study.validate_config,
      run=eliminate_study.run,
      outputs=lambda config: {
          "results": os.path.join(config.workdir, records.RESULTS_FILE),
          "report": os.path.join(config.workdir,
                                 eliminate_study.REPORT_FILE)})


if __name__ == "__main__":
  cli.run_script(
      main, interrupted="rerun the same command to resume; finished members "
      "are kept")
