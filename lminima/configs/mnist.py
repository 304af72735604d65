"""MNIST through TensorFlow Datasets: a 2,000-image class-stratified subset.

Needs the prepared tfds files (internet on first use, or --config.data_dir
pointing at a copy; see lminima.data.images.tfds_images).

  python scripts/depth_width.py --config=lminima/configs/mnist.py
  python scripts/depth_width.py --config=lminima/configs/mnist.py:smoke
"""

from lminima import configs


def get_config(arg=None):
  return configs.image_study("mnist", arg, n=2000, depths=(1, 2, 3),
                             widths=(4, 16, 64))
