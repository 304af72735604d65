"""lminima.fate: members that did not converge are continued and classified."""

from absl.testing import absltest
import jax.numpy as jnp
import numpy as np

import lminima
from lminima import fate as fate_lib


def _saturating_problem():
  """One tanh unit fitting sign(x): L decreases forever as w grows (inf 0)."""
  x = np.linspace(-1, 1, 8)[:, None]
  return lminima.Problem(lambda p, x: jnp.tanh(x @ p["w"]),
                         {"w": np.ones((1, 1))}, x, np.sign(x))


def _far_minimum_problem():
  """Least squares whose unique minimum w* = 100 is far from the start 1."""
  x = np.linspace(0.1, 1.0, 6)[:, None]
  return lminima.Problem(lambda p, x: x @ p["w"], {"w": np.ones((1, 1))},
                         x, 100.0 * x + 0.01 * np.cos(7 * x))


class FateTest(absltest.TestCase):

  def test_saturating_unit_is_escaping_although_its_gradient_vanishes(self):
    problem = _saturating_problem()
    result = lminima.refine(problem, max_iters=20)
    self.assertEqual(result.stop_reason, "escaping")
    fate = fate_lib.continue_and_classify(problem, result, extra_iters=60)
    self.assertEqual(fate.fate, "escaping", fate.reason)
    self.assertTrue(fate.loss_monotone)
    self.assertGreaterEqual(fate.param_norm_end, 2 * fate.param_norm_start)
    self.assertLess(fate.loss_end, fate.loss_start)
    # The infimum is 0 (tanh(w x) -> sign(x)); the estimate lies in [0, L].
    self.assertBetween(fate.asymptotic_loss, 0.0, fate.loss_end)
    # Here ||g|| falls below the refinement tolerance on the way out: the
    # probe, not the gradient, tells the escape from a critical point.
    self.assertLess(fate.grad_norm_end, 1e-10)
    self.assertIn("still moving", fate.reason)

  def test_far_minimum_stopped_as_escaping_is_critical(self):
    problem = _far_minimum_problem()
    result = lminima.refine(problem)
    self.assertEqual(result.stop_reason, "escaping")
    fate = fate_lib.continue_and_classify(problem, result)
    self.assertEqual(fate.fate, "critical", fate.reason)
    x, y = np.asarray(problem.x), np.asarray(problem.y)
    w = np.linalg.lstsq(x, y, rcond=None)[0]
    np.testing.assert_allclose(fate.params["w"], w, rtol=1e-12)
    self.assertIsNone(fate.asymptotic_loss)

  def test_too_few_iterations_is_undecided_with_the_reason(self):
    problem = _saturating_problem()
    result = lminima.refine(problem, max_iters=20)
    fate = fate_lib.continue_and_classify(problem, result, extra_iters=1)
    self.assertEqual(fate.fate, "undecided")
    self.assertIn("grew only", fate.reason)
    self.assertEqual(fate.iters, 1)

  def test_converged_result_is_critical_without_continuing(self):
    problem = _far_minimum_problem()
    result = lminima.refine(problem, escape_ratio=None)
    self.assertTrue(result.converged)
    fate = fate_lib.continue_and_classify(problem, result)
    self.assertEqual((fate.fate, fate.iters), ("critical", 0))
    self.assertEqual(set(fate.to_row()) - {"fate_max_abs_preactivation"},
                     {"fate", "fate_reason", "fate_iters", "fate_loss",
                      "fate_param_norm", "fate_grad_norm",
                      "fate_asymptotic_loss"})

  def test_bad_arguments(self):
    problem = _far_minimum_problem()
    result = lminima.refine(problem, max_iters=1)
    with self.assertRaisesRegex(ValueError, "extra_iters >= 1"):
      fate_lib.continue_and_classify(problem, result, extra_iters=0)
    with self.assertRaisesRegex(ValueError, "growth > 1"):
      fate_lib.continue_and_classify(problem, result, growth=1.0)


if __name__ == "__main__":
  absltest.main()
