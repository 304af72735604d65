"""scripts/check_minima.py: the independent recheck of certified minima.

A small sweep's certified minima pass; a certified row whose saved point is
moved off its minimum is reported as lowered (exit status 1), so the check
can fail.
"""

import os
import tempfile

from absl.testing import absltest
import numpy as np

from lminima.study import sweep

from _helpers import run_script


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


if __name__ == "__main__":
  absltest.main()
