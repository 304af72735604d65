"""MNIST through TensorFlow Datasets: a 2,000-image class-stratified subset.

Needs the prepared tfds files (internet on first use, or --config.data_dir
pointing at a copy; see lminima.data.tfds_images).

  python scripts/depth_width.py --config=lminima/configs/mnist.py
  python scripts/depth_width.py --config=lminima/configs/mnist.py:smoke
"""

from lminima import configs


def get_config(arg=None):
  return configs.study(
      "mnist", arg, dataset="mnist",
      data_options={"n": 2000, "seed": 0, "classes": tuple(range(10))},
      full={"depths": (1, 2, 3), "widths": (4, 16, 64)},
      smoke={"data_options": {"n": 20, "classes": (0, 1)},
             "depths": (1,), "widths": (1,), "num_seeds": 1, "steps": 50,
             "refine_max_iters": 3})
