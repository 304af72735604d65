"""Classical optima against numpy.linalg.lstsq and scikit-learn.

Kernel regression is tested in test_kernel_regression.py.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized
from sklearn import linear_model
from sklearn import preprocessing

import lminima
from lminima.core import models
from lminima.theory import classical

from _helpers import assert_raises_on_data, assert_sum_is_m_times_mean
from _helpers import gaussian_data, lstsq_loss

RTOL = 1e-10

NUMPY_ACTIVATIONS = {
    "relu": lambda z: np.maximum(z, 0),
    "leaky_relu": lambda z: np.where(z >= 0, z, models.LEAKY_RELU_SLOPE * z),
    "tanh": np.tanh,
    "sigmoid": lambda z: 1 / (1 + np.exp(-z)),
}


def _with_ones(a):
  return np.concatenate([a, np.ones((a.shape[0], 1))], axis=1)


def _numpy_hidden(variables, x, activation, bias):
  """[h^(0) = X, h^(1), ..., h^(H)] by an independent numpy forward pass."""
  sigma = NUMPY_ACTIVATIONS[activation]
  params = variables["params"]
  layers = [x]
  for l in range(1, len(params)):
    z = layers[-1] @ np.asarray(params[f"layer_{l}"]["kernel"], np.float64)
    if bias:
      z = z + np.asarray(params[f"layer_{l}"]["bias"], np.float64)
    layers.append(sigma(z))
  return layers


def _first_kernel(d_in, width, d_out, activation, bias, seed):
  """W^(1) of MLP(...).init_params(PRNGKey(seed), float64)."""
  variables = models.MLP(d_in, (width,), d_out, activation, bias).init_params(
      jax.random.PRNGKey(seed), jnp.float64)
  return np.asarray(variables["params"]["layer_1"]["kernel"])


def _problem(model, variables, x, y=None, **kwargs):
  y = np.zeros((x.shape[0], model.d_out)) if y is None else y
  return lminima.Problem.for_module(model, variables, x, y, **kwargs)


def _two_layer(params, x):
  return jnp.tanh(x @ params["w1"]) @ params["w2"]


class LinearAndBasisTest(parameterized.TestCase):

  @parameterized.product(intercept=(True, False), d_y=(1, 3))
  def test_linear_matches_lstsq_and_sklearn(self, intercept, d_y):
    x, y = gaussian_data(d_y=d_y)
    opt = classical.linear_regression_optimum(x, y, intercept=intercept)
    c = 1 / (2 * x.shape[0])
    design = _with_ones(x) if intercept else x
    np.testing.assert_allclose(opt.value, lstsq_loss(design, y, c), rtol=RTOL)
    prediction = linear_model.LinearRegression(
        fit_intercept=intercept).fit(x, y).predict(x)
    np.testing.assert_allclose(
        opt.value, c * np.sum(np.square(y - prediction)), rtol=RTOL)
    np.testing.assert_allclose(opt.fitted, prediction, rtol=0,
                               atol=RTOL * np.abs(y).max())
    np.testing.assert_allclose(design @ opt.coef, opt.fitted, atol=1e-12)
    self.assertEqual(opt.rank, x.shape[1] + intercept)
    self.assertEqual(opt.fitted.shape, y.shape)

  def test_linear_rank_deficient_least_norm(self):
    x, y = gaussian_data()
    x = np.concatenate([x, x[:, :1] + x[:, 1:2]], axis=1)  # dependent column
    opt = classical.linear_regression_optimum(x, y)
    design = _with_ones(x)
    c = 1 / (2 * x.shape[0])
    np.testing.assert_allclose(opt.value, lstsq_loss(design, y, c), rtol=RTOL)
    self.assertEqual(opt.rank, x.shape[1])  # 5 columns + 1 ones - 1 dependent
    np.testing.assert_allclose(opt.coef, np.linalg.pinv(design) @ y,
                               atol=1e-10)

  def test_vector_targets_are_one_column(self):
    x, y = gaussian_data(d_y=1)
    vector = classical.linear_regression_optimum(x, y[:, 0])
    matrix = classical.linear_regression_optimum(x, y)
    self.assertEqual(vector.fitted.shape, (x.shape[0], 1))
    self.assertEqual(vector.value, matrix.value)

  @parameterized.parameters(True, False)
  def test_basis_matches_lstsq(self, intercept):
    rng = np.random.default_rng(1)
    phi = np.sin(rng.standard_normal((25, 7)))
    y = rng.standard_normal((25, 2))
    opt = classical.basis_function_optimum(phi, y, intercept=intercept,
                                           normalization="sum", name="sines")
    design = _with_ones(phi) if intercept else phi
    np.testing.assert_allclose(opt.value, lstsq_loss(design, y, 0.5),
                               rtol=RTOL)
    self.assertEqual(opt.model, "sines")
    self.assertEqual(opt.coef.shape, (design.shape[1], 2))

  def test_to_dict_is_json_ready(self):
    x, y = gaussian_data()
    opt = classical.random_features_optimum(x, y, 5, "relu", seed=3)
    record = json.loads(json.dumps(opt.to_dict()))
    self.assertEqual(record["model"], "random_features")
    self.assertEqual(record["value"], opt.value)
    self.assertEqual(record["rank"], opt.rank)
    self.assertEqual(record["details"]["width"], 5)
    self.assertEqual(record["details"]["n_samples"], x.shape[0])


class FeatureMapTest(parameterized.TestCase):

  @parameterized.product(activation=("relu", "tanh"), bias=(True, False))
  def test_random_features_reproduce_mlp_init(self, activation, bias):
    x, _ = gaussian_data(m=9, d_x=3)
    seed = 7
    features = classical.random_features(x, 11, activation, seed=seed,
                                         bias=bias)
    # Any output width: the first layer's key does not depend on d_out.
    expected = NUMPY_ACTIVATIONS[activation](
        x @ _first_kernel(3, 11, 4, activation, bias, seed))
    np.testing.assert_allclose(features, expected, rtol=1e-13, atol=1e-14)
    self.assertFalse(np.allclose(
        features, classical.random_features(x, 11, activation, seed=seed + 1)))

  def test_random_features_optimum_matches_lstsq(self):
    x, y = gaussian_data(m=40)
    opt = classical.random_features_optimum(x, y, 12, "tanh", seed=2)
    phi = np.tanh(x @ _first_kernel(4, 12, 1, "tanh", True, 2))
    np.testing.assert_allclose(opt.value,
                               lstsq_loss(_with_ones(phi), y, 1 / 80),
                               rtol=RTOL)
    self.assertEqual(opt.rank, 13)

  @parameterized.product(degree=(1, 2, 3), include_bias=(True, False))
  def test_polynomial_features_match_sklearn(self, degree, include_bias):
    x, _ = gaussian_data(m=12, d_x=3)
    ours = classical.polynomial_features(x, degree, include_bias=include_bias)
    theirs = preprocessing.PolynomialFeatures(
        degree, include_bias=include_bias).fit_transform(x)
    self.assertEqual(ours.shape, theirs.shape)

    def sorted_columns(a):
      return a[:, sorted(range(a.shape[1]), key=lambda j: tuple(a[:, j]))]

    np.testing.assert_allclose(sorted_columns(ours), sorted_columns(theirs),
                               rtol=1e-13)

  def test_polynomial_optimum_matches_lstsq(self):
    x, y = gaussian_data(m=40, d_x=3)
    opt = classical.polynomial_optimum(x, y, 2)
    phi = preprocessing.PolynomialFeatures(2).fit_transform(x)
    np.testing.assert_allclose(opt.value, lstsq_loss(phi, y, 1 / 80),
                               rtol=RTOL)
    self.assertEqual(opt.rank, 10)

  @parameterized.product(layer=(-1, 2, 1, 0, -3), bias=(True, False),
                         param_dtype=(jnp.float64, jnp.float32))
  def test_hidden_features_optimum_matches_lstsq(self, layer, bias,
                                                 param_dtype):
    x, y = gaussian_data(m=20, d_x=3)
    model = models.MLP(3, (6, 5), 2, "tanh", bias)
    variables = model.init_params(jax.random.PRNGKey(4), param_dtype)
    variables = jax.tree_util.tree_map(  # nonzero biases, a point "at theta"
        lambda a: a + jnp.asarray(0.3, param_dtype), variables)
    problem = _problem(model, variables, x, y)
    opt = classical.hidden_features_optimum(problem, layer=layer)
    h = _numpy_hidden(variables, x, "tanh", bias)[layer]
    np.testing.assert_allclose(
        classical.hidden_features(problem, layer=layer), h,
        rtol=1e-13, atol=1e-14)
    design = _with_ones(h) if bias else h
    np.testing.assert_allclose(opt.value, lstsq_loss(design, y, 1 / 40),
                               rtol=RTOL)
    self.assertEqual(opt.rank, np.linalg.matrix_rank(design))
    self.assertEqual(opt.details["layer"], layer % 3)
    self.assertEqual(opt.details["intercept"], bias)
    self.assertEqual(opt.details["widths"], [6, 5])

  def test_hidden_features_intercept_override(self):
    x, y = gaussian_data(m=20, d_x=3)
    model = models.MLP(3, (6,), 2, "tanh", True)
    problem = _problem(model, model.init_params(jax.random.PRNGKey(1)), x, y)
    h = _numpy_hidden(problem.params, x, "tanh", True)[-1]
    opt = classical.hidden_features_optimum(problem, intercept=False)
    np.testing.assert_allclose(opt.value, lstsq_loss(h, y, 1 / 40),
                               rtol=RTOL)
    self.assertEqual(opt.rank, 6)
    self.assertFalse(opt.details["intercept"])

  def test_hidden_features_at_init_are_random_features(self):
    x, _ = gaussian_data(m=8, d_x=3)
    model = models.MLP(3, (9,), 2, "relu")
    problem = _problem(model, model.init_params(jax.random.PRNGKey(5),
                                                jnp.float64), x)
    np.testing.assert_array_equal(
        classical.hidden_features(problem),
        classical.random_features(x, 9, "relu", seed=5))

  def test_hidden_features_optimum_is_the_loss_at_a_critical_point(self):
    # Identity (A), last-layer form: at a critical point the output layer is
    # the least-squares fit on the last hidden layer.
    # Noisy data of a random teacher, refined from near the teacher.
    rng = np.random.default_rng(4)
    model = models.MLP(3, (3,), 2, "tanh", True)
    x = rng.standard_normal((40, 3))
    teacher = jax.tree_util.tree_map(
        lambda a: np.asarray(a) + 0.3 * rng.standard_normal(a.shape),
        model.init_params(jax.random.PRNGKey(4), jnp.float64))
    y = np.asarray(model.apply(teacher, x)) + 0.1 * rng.standard_normal(
        (40, 2))
    start = _problem(model, jax.tree_util.tree_map(
        lambda a: a + 0.05 * rng.standard_normal(a.shape), teacher), x, y)
    problem = start.at(lminima.refine(start).params)
    h = _numpy_hidden(problem.params, x, "tanh", True)[-1]
    params = problem.params["params"]["layer_2"]
    yhat = h @ np.asarray(params["kernel"]) + np.asarray(params["bias"])
    gradient = (_with_ones(h).T @ (yhat - y)) / 40  # output-layer gradient
    self.assertLess(np.max(np.abs(gradient)), 1e-10)
    loss = np.sum((yhat - y) ** 2) / 80
    self.assertGreater(loss, 1e-4)
    opt = classical.hidden_features_optimum(problem)
    self.assertAlmostEqual(opt.value, loss, delta=1e-10 * loss)
    np.testing.assert_allclose(opt.fitted, yhat, atol=1e-8)
    # Before refinement the output layer is not optimal: strictly above.
    self.assertGreater(start.loss,
                       classical.hidden_features_optimum(start).value + 1e-3)


class NormalizationTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ("linear", lambda x, y, n: classical.linear_regression_optimum(
          x, y, normalization=n)),
      ("basis", lambda x, y, n: classical.basis_function_optimum(
          np.cos(x), y, normalization=n)),
      ("random_features", lambda x, y, n: classical.random_features_optimum(
          x, y, 6, "relu", seed=0, normalization=n)),
      ("polynomial", lambda x, y, n: classical.polynomial_optimum(
          x, y, 2, normalization=n)),
      ("hidden", lambda x, y, n: classical.hidden_features_optimum(
          _problem(models.MLP(4, (5,), 2), models.MLP(4, (5,), 2).init_params(
              jax.random.PRNGKey(0), jnp.float64), x, y, normalization=n))),
  )
  def test_sum_is_m_times_mean(self, optimum):
    assert_sum_is_m_times_mean(self, optimum)


class BadInputTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ("x_vector", lambda x, y: classical.linear_regression_optimum(x[:, 0], y),
       "2-D"),
      ("x_nan", lambda x, y: classical.linear_regression_optimum(
          np.where(x > 1, np.nan, x), y), "NaN"),
      ("y_inf", lambda x, y: classical.linear_regression_optimum(
          x, np.where(y > 1, np.inf, y)), "NaN or inf"),
      ("y_rows", lambda x, y: classical.linear_regression_optimum(x, y[:-1]),
       "rows"),
      ("y_3d", lambda x, y: classical.linear_regression_optimum(
          x, y[:, :, None]), "2-D"),
      ("no_samples", lambda x, y: classical.linear_regression_optimum(
          x[:0], y[:0]), "m = 0"),
      ("normalization", lambda x, y: classical.linear_regression_optimum(
          x, y, normalization="median"), "normalization"),
      ("no_columns", lambda x, y: classical.basis_function_optimum(
          x[:, :0], y), "no columns"),
      ("width_zero", lambda x, y: classical.random_features(
          x, 0, "relu", seed=0), "width"),
      ("width_float", lambda x, y: classical.random_features_optimum(
          x, y, 2.5, "relu", seed=0), "width"),
      ("activation", lambda x, y: classical.random_features(
          x, 3, "swish", seed=0), "activation"),
      ("degree_zero", lambda x, y: classical.polynomial_features(x, 0),
       "degree"),
      ("degree_negative", lambda x, y: classical.polynomial_optimum(x, y, -1),
       "degree"),
      ("layer_range", lambda x, y: classical.hidden_features(
          _problem(models.MLP(4, (3,), 2), models.MLP(4, (3,), 2).init_params(
              jax.random.PRNGKey(0)), x), layer=2),
       r"layer must be .*\[-2, 1\]"),
      ("layer_bool", lambda x, y: classical.hidden_features_optimum(
          _problem(models.MLP(4, (3,), 2), models.MLP(4, (3,), 2).init_params(
              jax.random.PRNGKey(0)), x), layer=True), "layer must be"),
      ("hidden_not_mlp", lambda x, y: classical.hidden_features(
          lminima.Problem(_two_layer, {"w1": np.ones((4, 3)),
                                       "w2": np.ones((3, 2))}, x, y)),
       "needs a problem of an lminima.core.models.MLP"),
      ("hidden_optimum_not_mlp", lambda x, y:
       classical.hidden_features_optimum(
           lminima.Problem(_two_layer, {"w1": np.ones((4, 3)),
                                        "w2": np.ones((3, 2))}, x, y)),
       "needs a problem of an lminima.core.models.MLP"),
  )
  def test_raises(self, call, message):
    assert_raises_on_data(self, call, message)


if __name__ == "__main__":
  absltest.main()
