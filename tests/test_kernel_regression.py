"""lminima.theory.kernel_regression against scikit-learn, numpy.linalg.lstsq and
Monte Carlo."""

import numpy as np
from absl.testing import absltest
from absl.testing import parameterized
from sklearn import kernel_ridge
from sklearn import metrics

from lminima.theory import kernel_regression

from _helpers import assert_raises_on_data, assert_sum_is_m_times_mean
from _helpers import gaussian_data, lstsq_loss

RTOL = 1e-10


class KernelTest(parameterized.TestCase):

  @parameterized.parameters(0.3, 1.0, 4.0)
  def test_rbf_matches_sklearn(self, lengthscale):
    x1, _ = gaussian_data(m=7)
    x2, _ = gaussian_data(m=5, seed=1)
    np.testing.assert_allclose(
        kernel_regression.rbf_kernel(x1, x2, lengthscale=lengthscale),
        metrics.pairwise.rbf_kernel(x1, x2, gamma=0.5 / lengthscale ** 2),
        rtol=1e-12, atol=1e-300)

  @parameterized.product(ridge=(0.1, 1.0), d_y=(1, 2))
  def test_kernel_ridge_matches_sklearn(self, ridge, d_y):
    x, y = gaussian_data(m=25, d_y=d_y)
    lengthscale = 1.5
    k = kernel_regression.rbf_kernel(x, x, lengthscale=lengthscale)
    opt = kernel_regression.kernel_regression_optimum(k, y, ridge=ridge)
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
    x, y = gaussian_data(m=10, d_x=3)
    k = kernel_regression.rbf_kernel(x, x, lengthscale=1.0)
    opt = kernel_regression.kernel_regression_optimum(k, y)
    self.assertEqual(opt.rank, 10)
    self.assertLess(opt.value, 1e-24 * np.sum(np.square(y)))
    np.testing.assert_allclose(opt.fitted, y, atol=1e-12)
    np.testing.assert_allclose(k @ opt.coef, y, atol=1e-9)

  def test_interpolation_rank_deficient_kernel_is_projection(self):
    rng = np.random.default_rng(3)
    features = rng.standard_normal((12, 4))
    y = rng.standard_normal((12, 2))
    k = features @ features.T  # rank 4
    opt = kernel_regression.kernel_regression_optimum(k, y)
    self.assertEqual(opt.rank, 4)
    np.testing.assert_allclose(opt.value, lstsq_loss(features, y, 1 / 24),
                               rtol=RTOL)
    # The ridge fit tends to the interpolating limit as ridge -> 0+.
    tiny = kernel_regression.kernel_regression_optimum(k, y, ridge=1e-9)
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
    kernel = kernel_regression.relu_nngp_kernel(x, x, depth=depth,
                                        weight_var=weight_var,
                                        bias_var=bias_var)
    # Finite-width bias is O(1/width), far below the O(1/sqrt(width * n))
    # standard error, so a 5-sigma band is a sound test.
    self.assertLess(np.max(np.abs(mean - kernel) / std_error), 5.0)
    # The band is tight enough to tell neighbouring depths apart.
    wrong = kernel_regression.relu_nngp_kernel(x, x, depth=depth + 1,
                                       weight_var=weight_var,
                                       bias_var=bias_var)
    self.assertGreater(np.max(np.abs(mean - wrong) / std_error), 20.0)

  @parameterized.parameters((2.0, 0.0), (1.0, 0.5))
  def test_relu_nngp_depth_one_is_arc_cosine(self, weight_var, bias_var):
    x1, _ = gaussian_data(m=6, d_x=3)
    x2, _ = gaussian_data(m=4, d_x=3, seed=1)
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
        kernel_regression.relu_nngp_kernel(
            x1, x2, depth=1, weight_var=weight_var, bias_var=bias_var),
        bias_var + weight_var * arc_cosine, rtol=1e-12)

  def test_relu_nngp_structure(self):
    x1, _ = gaussian_data(m=6, d_x=3)
    x2, _ = gaussian_data(m=4, d_x=3, seed=1)
    np.testing.assert_allclose(
        kernel_regression.relu_nngp_kernel(x1, x2, depth=0, weight_var=1.5,
                                   bias_var=0.2), 0.2 + 1.5 * x1 @ x2.T / 3,
        rtol=1e-13)
    np.testing.assert_allclose(
        kernel_regression.relu_nngp_kernel(x1, x2, depth=3),
        kernel_regression.relu_nngp_kernel(x2, x1, depth=3).T, rtol=1e-13)
    # He scaling (weight_var = 2, no bias) keeps E h^2 constant over depth.
    np.testing.assert_allclose(
        np.diag(kernel_regression.relu_nngp_kernel(x1, x1, depth=4)),
        2 * np.sum(x1 ** 2, axis=1) / 3, rtol=1e-13)
    zero = kernel_regression.relu_nngp_kernel(np.zeros((1, 3)), x2, depth=2)
    np.testing.assert_array_equal(zero, np.zeros((1, 4)))


class InterpolationToleranceTest(parameterized.TestCase):
  """K = diag(1, 0.5, 1e-11, 0, 0, 0): the rank depends on the tolerance."""

  @parameterized.parameters((None, 3), (1e-8, 2))
  def test_rank_and_value_follow_the_tolerance(self, rank_tol, rank):
    eigenvalues = np.array([1.0, 0.5, 1e-11, 0.0, 0.0, 0.0])
    k = np.diag(eigenvalues)
    y = np.array([[0.3, -1.0], [0.7, 0.2], [2.0, -0.5], [0.5, 0.1],
                  [-0.4, 0.3], [0.2, 0.9]])
    self.assertEqual(np.linalg.matrix_rank(k, rtol=rank_tol), rank)
    opt = kernel_regression.kernel_regression_optimum(k, y, normalization="sum",
                                            rank_tol=rank_tol)
    self.assertEqual(opt.rank, rank)
    self.assertEqual(opt.rank_tol, 6 * np.finfo(np.float64).eps
                     if rank_tol is None else rank_tol)
    self.assertAlmostEqual(opt.value, 0.5 * np.sum(y[rank:] ** 2),
                           delta=1e-14)
    np.testing.assert_array_equal(opt.fitted[rank:], 0.0)
    np.testing.assert_allclose(opt.fitted[:rank], y[:rank], rtol=1e-14)
    # Least-norm dual coefficients K^+ Y at the same cut-off.
    alpha = np.zeros_like(y)
    alpha[:rank] = y[:rank] / eigenvalues[:rank, None]
    np.testing.assert_allclose(opt.coef, alpha, rtol=1e-12)


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


class NormalizationTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ("kernel_ridge",
       lambda x, y, n: kernel_regression.kernel_regression_optimum(
           kernel_regression.rbf_kernel(x, x, lengthscale=1.0), y, ridge=0.5,
           normalization=n)),
      ("kernel_interpolation", lambda x, y, n:
       kernel_regression.kernel_regression_optimum(np.cos(x) @ np.cos(x).T, y,
                                         normalization=n)),
  )
  def test_sum_is_m_times_mean(self, optimum):
    assert_sum_is_m_times_mean(self, optimum)


class BadInputTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ("lengthscale", lambda x, y: kernel_regression.rbf_kernel(
          x, x, lengthscale=0.0), "lengthscale"),
      ("kernel_dims", lambda x, y: kernel_regression.rbf_kernel(
          x, x[:, :2], lengthscale=1.0), "columns"),
      ("kernel_nan", lambda x, y: kernel_regression.rbf_kernel(
          np.where(x > 1, np.nan, x), x, lengthscale=1.0), "NaN"),
      ("depth", lambda x, y: kernel_regression.relu_nngp_kernel(x, x, depth=-1),
       "depth"),
      ("weight_var", lambda x, y: kernel_regression.relu_nngp_kernel(
          x, x, depth=1, weight_var=0.0), "weight_var"),
      ("bias_var", lambda x, y: kernel_regression.relu_nngp_kernel(
          x, x, depth=1, bias_var=-1.0), "bias_var"),
      ("kernel_square",
       lambda x, y: kernel_regression.kernel_regression_optimum(
           x, y), "square"),
      ("kernel_symmetric",
       lambda x, y: kernel_regression.kernel_regression_optimum(
           np.triu(x @ x.T), y), "symmetric"),
      ("ridge_negative",
       lambda x, y: kernel_regression.kernel_regression_optimum(
           x @ x.T, y, ridge=-1e-3), "ridge"),
      ("kernel_indefinite",
       lambda x, y: kernel_regression.kernel_regression_optimum(
           -x @ x.T, y, ridge=1e-3), "positive definite"),
      ("kernel_y_rows",
       lambda x, y: kernel_regression.kernel_regression_optimum(
           x @ x.T, y[:-1]), "rows"),
  )
  def test_raises(self, call, message):
    assert_raises_on_data(self, call, message)


if __name__ == "__main__":
  absltest.main()
