"""lminima.pattern: the relu loss with its activation pattern fixed."""

from absl.testing import absltest
import jax
import numpy as np

import lminima
from lminima import pattern
from lminima.models import MLP
from lminima.tolerances import DEFAULT

from _helpers import flax_variables, gaussian_data


def _relu_problem(activation="relu", seed=0):
  x, y = gaussian_data(m=30, d_x=2, d_y=1, seed=seed)
  model = MLP(d_in=2, widths=(4,), d_out=1, activation=activation)
  return lminima.Problem.for_module(model, model.init_params(
      jax.random.PRNGKey(seed)), x, np.sin(x[:, :1]) + x[:, 1:] ** 2)


class PatternTest(absltest.TestCase):

  def test_fixed_pattern_loss_and_gradient_equal_the_true_ones(self):
    for activation in ("relu", "leaky_relu"):
      problem = _relu_problem(activation)
      self.assertTrue(pattern.has_pattern(problem))
      self.assertGreater(problem.min_abs_kink_input(), 1e-6)  # off kinks
      fixed = pattern.pattern_problem(problem)
      self.assertAlmostEqual(fixed.loss, problem.loss, delta=1e-14)
      np.testing.assert_allclose(fixed.grad, problem.grad, atol=1e-13)
      # The slopes by numpy: 1 where Z >= 0, else 0 (relu) or 0.01.
      layers = problem.params["params"]
      z = np.asarray(problem.x) @ np.asarray(layers["layer_1"]["kernel"]) + (
          np.asarray(layers["layer_1"]["bias"]))
      low = 0.01 if activation == "leaky_relu" else 0.0
      np.testing.assert_array_equal(pattern.slopes(problem)[0],
                                    np.where(z >= 0, 1.0, low))

  def test_a_critical_point_inside_the_pattern_is_found(self):
    # Biases large enough that every unit is on at every sample: the net is
    # linear there, and least squares has its minimum inside the pattern.
    x, y = gaussian_data(m=20, d_x=2, d_y=1, seed=3)
    model = MLP(d_in=2, widths=(2,), d_out=1, activation="relu")
    start = flax_variables(
        {"kernel": 0.1 * np.eye(2), "bias": np.array([50.0, 50.0])},
        {"kernel": np.array([[0.5], [0.5]]), "bias": np.array([0.0])})
    problem = lminima.Problem.for_module(model, start, x, y)
    result, inside = pattern.refine_in_pattern(problem, DEFAULT, 100)
    self.assertTrue(inside, result.stop_reason)
    end = problem.at(result.params)
    self.assertLessEqual(end.grad_norm, result.grad_tol)
    # All units on: the fit is that of linear regression with intercept.
    design = np.hstack([x, np.ones((20, 1))])
    residual = y - design @ np.linalg.lstsq(design, y, rcond=None)[0]
    self.assertAlmostEqual(end.loss, np.sum(residual ** 2) / 40, delta=1e-12)

  def test_leaving_the_pattern_is_reported(self):
    # From points of trained-looking relu nets the pattern-fixed minimum
    # usually lies outside the pattern; at least one of these must.
    outside = 0
    for seed in range(4):
      problem = _relu_problem(seed=seed)
      _, inside = pattern.refine_in_pattern(problem, DEFAULT, 100)
      outside += not inside
    self.assertGreater(outside, 0)


if __name__ == "__main__":
  absltest.main()
