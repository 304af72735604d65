"""The elimination experiment (Kawaguchi & Kaelbling 2020): plain vs augmented
networks over losses, widths and seeds (docs/theory.md#eliminating-bad-local-minima).

  python scripts/eliminate.py                                   # this file
  python scripts/eliminate.py --config=lminima/configs/eliminate.py:smoke
  python scripts/eliminate.py --config.widths=2,4 --config.num_seeds=4
"""

from lminima import configs
from lminima.related.eliminate import study

VARIANTS = {
    # A tiny run (under a minute): one width, two seeds, short training.
    "smoke": {"widths": (2,), "num_seeds": 2, "steps": 300,
              "refine_max_iters": 40, "continue_iters": 20,
              "workdir": "runs/eliminate_smoke"},
}


def get_config(arg=None):
  return configs.with_variant(study.get_config(), "eliminate", arg, VARIANTS)
