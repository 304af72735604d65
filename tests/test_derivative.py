"""Tests of lminima.core.derivative: D(theta) against independent references.

References: central finite differences of the outputs, jax.grad of a loss
written out here, closed forms of the blocks from a numpy forward pass.
"""

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
import numpy as np

import lminima
from lminima.core import derivative
from lminima.core.models import ACTIVATIONS, MLP

NUMPY_ACTIVATIONS = {
    "relu": lambda z: np.maximum(z, 0),
    "leaky_relu": lambda z: np.where(z >= 0, z, 0.01 * z),
    "tanh": np.tanh,
    "softplus": lambda z: np.logaddexp(0, z),
    "sigmoid": lambda z: 1 / (1 + np.exp(-z)),
    "identity": lambda z: z,
}


def _c(normalization, m):
  """The loss constant, written out (not lminima.core.losses.loss_scale)."""
  return {"sum": 0.5, "mean": 0.5 / m}[normalization]


def _perturbed(variables, rng, scale):
  """float64 variables plus N(0, scale^2) noise (makes zero biases nonzero)."""
  return jax.tree_util.tree_map(
      lambda a: np.asarray(a, np.float64) + scale * rng.standard_normal(
          np.shape(a)), variables)


def _random_problem(activation, bias, widths=(4, 3), d_in=3, d_out=2, m=7,
                    seed=0, normalization="mean", **kwargs):
  model = MLP(d_in, widths, d_out, activation, bias)
  rng = np.random.default_rng(seed)
  variables = _perturbed(model.init_params(jax.random.PRNGKey(seed)), rng,
                         0.3)
  x = rng.standard_normal((m, d_in))
  y = rng.standard_normal((m, d_out))
  return lminima.Problem.for_module(model, variables, x, y,
                                    normalization=normalization, **kwargs)


def _numpy_hidden(variables, x, activation, bias):
  """[h^(0) = X, ..., h^(H)] by a numpy forward pass."""
  params = variables["params"]
  n_layers = len(params)
  sigma = NUMPY_ACTIVATIONS[activation]
  layers = [np.asarray(x)]
  for l in range(1, n_layers):
    z = layers[-1] @ np.asarray(params[f"layer_{l}"]["kernel"])
    if bias:
      z = z + np.asarray(params[f"layer_{l}"]["bias"])
    layers.append(sigma(z))
  return layers


def _central_differences(apply_fn, params, x, step=1e-6):
  """d vec(apply_fn(theta, x)) / d theta by central differences (columns in
  ravel_pytree order)."""
  flat, unravel = ravel_pytree(params)
  flat = np.asarray(flat)
  columns = []
  for j in range(flat.size):
    e = np.zeros(flat.size)
    e[j] = step
    plus = np.asarray(apply_fn(unravel(flat + e), x)).reshape(-1)
    minus = np.asarray(apply_fn(unravel(flat - e), x)).reshape(-1)
    columns.append((plus - minus) / (2 * step))
  return np.stack(columns, axis=1)


def _two_layer(params, x):
  """A plain-function model (no flax): tanh hidden layer, linear output."""
  h = jnp.tanh(x @ params["w1"] + params["b1"])
  return h @ params["w2"] + params["b2"]


class DerivativeMatrixTest(parameterized.TestCase):

  # Every activation, each bias setting three times (one compilation each).
  @parameterized.parameters(*zip(sorted(ACTIVATIONS), (True, False) * 3))
  def test_gradient_is_2c_dt_residual(self, activation, bias):
    for normalization in ("mean", "sum"):
      problem = _random_problem(activation, bias, normalization=normalization)
      d = problem.derivative()
      model, x, y = problem.module, problem.x, np.asarray(problem.y)
      c = _c(normalization, x.shape[0])
      grad = ravel_pytree(jax.grad(
          lambda v: c * jnp.sum((model.apply(v, x) - y) ** 2))(
              problem.params))[0]
      predicted = 2 * c * d.matrix.T @ (d.yhat - y).reshape(-1)
      np.testing.assert_allclose(predicted, grad, rtol=0,
                                 atol=1e-12 * np.linalg.norm(grad))
      np.testing.assert_allclose(problem.grad, grad, rtol=0,
                                 atol=1e-12 * np.linalg.norm(grad))
      self.assertEqual(d.matrix.shape, (x.shape[0] * 2, model.n_params))
      self.assertEqual(d.matrix.dtype, np.float64)

  @parameterized.parameters("tanh", "softplus")
  def test_matches_central_differences(self, activation):
    problem = _random_problem(activation, True, widths=(3,), m=4)
    fd = _central_differences(problem.apply_fn, problem.params, problem.x)
    np.testing.assert_allclose(problem.derivative().matrix, fd, rtol=0,
                               atol=1e-8)

  def test_yhat_is_the_output(self):
    problem = _random_problem("tanh", True)
    want = _numpy_hidden(problem.params, problem.x, "tanh", True)[-1] @ (
        np.asarray(problem.params["params"]["layer_3"]["kernel"])) + (
            np.asarray(problem.params["params"]["layer_3"]["bias"]))
    np.testing.assert_allclose(problem.derivative().yhat, want, rtol=1e-13,
                               atol=1e-14)

  def test_column_slices_follow_ravel_order(self):
    problem = _random_problem("tanh", True)
    d = problem.derivative()
    # ravel_pytree sorts dict keys: bias before kernel within a layer.
    self.assertEqual(list(d.column_slices), [
        "layer_1/bias", "layer_1/kernel", "layer_2/bias", "layer_2/kernel",
        "layer_3/bias", "layer_3/kernel"])
    flat = np.asarray(ravel_pytree(problem.params)[0])
    stop = 0
    for name, columns in d.column_slices.items():
      layer, leaf = name.split("/")
      value = np.asarray(problem.params["params"][layer][leaf])
      self.assertEqual(columns.start, stop, name)
      stop = columns.stop
      np.testing.assert_array_equal(flat[columns], value.reshape(-1))
      self.assertEqual(d.block(name).shape, (d.matrix.shape[0], value.size))
    self.assertEqual(stop, problem.n_params)

  @parameterized.parameters(True, False)
  def test_output_blocks_are_kronecker_products(self, bias):
    problem = _random_problem("softplus", bias)
    d = problem.derivative()
    hidden = _numpy_hidden(problem.params, problem.x, "softplus", bias)[-1]
    eye = np.eye(problem.d_y)
    np.testing.assert_allclose(d.block("layer_3/kernel"),
                               np.kron(hidden, eye), rtol=1e-13, atol=1e-14)
    if bias:
      np.testing.assert_array_equal(d.block("layer_3/bias"),
                                    np.kron(np.ones((problem.m, 1)), eye))
    else:
      self.assertNotIn("layer_3/bias", d.column_slices)

  def test_first_layer_block_closed_form(self):
    # yhat[i,k] = sum_b tanh(z[i,b]) W2[b,k] + b2[k], z = x W1 + b1, so
    # d yhat[i,k] / d W1[a,b] = x[i,a] tanh'(z[i,b]) W2[b,k].
    problem = _random_problem("tanh", True, widths=(5,))
    params = problem.params["params"]
    x = np.asarray(problem.x)
    w1 = np.asarray(params["layer_1"]["kernel"])
    b1 = np.asarray(params["layer_1"]["bias"])
    w2 = np.asarray(params["layer_2"]["kernel"])
    slope = 1 - np.tanh(x @ w1 + b1) ** 2
    rows = x.shape[0] * problem.d_y
    want_w = np.einsum("ia,ib,bk->ikab", x, slope, w2).reshape(rows, -1)
    want_b = np.einsum("ib,bk->ikb", slope, w2).reshape(rows, -1)
    d = problem.derivative()
    np.testing.assert_allclose(d.block("layer_1/kernel"), want_w, atol=1e-14)
    np.testing.assert_allclose(d.block("layer_1/bias"), want_b, atol=1e-14)

  def test_custom_callable_model(self):
    rng = np.random.default_rng(2)
    params = {"w1": rng.standard_normal((2, 3)), "b1": rng.standard_normal(3),
              "w2": rng.standard_normal((3, 2)), "b2": rng.standard_normal(2)}
    x, y = rng.standard_normal((5, 2)), rng.standard_normal((5, 2))
    problem = lminima.Problem(_two_layer, params, x, y)
    d = problem.derivative()
    self.assertEqual(list(d.column_slices), ["b1", "b2", "w1", "w2"])
    np.testing.assert_allclose(d.matrix,
                               _central_differences(_two_layer, params, x),
                               rtol=0, atol=1e-8)
    # Output weights: d yhat[i,k] / d w2[a,k'] = h[i,a] delta_kk'.
    hidden = np.tanh(x @ params["w1"] + params["b1"])
    np.testing.assert_allclose(d.block("w2"), np.kron(hidden, np.eye(2)),
                               rtol=1e-13, atol=1e-14)

  def test_nbytes_and_budget(self):
    problem = _random_problem("relu", True)
    nbytes = derivative.derivative_matrix_nbytes(problem)
    self.assertEqual(nbytes, problem.derivative().matrix.nbytes)
    self.assertEqual(nbytes, 7 * 2 * problem.n_params * 8)
    at_budget = _random_problem("relu", True, memory_budget_bytes=nbytes)
    self.assertIsNone(derivative.skip_reason(at_budget))
    np.testing.assert_array_equal(at_budget.derivative().matrix,
                                  problem.derivative().matrix)
    over = _random_problem("relu", True, memory_budget_bytes=nbytes - 1)
    self.assertIn("memory budget", derivative.skip_reason(over))
    with self.assertRaisesRegex(ValueError, "memory budget"):
      over.derivative()
    with self.assertRaisesRegex(ValueError, "memory budget"):
      derivative.derivative_matrix(over)

  def test_cached_per_point(self):
    problem = _random_problem("tanh", True)
    self.assertIs(problem.derivative(), problem.derivative())
    moved = problem.at(_perturbed(problem.params, np.random.default_rng(1),
                                  0.1))
    self.assertFalse(np.allclose(moved.derivative().matrix,
                                 problem.derivative().matrix))
    fd = _central_differences(moved.apply_fn, moved.params, moved.x)
    np.testing.assert_allclose(moved.derivative().matrix, fd, atol=1e-8)

  def test_bad_inputs(self):
    problem = _random_problem("tanh", True)
    model, variables = problem.module, problem.params
    x, y = np.asarray(problem.x), np.asarray(problem.y)
    bad_x = x.copy()
    bad_x[0, 0] = np.nan
    bad_y = y.copy()
    bad_y[1, 1] = np.inf
    bad_params = _perturbed(variables, np.random.default_rng(0), 0.0)
    bad_params["params"]["layer_1"]["kernel"][0, 0] = np.nan
    cases = {
        "apply_fn.*failed": (variables, x[:, :2], y),
        "apply_fn.*has shape": (variables, x, y[:, :1]),
        "y has 6 rows but x has 7": (variables, x, y[:-1]),
        "x contains NaN": (variables, bad_x, y),
        "y contains NaN": (variables, x, bad_y),
        "params contains NaN": (bad_params, x, y),
    }
    for message, (v, xx, yy) in cases.items():
      with self.subTest(message), self.assertRaisesRegex(ValueError, message):
        lminima.Problem.for_module(model, v, xx, yy)
    swapped = {"params": {"layer_1": variables["params"]["layer_3"],
                          "layer_2": variables["params"]["layer_2"],
                          "layer_3": variables["params"]["layer_1"]}}
    with self.assertRaisesRegex(ValueError, "layer_1: expected shapes"):
      lminima.Problem.for_module(model, swapped, x, y)
    with self.assertRaisesRegex(ValueError, "structure"):
      problem.at({"params": {"layer_1": variables["params"]["layer_1"]}})
    with self.assertRaisesRegex(ValueError, "unknown block"):
      problem.derivative().block("layer_9/kernel")
    with self.assertRaisesRegex(ValueError, "memory_budget_bytes"):
      lminima.Problem.for_module(model, variables, x, y,
                                 memory_budget_bytes=0)


if __name__ == "__main__":
  absltest.main()
