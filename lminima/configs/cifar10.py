"""CIFAR-10 through TensorFlow Datasets: 2,000 images, luminance grayscale.

Grayscale keeps the input at 1,024 features (3,072 in colour:
``--config.data_options.grayscale=False``). Needs the prepared tfds files
(see lminima.data.tfds_images).

  python scripts/depth_width.py --config=lminima/configs/cifar10.py
  python scripts/depth_width.py --config=lminima/configs/cifar10.py:smoke
"""

from lminima import configs


def get_config(arg=None):
  return configs.study(
      "cifar10", arg, dataset="cifar10",
      data_options={"n": 2000, "seed": 0, "classes": tuple(range(10)),
                    "grayscale": True},
      full={"depths": (1, 2, 3), "widths": (4, 16, 64)},
      smoke={"data_options": {"n": 20, "classes": (0, 1)},
             "depths": (1,), "widths": (1,), "num_seeds": 1, "steps": 50,
             "refine_max_iters": 3})
