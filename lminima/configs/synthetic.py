"""Synthetic teacher-student regression (the built-in data), designed so the
paper's claims can fail (docs/theory.md#which-tests-are-informative).

The study: m = 400 samples, d_x = 5, d_y = 2 (m d_y = 800), depths 1-3 and
widths 2-16, so every net is under-parameterised (n_params <= 690 < 800) and
minima with L > 0 exist; 12 seeds per cell for enough certified points.
Variants for the subspace bound (C), on a nearly linear target (linear part
2, d_y = 4) fitted through a bottleneck of width 1-3 < d_y:

* ``bottleneck``: the control, no structure: L may exceed L*_linear.
* ``skip``: the same nets with a linear skip from the input to the output,
  so col(D) contains [X 1] kron I and L <= L*_linear must hold.
* ``relu``: the study with relu units (kink points decided by
  ``lminima.critical.kinks``; the Euler identity (B) on differentiable
  minima).
* ``coverage``: the study, with every cell short of 5 certified minima given
  12 more seeds (``lminima.study.coverage``; at most 24 members a cell).

  python scripts/depth_width.py --config=lminima/configs/synthetic.py
  python scripts/depth_width.py --config=lminima/configs/synthetic.py:skip
  python scripts/depth_width.py --config=lminima/configs/synthetic.py:smoke
"""

from lminima import configs

_BOUND = {"data_options": {"m": 200, "d_y": 4, "linear_part": 2.0},
          "depths": (1, 2), "widths": (1, 2, 3), "num_seeds": 8, "steps": 100}

VARIANTS = {
    "bottleneck": _BOUND,
    "skip": {**_BOUND, "skip": True},
    "relu": {"activation": "relu", "depths": (1, 2), "num_seeds": 8},
    "coverage": {"min_certified": 5, "max_members": 24},
}


def get_config(arg=None):
  return configs.study(
      "synthetic", arg, dataset="synthetic",
      data_options={"m": 400, "d_x": 5, "d_y": 2, "seed": 0},
      full={"depths": (1, 2, 3), "widths": (2, 4, 8, 16), "num_seeds": 12},
      smoke={"data_options": {"m": 24, "d_x": 3, "d_y": 1},
             "depths": (1,), "widths": (2, 4), "num_seeds": 1, "steps": 200},
      variants=VARIANTS)
