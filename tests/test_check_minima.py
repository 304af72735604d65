"""scripts/check_minima.py: the independent recheck of certified minima.

A small sweep's certified minima pass; a certified row whose saved point is
moved off its minimum is reported as lowered (exit status 1), so the check
can fail.
"""

import importlib.util
import os
import tempfile

from absl.testing import absltest
import jax.numpy as jnp
import numpy as np

from lminima.study import sweep

from _helpers import REPO, run_script


def _load_script(name):
  """scripts/<name>.py as a module (its flags defined, not parsed)."""
  spec = importlib.util.spec_from_file_location(
      name, os.path.join(REPO, "scripts", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


class CheckMinimaTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    config = sweep.get_config()
    config.depths, config.widths, config.num_seeds = (1,), (2,), 2
    config.steps, config.progress = 600, False
    config.workdir = tempfile.mkdtemp()
    cls.rows = sweep.run(config, log=lambda _: None)
    cls.workdir = config.workdir

  def test_certified_minima_pass_and_a_moved_point_fails(self):
    minima = [r for r in self.rows if r.get("outcome") == "local_min"]
    self.assertNotEmpty(minima)
    done = run_script("check_minima.py", f"--workdir={self.workdir}",
                      "--iters=50")
    self.assertEqual(done.returncode, 0, done.stderr)
    self.assertIn(f"{len(minima)} certified minima rechecked (0 with zero "
                  "loss); 0 lowered", done.stdout)
    # Move one certified point off its minimum (the output bias by 0.1):
    # the independent L-BFGS-B goes lower, and the check says so.
    path = os.path.join(self.workdir, minima[0]["params_file"])
    with np.load(path) as saved:
      arrays = {k: np.asarray(saved[k]) for k in saved.keys()}
    original = dict(arrays)
    last = max(k for k in arrays if k.endswith("/bias"))
    arrays[last] = arrays[last] + 0.1
    np.savez(path, **arrays)
    try:
      done = run_script("check_minima.py", f"--workdir={self.workdir}",
                        "--iters=50")
    finally:
      np.savez(path, **original)
    self.assertEqual(done.returncode, 1, done.stderr)
    self.assertIn("LOWERED", done.stdout)
    self.assertIn("1 lowered", done.stdout)

  def test_within_keeps_the_check_in_the_neighbourhood(self):
    # |v| has a kink minimum at 0 with a jax gradient of 1 there; a deeper
    # basin lies at v = -1 beyond a rise. L-BFGS-B's unit first step jumps
    # into it; within the box of half-width 1e-3 it stays at the minimum.
    check_minima = _load_script("check_minima")

    def loss(v):
      return (jnp.sum(jnp.abs(v))
              - 3.0 * jnp.exp(-10.0 * jnp.sum((v + 1.0) ** 2)))
    origin = np.zeros(1)
    value = float(loss(jnp.asarray(origin)))
    anywhere, distance = check_minima.lowest_reached(loss, origin, 50)
    self.assertLess(anywhere, value - 1.0)
    self.assertGreater(distance, 0.5)
    local, distance = check_minima.lowest_reached(loss, origin, 50,
                                                  within=1e-3)
    self.assertGreaterEqual(local, value - 1e-12)
    self.assertLessEqual(distance, 1e-3)


if __name__ == "__main__":
  absltest.main()
