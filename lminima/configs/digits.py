"""scikit-learn's 8x8 digits (offline): 500 images, 10 one-hot classes.

Inputs are the top 16 principal components (standardized) of the 64 pixels,
so every net of the grid is under-parameterised (n_params <= 986 < m d_y =
5,000) and minima with L > 0 exist; ``pixels`` keeps the 64 pixels.

  python scripts/depth_width.py --config=lminima/configs/digits.py
  python scripts/depth_width.py --config=lminima/configs/digits.py:smoke
"""

from lminima import configs

VARIANTS = {"pixels": {"data_options": {"pca_dim": None}}}


def get_config(arg=None):
  return configs.image_study("digits", arg, n=500, depths=(1, 2, 3),
                             widths=(4, 8, 16), num_seeds=10, pca_dim=16,
                             smoke_n=40, smoke_width=2, smoke_steps=100,
                             smoke_refine_max_iters=20, variants=VARIANTS)
