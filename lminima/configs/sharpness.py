"""Small-batch vs large-batch training (Keskar et al. 2017): the sharpness of
the minima reached (docs/theory.md#sharpness).

  python scripts/sharpness.py                                   # this file
  python scripts/sharpness.py --config=lminima/configs/sharpness.py:smoke
  python scripts/sharpness.py --config.num_seeds=4 --config.epochs=50
"""

from lminima import configs
from lminima.related.sharpness import config as sharpness_config

VARIANTS = {
    # A tiny run (under a minute): few images, seeds and epochs.
    "smoke": {"n_train": 200, "n_test": 100, "width": 8, "num_seeds": 2,
              "epochs": 5, "small_batch": 16, "subspace_dim": 5,
              "sharpness_iters": 3, "lanczos_iters": 20, "trace_matvecs": 9,
              "interp_points": 7, "workdir": "runs/sharpness_smoke",
              "progress": False},
}


def get_config(arg=None):
  return configs.with_variant(sharpness_config.get_config(), "sharpness", arg, VARIANTS)
