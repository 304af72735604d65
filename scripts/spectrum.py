"""Hessian spectrum of one refined member of a depth_width.py sweep.

Prints the extreme eigenvalues (with residuals ||Hv - lambda v||) and writes a
spectral density plot (stochastic Lanczos quadrature) as PNG.

  python scripts/depth_width.py --workdir=runs/depth_width
  python scripts/spectrum.py --workdir=runs/depth_width --depth=2 --width=8 --seed=0
"""

import os
import sys

import jax
import numpy as np
from absl import app
from absl import flags

from lminima import hessian
from lminima import losses
from lminima import models
from lminima import report
from lminima import sweep

_WORKDIR = flags.DEFINE_string("workdir", "runs/depth_width",
                               "Workdir of a finished depth_width.py run.")
_DEPTH = flags.DEFINE_integer("depth", 1, "Member depth.")
_WIDTH = flags.DEFINE_integer("width", 4, "Member width.")
_SEED = flags.DEFINE_integer("seed", 0, "Member seed.")
_NUM_PROBES = flags.DEFINE_integer("num_probes", 10, "SLQ probe vectors.")
_NUM_ITERS = flags.DEFINE_integer("num_iters", 80, "Lanczos steps per probe.")
_OUTPUT = flags.DEFINE_string("output", "", "PNG path (default: "
                              "<workdir>/spectrum_depth{d}_width{w}_seed{s}.png).")


def main(argv):
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}")
  depth, width, seed = _DEPTH.value, _WIDTH.value, _SEED.value
  try:
    model, params, data, row = sweep.load_member(_WORKDIR.value, depth, width,
                                                 seed)
  except (ValueError, OSError) as e:
    sys.exit(f"error: {e}")
  params = models.cast_params(params, np.float64)
  loss_fn = lambda p: losses.squared_loss(model.apply(p, data.x), data.y,
                                          row["normalization"])
  matvec, dim = hessian.hvp_operator(loss_fn, params)
  key_eigs, key_slq = jax.random.split(jax.random.PRNGKey(seed))
  eigs = hessian.lanczos_extreme_eigs(matvec, dim, key=key_eigs)
  print(f"member depth={depth} width={width} seed={seed}: {dim} parameters, "
        f"loss {row.get('loss_refined')}, verdict {row.get('verdict')}")
  print(f"lambda_max = {eigs.lambda_max:+.10e}  (residual "
        f"{eigs.residual_max:.1e})")
  print(f"lambda_min = {eigs.lambda_min:+.10e}  (residual "
        f"{eigs.residual_min:.1e})")
  ritz = eigs.ritz_values
  print("largest Ritz values: ", " ".join(f"{v:+.4e}" for v in ritz[::-1][:5]))
  print("smallest Ritz values:", " ".join(f"{v:+.4e}" for v in ritz[:5]))
  density = hessian.slq_density(matvec, dim, key=key_slq,
                                num_probes=_NUM_PROBES.value,
                                num_iters=_NUM_ITERS.value)
  path = _OUTPUT.value or os.path.join(
      _WORKDIR.value, f"spectrum_depth{depth}_width{width}_seed{seed}.png")
  report.plot_spectral_density(
      density.grid, density.density, path,
      extremes=(eigs.lambda_min, eigs.lambda_max),
      title=f"depth {depth}, width {width}, seed {seed} ({dim} parameters)")
  print(f"spectral density: {path}")


if __name__ == "__main__":
  app.run(main)
