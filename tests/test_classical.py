"""Classical optima against numpy.linalg.lstsq, scikit-learn and Monte Carlo."""

import json

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized
from sklearn import kernel_ridge
from sklearn import linear_model
from sklearn import metrics
from sklearn import preprocessing

from lminima import classical
from lminima import models

RTOL = 1e-10

NUMPY_ACTIVATIONS = {
    "relu": lambda z: np.maximum(z, 0),
    "leaky_relu": lambda z: np.where(z >= 0, z, models.LEAKY_RELU_SLOPE * z),
    "tanh": np.tanh,
    "sigmoid": lambda z: 1 / (1 + np.exp(-z)),
}


def _data(m=30, d_x=4, d_y=2, seed=0):
  rng = np.random.default_rng(seed)
  return rng.standard_normal((m, d_x)), rng.standard_normal((m, d_y))


def _lstsq_loss(design, y, c):
  """c ||Y - design beta||^2 at numpy's least-squares solution beta."""
  beta = np.linalg.lstsq(design, y, rcond=None)[0]
  return c * np.sum(np.square(y - design @ beta))


def _with_ones(a):
  return np.concatenate([a, np.ones((a.shape[0], 1))], axis=1)


def _numpy_hidden(params, x, activation, bias):
  """[h^(0) = X, h^(1), ..., h^(H)] by an independent numpy forward pass."""
  sigma = NUMPY_ACTIVATIONS[activation]
  layers = [x]
  for layer in params[:-1]:
    z = layers[-1] @ np.asarray(layer["w"], np.float64)
    if bias:
      z = z + np.asarray(layer["b"], np.float64)
    layers.append(sigma(z))
  return layers


class LinearAndBasisTest(parameterized.TestCase):

  @parameterized.product(intercept=(True, False), d_y=(1, 3))
  def test_linear_matches_lstsq_and_sklearn(self, intercept, d_y):
    x, y = _data(d_y=d_y)
    opt = classical.linear_regression_optimum(x, y, intercept=intercept)
    c = 1 / (2 * x.shape[0])
    design = _with_ones(x) if intercept else x
    np.testing.assert_allclose(opt.value, _lstsq_loss(design, y, c), rtol=RTOL)
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
    x, y = _data()
    x = np.concatenate([x, x[:, :1] + x[:, 1:2]], axis=1)  # dependent column
    opt = classical.linear_regression_optimum(x, y)
    design = _with_ones(x)
    c = 1 / (2 * x.shape[0])
    np.testing.assert_allclose(opt.value, _lstsq_loss(design, y, c), rtol=RTOL)
    self.assertEqual(opt.rank, x.shape[1])  # 5 columns + 1 ones - 1 dependent
    np.testing.assert_allclose(opt.coef, np.linalg.pinv(design) @ y,
                               atol=1e-10)

  def test_vector_targets_are_one_column(self):
    x, y = _data(d_y=1)
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
    np.testing.assert_allclose(opt.value, _lstsq_loss(design, y, 0.5),
                               rtol=RTOL)
    self.assertEqual(opt.model, "sines")
    self.assertEqual(opt.coef.shape, (design.shape[1], 2))

  def test_to_dict_is_json_ready(self):
    x, y = _data()
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
    x, _ = _data(m=9, d_x=3)
    seed = 7
    features = classical.random_features(x, 11, activation, seed=seed,
                                         bias=bias)
    # Any output width: the first layer's key does not depend on d_out.
    params = models.MLP(3, (11,), 4, activation, bias).init(
        jax.random.PRNGKey(seed), jnp.float64)
    expected = NUMPY_ACTIVATIONS[activation](x @ np.asarray(params[0]["w"]))
    np.testing.assert_allclose(features, expected, rtol=1e-13, atol=1e-14)
    self.assertFalse(np.allclose(
        features, classical.random_features(x, 11, activation, seed=seed + 1)))

  def test_random_features_optimum_matches_lstsq(self):
    x, y = _data(m=40)
    opt = classical.random_features_optimum(x, y, 12, "tanh", seed=2)
    params = models.MLP(4, (12,), 1, "tanh").init(jax.random.PRNGKey(2),
                                                  jnp.float64)
    phi = np.tanh(x @ np.asarray(params[0]["w"]))
    np.testing.assert_allclose(opt.value,
                               _lstsq_loss(_with_ones(phi), y, 1 / 80),
                               rtol=RTOL)
    self.assertEqual(opt.rank, 13)

  @parameterized.product(degree=(1, 2, 3), include_bias=(True, False))
  def test_polynomial_features_match_sklearn(self, degree, include_bias):
    x, _ = _data(m=12, d_x=3)
    ours = classical.polynomial_features(x, degree, include_bias=include_bias)
    theirs = preprocessing.PolynomialFeatures(
        degree, include_bias=include_bias).fit_transform(x)
    self.assertEqual(ours.shape, theirs.shape)

    def sorted_columns(a):
      return a[:, sorted(range(a.shape[1]), key=lambda j: tuple(a[:, j]))]

    np.testing.assert_allclose(sorted_columns(ours), sorted_columns(theirs),
                               rtol=1e-13)

  def test_polynomial_optimum_matches_lstsq(self):
    x, y = _data(m=40, d_x=3)
    opt = classical.polynomial_optimum(x, y, 2)
    phi = preprocessing.PolynomialFeatures(2).fit_transform(x)
    np.testing.assert_allclose(opt.value, _lstsq_loss(phi, y, 1 / 80),
                               rtol=RTOL)
    self.assertEqual(opt.rank, 10)

  @parameterized.product(layer=(-1, 2, 1, 0, -3), bias=(True, False),
                         param_dtype=(jnp.float64, jnp.float32))
  def test_hidden_features_optimum_matches_lstsq(self, layer, bias,
                                                 param_dtype):
    x, y = _data(m=20, d_x=3)
    model = models.MLP(3, (6, 5), 2, "tanh", bias)
    params = model.init(jax.random.PRNGKey(4), param_dtype)
    params = jax.tree_util.tree_map(  # nonzero biases, a point "at theta"
        lambda a: a + jnp.asarray(0.3, param_dtype), params)
    opt = classical.hidden_features_optimum(model, params, x, y, layer=layer)
    h = _numpy_hidden(params, x, "tanh", bias)[layer]
    np.testing.assert_allclose(
        classical.hidden_features(model, params, x, layer=layer), h,
        rtol=1e-13, atol=1e-14)
    design = _with_ones(h) if bias else h
    np.testing.assert_allclose(opt.value, _lstsq_loss(design, y, 1 / 40),
                               rtol=RTOL)
    self.assertEqual(opt.details["layer"], layer % 3)
    self.assertEqual(opt.details["intercept"], bias)

  def test_hidden_features_at_init_are_random_features(self):
    x, _ = _data(m=8, d_x=3)
    model = models.MLP(3, (9,), 2, "relu")
    params = model.init(jax.random.PRNGKey(5), jnp.float64)
    np.testing.assert_array_equal(
        classical.hidden_features(model, params, x),
        classical.random_features(x, 9, "relu", seed=5))


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
          models.MLP(4, (5,), 2), models.MLP(4, (5,), 2).init(
              jax.random.PRNGKey(0), jnp.float64), x, y, normalization=n)),
      ("kernel_ridge", lambda x, y, n: classical.kernel_regression_optimum(
          classical.rbf_kernel(x, x, lengthscale=1.0), y, ridge=0.5,
          normalization=n)),
      ("kernel_interpolation", lambda x, y, n:
       classical.kernel_regression_optimum(np.cos(x) @ np.cos(x).T, y,
                                           normalization=n)),
  )
  def test_sum_is_m_times_mean(self, optimum):
    x, y = _data()
    total, mean = optimum(x, y, "sum"), optimum(x, y, "mean")
    self.assertGreater(mean.value, 0)
    np.testing.assert_allclose(total.value, x.shape[0] * mean.value,
                               rtol=1e-13)
    np.testing.assert_array_equal(total.fitted, mean.fitted)


class KernelTest(parameterized.TestCase):

  @parameterized.parameters(0.3, 1.0, 4.0)
  def test_rbf_matches_sklearn(self, lengthscale):
    x1, _ = _data(m=7)
    x2, _ = _data(m=5, seed=1)
    np.testing.assert_allclose(
        classical.rbf_kernel(x1, x2, lengthscale=lengthscale),
        metrics.pairwise.rbf_kernel(x1, x2, gamma=0.5 / lengthscale ** 2),
        rtol=1e-12, atol=1e-300)

  @parameterized.product(ridge=(0.1, 1.0), d_y=(1, 2))
  def test_kernel_ridge_matches_sklearn(self, ridge, d_y):
    x, y = _data(m=25, d_y=d_y)
    lengthscale = 1.5
    k = classical.rbf_kernel(x, x, lengthscale=lengthscale)
    opt = classical.kernel_regression_optimum(k, y, ridge=ridge)
    c = 1 / 50
    precomputed = kernel_ridge.KernelRidge(alpha=ridge, kernel="precomputed")
    prediction = precomputed.fit(k, y).predict(k)
    rbf = kernel_ridge.KernelRidge(alpha=ridge, kernel="rbf",
                                   gamma=0.5 / lengthscale ** 2)
    rbf_prediction = rbf.fit(x, y).predict(x)
    for theirs in (prediction, rbf_prediction):
      np.testing.assert_allclose(
          opt.value, c * np.sum(np.square(y - theirs.reshape(y.shape))),
          rtol=RTOL)
      np.testing.assert_allclose(opt.fitted, theirs.reshape(y.shape),
                                 atol=RTOL * np.abs(y).max())
    np.testing.assert_allclose(opt.coef,
                               precomputed.dual_coef_.reshape(y.shape),
                               rtol=1e-9)

  def test_interpolation_full_rank_kernel_fits_exactly(self):
    x, y = _data(m=10, d_x=3)
    k = classical.rbf_kernel(x, x, lengthscale=1.0)
    opt = classical.kernel_regression_optimum(k, y)
    self.assertEqual(opt.rank, 10)
    self.assertLess(opt.value, 1e-24 * np.sum(np.square(y)))
    np.testing.assert_allclose(opt.fitted, y, atol=1e-12)
    np.testing.assert_allclose(k @ opt.coef, y, atol=1e-9)

  def test_interpolation_rank_deficient_kernel_is_projection(self):
    rng = np.random.default_rng(3)
    features = rng.standard_normal((12, 4))
    y = rng.standard_normal((12, 2))
    k = features @ features.T  # rank 4
    opt = classical.kernel_regression_optimum(k, y)
    self.assertEqual(opt.rank, 4)
    np.testing.assert_allclose(opt.value, _lstsq_loss(features, y, 1 / 24),
                               rtol=RTOL)
    # The ridge fit tends to the interpolating limit as ridge -> 0+.
    tiny = classical.kernel_regression_optimum(k, y, ridge=1e-9)
    np.testing.assert_allclose(tiny.value, opt.value, rtol=1e-6)

  @parameterized.parameters((1, 2.0, 0.0), (2, 2.0, 0.1), (3, 1.5, 0.3))
  def test_relu_nngp_matches_monte_carlo_networks(self, depth, weight_var,
                                                  bias_var):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 3))
    x[1] = 0.9 * x[0] + 0.1 * x[1]  # a highly correlated pair
    estimates = _monte_carlo_relu_kernel(x, depth, weight_var, bias_var,
                                         width=20_000, n_networks=64, rng=rng)
    mean = estimates.mean(axis=0)
    std_error = estimates.std(axis=0, ddof=1) / np.sqrt(len(estimates))
    kernel = classical.relu_nngp_kernel(x, x, depth=depth,
                                        weight_var=weight_var,
                                        bias_var=bias_var)
    # Finite-width bias is O(1/width), far below the O(1/sqrt(width * n))
    # standard error, so a 5-sigma band is a sound test.
    self.assertLess(np.max(np.abs(mean - kernel) / std_error), 5.0)
    # The band is tight enough to tell neighbouring depths apart.
    wrong = classical.relu_nngp_kernel(x, x, depth=depth + 1,
                                       weight_var=weight_var,
                                       bias_var=bias_var)
    self.assertGreater(np.max(np.abs(mean - wrong) / std_error), 20.0)

  @parameterized.parameters((2.0, 0.0), (1.0, 0.5))
  def test_relu_nngp_depth_one_is_arc_cosine(self, weight_var, bias_var):
    x1, _ = _data(m=6, d_x=3)
    x2, _ = _data(m=4, d_x=3, seed=1)
    x2[0] = -x1[0]  # an antipodal pair, angle pi

    def augment(a):
      # u = w . (sqrt(weight_var / d) x) + sqrt(bias_var) g with w, g standard.
      constant = np.full((len(a), 1), np.sqrt(bias_var))
      return np.concatenate([np.sqrt(weight_var / 3) * a, constant], axis=1)

    a1, a2 = augment(x1), augment(x2)
    norms = np.outer(np.linalg.norm(a1, axis=1), np.linalg.norm(a2, axis=1))
    angle = np.arccos(np.clip(a1 @ a2.T / norms, -1, 1))
    # Cho & Saul (2009): E[relu(w.a) relu(w.b)] = |a||b| J1(angle) / (2 pi).
    arc_cosine = norms * (np.sin(angle) + (np.pi - angle) * np.cos(angle)) / (
        2 * np.pi)
    np.testing.assert_allclose(
        classical.relu_nngp_kernel(x1, x2, depth=1, weight_var=weight_var,
                                   bias_var=bias_var),
        bias_var + weight_var * arc_cosine, rtol=1e-12)

  def test_relu_nngp_structure(self):
    x1, _ = _data(m=6, d_x=3)
    x2, _ = _data(m=4, d_x=3, seed=1)
    np.testing.assert_allclose(
        classical.relu_nngp_kernel(x1, x2, depth=0, weight_var=1.5,
                                   bias_var=0.2), 0.2 + 1.5 * x1 @ x2.T / 3,
        rtol=1e-13)
    np.testing.assert_allclose(
        classical.relu_nngp_kernel(x1, x2, depth=3),
        classical.relu_nngp_kernel(x2, x1, depth=3).T, rtol=1e-13)
    # He scaling (weight_var = 2, no bias) keeps E h^2 constant over depth.
    np.testing.assert_allclose(
        np.diag(classical.relu_nngp_kernel(x1, x1, depth=4)),
        2 * np.sum(x1 ** 2, axis=1) / 3, rtol=1e-13)
    zero = classical.relu_nngp_kernel(np.zeros((1, 3)), x2, depth=2)
    np.testing.assert_array_equal(zero, np.zeros((1, 4)))


def _monte_carlo_relu_kernel(x, depth, weight_var, bias_var, width,
                             n_networks, rng):
  """Per-network estimates bias_var + weight_var * (1/n) h^(H) h^(H)^T.

  Each network has ``depth`` ReLU layers of ``width`` units with
  W_ij ~ N(0, weight_var / fan_in) and b_j ~ N(0, bias_var). Given h^(l-1),
  the columns of Z^(l) = h^(l-1) W + b are independent N(0, G) over the
  samples with G = weight_var / fan_in h h^T + bias_var, so drawing them
  from G is exactly that random layer, at m * width draws, not
  fan_in * width.
  """
  estimates = []
  for _ in range(n_networks):
    h = x
    for _ in range(depth):
      gram = weight_var / h.shape[1] * h @ h.T + bias_var
      eigenvalues, eigenvectors = np.linalg.eigh(gram)
      root = eigenvectors * np.sqrt(np.clip(eigenvalues, 0, None))
      h = np.maximum(root @ rng.standard_normal((len(x), width)), 0)
    estimates.append(bias_var + weight_var * h @ h.T / width)
  return np.array(estimates)


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
          models.MLP(4, (3,), 2), models.MLP(4, (3,), 2).init(
              jax.random.PRNGKey(0)), x, layer=2), "layer"),
      ("hidden_d_in", lambda x, y: classical.hidden_features_optimum(
          models.MLP(3, (3,), 2), models.MLP(3, (3,), 2).init(
              jax.random.PRNGKey(0)), x, y), "d_in"),
      ("lengthscale", lambda x, y: classical.rbf_kernel(
          x, x, lengthscale=0.0), "lengthscale"),
      ("kernel_dims", lambda x, y: classical.rbf_kernel(
          x, x[:, :2], lengthscale=1.0), "columns"),
      ("depth", lambda x, y: classical.relu_nngp_kernel(x, x, depth=-1),
       "depth"),
      ("weight_var", lambda x, y: classical.relu_nngp_kernel(
          x, x, depth=1, weight_var=0.0), "weight_var"),
      ("bias_var", lambda x, y: classical.relu_nngp_kernel(
          x, x, depth=1, bias_var=-1.0), "bias_var"),
      ("kernel_square", lambda x, y: classical.kernel_regression_optimum(
          x, y), "square"),
      ("kernel_symmetric", lambda x, y: classical.kernel_regression_optimum(
          np.triu(x @ x.T), y), "symmetric"),
      ("ridge_negative", lambda x, y: classical.kernel_regression_optimum(
          x @ x.T, y, ridge=-1e-3), "ridge"),
      ("kernel_indefinite", lambda x, y: classical.kernel_regression_optimum(
          -x @ x.T, y, ridge=1e-3), "positive definite"),
      ("kernel_y_rows", lambda x, y: classical.kernel_regression_optimum(
          x @ x.T, y[:-1]), "rows"),
  )
  def test_raises(self, call, message):
    x, y = _data()
    with self.assertRaisesRegex(ValueError, message):
      call(x, y)


if __name__ == "__main__":
  absltest.main()
