"""The balanced norm of a positively homogeneous MLP (lminima.core.rescaling)."""

import jax
import numpy as np
import scipy.optimize
from absl.testing import absltest, parameterized

from lminima.core import rescaling
from lminima.core.models import MLP


def _arrays(model, seed):
  return jax.tree_util.tree_map(np.array, model.init_params(
      jax.random.PRNGKey(seed), np.float64))


def _rescaled(model, variables, log_scales):
  """The variables with hidden layer l's units scaled by exp(log_scales[l])
  (incoming weights and bias times a, outgoing weights over a)."""
  out = jax.tree_util.tree_map(np.array, variables)
  p = out["params"]
  for l, s in enumerate(log_scales, start=1):
    a = np.exp(s)
    p[f"layer_{l}"]["kernel"] *= a[None, :]
    if "bias" in p[f"layer_{l}"]:
      p[f"layer_{l}"]["bias"] *= a
    p[f"layer_{l + 1}"]["kernel"] /= a[:, None]
  return out


def _norm(variables):
  return float(np.sqrt(sum(np.sum(np.asarray(v) ** 2)
                           for v in jax.tree_util.tree_leaves(variables))))


class BalancedNormTest(parameterized.TestCase):

  def test_one_hidden_layer_has_a_closed_form(self):
    model = MLP(3, (4,), 2, "relu")
    variables = _arrays(model, 0)
    q = variables["params"]
    w, b = q["layer_1"]["kernel"], q["layer_1"]["bias"]
    v, c = q["layer_2"]["kernel"], q["layer_2"]["bias"]
    w[:, 2], b[2] = 0.0, 0.0  # a dead unit: no contribution in the infimum
    expected = np.sqrt(sum(
        2 * np.sqrt(np.sum(w[:, j] ** 2) + b[j] ** 2) * np.linalg.norm(v[j])
        for j in range(4)) + np.sum(c ** 2))
    self.assertAlmostEqual(rescaling.balanced_norm(model, variables),
                           expected, places=12)

  @parameterized.parameters(
      ((5, 4), "relu", True, False), ((3, 4, 2), "leaky_relu", True, True),
      ((4, 3), "identity", False, False))
  def test_deep_nets_against_a_direct_minimization(self, widths, activation,
                                                   bias, skip):
    model = MLP(3, widths, 2, activation, bias=bias, skip=skip)
    variables = _arrays(model, 1)
    sizes = np.cumsum((0,) + widths)

    def squared_norm(t):
      return _norm(_rescaled(model, variables, [
          t[sizes[i]:sizes[i + 1]] for i in range(len(widths))])) ** 2
    reference = scipy.optimize.minimize(
        squared_norm, np.zeros(sizes[-1]), method="BFGS",
        options={"gtol": 1e-12, "maxiter": 5000})
    got = rescaling.balanced_norm(model, variables)
    self.assertAlmostEqual(got ** 2 / reference.fun, 1.0, places=7)
    self.assertLess(got, _norm(variables))

  def test_the_same_on_a_rescaling_orbit(self):
    model = MLP(4, (6, 5, 3), 2, "relu")
    variables = _arrays(model, 2)
    rng = np.random.default_rng(0)
    scaled = _rescaled(model, variables,
                       [rng.normal(0, 2, w) for w in (6, 5, 3)])
    self.assertGreater(_norm(scaled), 2 * _norm(variables))
    self.assertAlmostEqual(rescaling.balanced_norm(model, scaled)
                           / rescaling.balanced_norm(model, variables), 1.0,
                           places=9)

  def test_only_homogeneous_mlps_are_rescalable(self):
    self.assertTrue(rescaling.rescalable(MLP(2, (3,), 1, "relu")))
    self.assertFalse(rescaling.rescalable(MLP(2, (3,), 1, "tanh")))
    self.assertFalse(rescaling.rescalable(MLP(2, (), 1, "relu")))
    model = MLP(2, (3,), 1, "tanh")
    with self.assertRaisesRegex(ValueError, "positively homogeneous"):
      rescaling.balanced_norm(model, _arrays(model, 0))


if __name__ == "__main__":
  absltest.main()
