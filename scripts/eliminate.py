"""Plain vs augmented networks (Kawaguchi & Kaelbling 2020) over seeds and widths.

For each loss (squared, softmax cross-entropy), width and seed: the plain
network trained and refined; the augmented network (one neuron a_k exp(w_k . x
+ b_k) per output, penalty lam/2 ||a||^2) trained and refined from the same
start; and the augmented objective refined from the plain member's refined
point with a = 0. Every end point is certified. Writes results.jsonl (one row
per member and variant), config.json and report.md into --workdir
(lminima.eliminate; docs/theory.md#eliminating-bad-local-minima).

  python scripts/eliminate.py --workdir=runs/eliminate
  python scripts/eliminate.py --smoke --workdir=/tmp/eliminate_smoke  # < 1 min
"""

import os
import sys

from absl import app
from absl import flags

from lminima import eliminate
from lminima import records

_DEFAULTS = eliminate.get_config()

_SMOKE = flags.DEFINE_bool("smoke", False, "Tiny run (one width, two seeds, "
                           "short training); other flags still apply.")
_WORKDIR = flags.DEFINE_string("workdir", _DEFAULTS.workdir,
                               "Where results go.")
_LOSSES = flags.DEFINE_list("losses", None, "squared and/or cross_entropy "
                            f"(default {','.join(_DEFAULTS.losses)}).")
_WIDTHS = flags.DEFINE_list("widths", None, "Hidden widths (default "
                            f"{','.join(map(str, _DEFAULTS.widths))}).")
_NUM_SEEDS = flags.DEFINE_integer("num_seeds", None, "Seeds per width "
                                  f"(default {_DEFAULTS.num_seeds}).")
_STEPS = flags.DEFINE_integer("steps", None, "Adam steps (default "
                              f"{_DEFAULTS.steps}).")
_LAM = flags.DEFINE_float("lam", None, "Penalty weight lam > 0 (default "
                          f"{_DEFAULTS.lam}).")
_M = flags.DEFINE_integer("m", None, "Number of samples (default "
                          f"{_DEFAULTS.data.m}).")
_REFINE_MAX_ITERS = flags.DEFINE_integer(
    "refine_max_iters", None, "LM iterations per refinement (default "
    f"{_DEFAULTS.refine_max_iters}).")
_CONTINUE_ITERS = flags.DEFINE_integer(
    "continue_iters", None, "Further LM iterations without the escape stop "
    f"(default {_DEFAULTS.continue_iters}).")


def _int_list(name, values):
  try:
    return tuple(int(v) for v in values)
  except ValueError:
    raise ValueError(f"--{name} must be a comma-separated list of integers, "
                     f"got {','.join(values)!r}") from None


def config_from_flags():
  """The default (or smoke) config with the command-line flags applied."""
  config = eliminate.get_config("smoke" if _SMOKE.value else "default")
  config.workdir = _WORKDIR.value
  if _LOSSES.value is not None:
    config.losses = tuple(_LOSSES.value)
  if _WIDTHS.value is not None:
    config.widths = _int_list("widths", _WIDTHS.value)
  if _M.value is not None:
    config.data.m = _M.value
  for flag, name in ((_NUM_SEEDS, "num_seeds"), (_STEPS, "steps"),
                     (_LAM, "lam"), (_REFINE_MAX_ITERS, "refine_max_iters"),
                     (_CONTINUE_ITERS, "continue_iters")):
    if flag.value is not None:
      config[name] = flag.value
  return config


def main(argv):
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}")
  try:
    config = config_from_flags()
    eliminate.validate_config(config)
  except ValueError as e:  # Bad flags: one line, no traceback.
    sys.exit(f"error: {e}")
  try:
    eliminate.run(config)
  except records.WorkdirError as e:
    sys.exit(f"error: {e}")
  workdir = config.workdir
  print(f"results: {os.path.join(workdir, records.RESULTS_FILE)}\n"
        f"report:  {os.path.join(workdir, eliminate.REPORT_FILE)}")


if __name__ == "__main__":
  app.run(main)
