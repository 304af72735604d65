"""CIFAR-10 through TensorFlow Datasets: 2,000 images, luminance grayscale.

Grayscale keeps the input at 1,024 features (3,072 in colour:
``--config.data_options.grayscale=False``). Needs the prepared tfds files
(see lminima.data.images.tfds_images).

  python scripts/depth_width.py --config=lminima/configs/cifar10.py
  python scripts/depth_width.py --config=lminima/configs/cifar10.py:smoke
"""

from lminima import configs


def get_config(arg=None):
  return configs.image_study("cifar10", arg, n=2000, grayscale=True,
                             depths=(1, 2, 3), widths=(4, 16, 64))
