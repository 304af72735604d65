"""SVHN (cropped digits) through TensorFlow Datasets: 2,000 images, grayscale.

Needs the prepared tfds files of ``svhn_cropped`` (see
lminima.data.images.tfds_images).

  python scripts/depth_width.py --config=lminima/configs/svhn.py
  python scripts/depth_width.py --config=lminima/configs/svhn.py:smoke
"""

from lminima import configs


def get_config(arg=None):
  return configs.image_study("svhn", arg, dataset="svhn_cropped", n=2000,
                             grayscale=True, depths=(1, 2, 3),
                             widths=(4, 16, 64))
