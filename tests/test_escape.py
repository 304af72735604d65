"""lminima.critical.escape: the evidence that a path goes to infinity.

gap_tracking is checked on paths whose limit or minimum is known in closed
form (||g|| = (L - L*)^t, the exponential valley) and on recorded LM paths of
the digits study; growth against ||theta|| computed directly.
"""

import os

from absl.testing import absltest
from absl.testing import parameterized
import jax
import numpy as np

import lminima
from lminima.core.models import MLP
from lminima.core.tolerances import DEFAULT
from lminima.critical import escape

from _helpers import gaussian_data


class GapTrackingTest(parameterized.TestCase):
  """gap_tracking: ||g|| proportional to L - L_inf on a path that escapes,
  never on one that converges to a critical point (Lojasiewicz)."""

  def test_exponential_valley_is_found_with_its_limit(self):
    n = np.linspace(10, 20, 60)
    found = escape.gap_tracking(0.25 + np.exp(-n), 3 * np.exp(-n), n,
                                      DEFAULT)
    self.assertEqual(found.start, 0)
    self.assertAlmostEqual(found.limit, 0.25, delta=1e-10)
    self.assertAlmostEqual(found.rate, 3.0, delta=0.1)
    self.assertGreater(found.fall, DEFAULT.escape_fall)
    self.assertLessEqual(found.spread, DEFAULT.escape_spread)

  @parameterized.product(exponent=(0.5, 0.6, 0.7, 0.75),
                         span=(5.0, 10.0, 30.0))
  def test_convergence_to_a_minimum_is_not_an_escape(self, exponent, span):
    # ||g|| = (L - L*)^t: a minimum with Lojasiewicz exponent t (1/2 where
    # nondegenerate, 3/4 at a quartic one), approached as the norm grows.
    # From t = 0.8 on some pass: the limit the docstring states.
    n = np.linspace(10, 10 + span, 80)
    self.assertIsNone(escape.gap_tracking(
        0.25 + np.exp(-n), np.exp(-exponent * n), n, DEFAULT))

  def test_overshooting_iterates_are_seen_through(self):
    n = np.linspace(10, 20, 60)
    grads = np.exp(-n) * np.where(np.arange(60) % 2, 100.0, 1.0)
    found = escape.gap_tracking(0.25 + np.exp(-n), grads, n, DEFAULT)
    self.assertAlmostEqual(found.limit, 0.25, delta=1e-10)

  def test_a_path_that_ends_converging_is_not_an_escape(self):
    # The valley, then a minimum reached at quadratic rate (gradient
    # squared each step, L - L* its square).
    n = np.concatenate([np.linspace(10, 20, 60), 20 + 0.01 * np.arange(1, 6)])
    gap = np.concatenate([np.exp(-np.linspace(10, 20, 60)),
                          np.exp(-20) * 0.5 ** (2 ** np.arange(1, 6))])
    self.assertIsNone(escape.gap_tracking(
        0.25 + gap, np.sqrt(gap), n, DEFAULT))
    self.assertIsNone(escape.gap_tracking([1.0, 0.5], [1.0, 0.5],
                                                [1.0, 2.0], DEFAULT))

  def test_a_path_that_reaches_its_limit_is_not_an_escape(self):
    # digits depth 1 width 8 seed 0 (96 LM iterations): L fell from 0.110 to
    # 0.0976 while ||theta|| grew 146x, then stayed at that value up to
    # roundoff (once 1.4e-17 below its last value) with ||g|| at roundoff.
    # No gap is left to follow: an offset small enough to fit the end
    # would make the gap negative at the dip.
    with np.load(os.path.join(os.path.dirname(__file__), "data",
                              "digits_far_plateau_path.npz")) as path:
      losses, grads, norms = path["losses"], path["grads"], path["norms"]
    self.assertLess(np.min(losses), losses[-1])
    self.assertIsNone(escape.gap_tracking(losses, grads, norms,
                                                DEFAULT))

  def test_recorded_digits_path(self):
    # The refinement and continuation of digits depth 3 width 4 seed 0
    # (tanh; 400 LM iterations): ||theta|| grew 1.6x, L fell to
    # 0.25 + 1.2e-9, and the rows of the one-hot targets are fit by
    # saturated units except for a limit at 0.25.
    with np.load(os.path.join(os.path.dirname(__file__), "data",
                              "digits_slow_escape_path.npz")) as path:
      losses, grads, norms = path["losses"], path["grads"], path["norms"]
    self.assertLess(norms[-1] / norms[0], DEFAULT.growth)
    found = escape.gap_tracking(losses, grads, norms, DEFAULT)
    self.assertIsNotNone(found)
    self.assertBetween(found.limit, 0.25 - 1e-9, losses[-1])
    # The same path cut where its gap had fallen only 10-fold is not enough.
    cut = int(np.argmax(losses - 0.25 < (losses[0] - 0.25) / 10))
    self.assertIsNone(escape.gap_tracking(
        losses[:cut], grads[:cut], norms[:cut], DEFAULT))


class GrowthTest(absltest.TestCase):

  def test_growth_of_a_relu_net_is_that_of_its_balanced_norm(self):
    # Scaling the hidden units in and out by 10 grows ||theta|| about 10x and
    # changes neither L nor the balanced norm: no growth toward an escape.
    model = MLP(2, (3,), 1, "relu")
    x, y = gaussian_data(m=12, d_x=2, d_y=1, seed=0)
    begin = lminima.Problem.for_module(
        model, model.init_params(jax.random.PRNGKey(0), np.float64), x, y)
    scaled = jax.tree_util.tree_map(np.array, begin.params)
    scaled["params"]["layer_1"]["kernel"] *= 10.0
    scaled["params"]["layer_1"]["bias"] *= 10.0
    scaled["params"]["layer_2"]["kernel"] /= 10.0
    end = begin.at(scaled)
    self.assertAlmostEqual(end.loss / begin.loss, 1.0, places=12)
    self.assertGreater(np.linalg.norm(end.flat),
                       DEFAULT.growth * np.linalg.norm(begin.flat))
    size, ratio = escape.growth(begin, end)
    self.assertEqual(size, "the balanced norm")
    self.assertAlmostEqual(ratio, 1.0, places=9)
    # tanh units cannot be rescaled: ||theta|| is what grows.
    tanh = lminima.Problem.for_module(MLP(2, (3,), 1, "tanh"), begin.params,
                                      x, y)
    size, ratio = escape.growth(tanh, tanh.at(scaled))
    self.assertEqual(size, "||theta||")
    self.assertAlmostEqual(ratio, np.linalg.norm(end.flat)
                           / np.linalg.norm(begin.flat), places=12)


if __name__ == "__main__":
  absltest.main()
