"""scikit-learn's 8x8 digits (offline): 500 images, 10 one-hot classes.

  python scripts/depth_width.py --config=lminima/configs/digits.py
  python scripts/depth_width.py --config=lminima/configs/digits.py:smoke
"""

from lminima import configs


def get_config(arg=None):
  return configs.image_study("digits", arg, n=500, depths=(1, 2, 3),
                             widths=(2, 4, 8, 16), smoke_n=40, smoke_width=2,
                             smoke_steps=100, smoke_refine_max_iters=20)
