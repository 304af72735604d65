"""Synthetic teacher-student regression (the built-in default data).

  python scripts/depth_width.py --config=lminima/configs/synthetic.py
  python scripts/depth_width.py --config=lminima/configs/synthetic.py:smoke
"""

from lminima import configs


def get_config(arg=None):
  return configs.study(
      "synthetic", arg, dataset="synthetic",
      data_options={"m": 100, "d_x": 5, "d_y": 2, "seed": 0},
      # The defaults of lminima.sweep.get_config: depths 1-3, widths 2-16.
      full={},
      smoke={"data_options": {"m": 24, "d_x": 3, "d_y": 1},
             "depths": (1,), "widths": (2, 4), "num_seeds": 1, "steps": 200})
