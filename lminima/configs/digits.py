"""scikit-learn's 8x8 digits (offline): 500 images, 10 one-hot classes.

  python scripts/depth_width.py --config=lminima/configs/digits.py
  python scripts/depth_width.py --config=lminima/configs/digits.py:smoke
"""

from lminima import configs


def get_config(arg=None):
  return configs.study(
      "digits", arg, dataset="digits",
      data_options={"n": 500, "seed": 0, "classes": tuple(range(10))},
      full={"depths": (1, 2, 3), "widths": (2, 4, 8, 16)},
      smoke={"data_options": {"n": 40, "classes": (0, 1)},
             "depths": (1,), "widths": (2,), "num_seeds": 1, "steps": 100,
             "refine_max_iters": 20})
