"""Hessian spectrum of one refined member of a depth_width.py sweep.

Prints the extreme eigenvalues (with residuals ||Hv - lambda v||) and writes a
spectral density plot (stochastic Lanczos quadrature) as PNG.

  python scripts/depth_width.py --workdir=runs/depth_width
  python scripts/spectrum.py --workdir=runs/depth_width --depth=2 --width=8 --seed=0
"""

import os
import sys

import jax
from absl import flags

from lminima.critical import spectrum
from lminima.study import cli
from lminima.study import figures
from lminima.study import reload

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
    problem, row = reload.load_member(_WORKDIR.value, depth, width, seed)
    result = spectrum.hessian_spectrum(
        problem, key=jax.random.PRNGKey(seed), num_probes=_NUM_PROBES.value,
        num_iters=_NUM_ITERS.value)
  except (ValueError, OSError) as e:
    sys.exit(f"error: {e}")
  eigs = result.extremes
  print(f"member depth={depth} width={width} seed={seed}: "
        f"{result.n_params} parameters, loss {row.get('loss_refined')}, "
        f"verdict {row.get('verdict')}")
  print(f"lambda_max = {eigs.lambda_max:+.10e}  (residual "
        f"{eigs.residual_max:.1e})")
  print(f"lambda_min = {eigs.lambda_min:+.10e}  (residual "
        f"{eigs.residual_min:.1e})")
  ritz = eigs.ritz_values
  print("largest Ritz values: ", " ".join(f"{v:+.4e}" for v in ritz[::-1][:5]))
  print("smallest Ritz values:", " ".join(f"{v:+.4e}" for v in ritz[:5]))
  path = _OUTPUT.value or os.path.join(
      _WORKDIR.value, f"spectrum_depth{depth}_width{width}_seed{seed}.png")
  figures.plot_spectral_density(
      result.density.grid, result.density.density, path,
      extremes=(eigs.lambda_min, eigs.lambda_max),
      title=f"depth {depth}, width {width}, seed {seed} "
            f"({result.n_params} parameters)")
  print(f"spectral density: {path}")


if __name__ == "__main__":
  cli.run_script(main, interrupted="nothing written")
