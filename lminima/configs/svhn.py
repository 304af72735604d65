"""SVHN (cropped digits) through TensorFlow Datasets: 2,000 images, grayscale.

Needs the prepared tfds files of ``svhn_cropped`` (see
lminima.data.tfds_images).

  python scripts/depth_width.py --config=lminima/configs/svhn.py
  python scripts/depth_width.py --config=lminima/configs/svhn.py:smoke
"""

from lminima import configs


def get_config(arg=None):
  return configs.study(
      "svhn", arg, dataset="svhn_cropped",
      data_options={"n": 2000, "seed": 0, "classes": tuple(range(10)),
                    "grayscale": True},
      full={"depths": (1, 2, 3), "widths": (4, 16, 64)},
      smoke={"data_options": {"n": 20, "classes": (0, 1)},
             "depths": (1,), "widths": (1,), "num_seeds": 1, "steps": 50,
             "refine_max_iters": 3})
