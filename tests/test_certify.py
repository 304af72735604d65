"""Tests of lminima.critical.certify (and of Problem's input checks) against
independent references: analytic spectra, numpy linear algebra, closed forms.

Every verdict, index and n_flat below is an exact expectation derived from a
reference, never "local_min or saddle".
"""

import dataclasses
import json

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

import lminima
from lminima.core.losses import loss_scale
from lminima.core.models import MLP
from lminima.core.tolerances import Tolerances
from lminima.critical.certify import VERDICTS

from _helpers import flax_variables, gaussian_data
from _helpers import linear_net_spectrum_at_origin


def _origin(model):
  return jax.tree_util.tree_map(
      lambda a: jnp.zeros(a.shape, jnp.float64),
      model.init_params(jax.random.PRNGKey(0)))


class LinearOriginTest(parameterized.TestCase):
  """The origin of a bias-free 3-2-2 linear net: a strict saddle."""

  def _origin_problem(self, normalization="mean"):
    """(y, the Problem at the origin, its analytic Hessian spectrum)."""
    x, y = gaussian_data(m=7, d_x=3, d_y=2)
    model = MLP(d_in=3, widths=(2,), d_out=2, activation="identity",
                bias=False)
    problem = lminima.Problem.for_module(model, _origin(model), x, y,
                                         normalization=normalization)
    return y, problem, linear_net_spectrum_at_origin(x, y, 2, normalization)

  @parameterized.parameters("mean", "sum")
  def test_origin_of_two_layer_linear_net_is_saddle(self, normalization):
    y, problem, expected = self._origin_problem(normalization)
    cert = lminima.certificate(problem)
    self.assertEqual((cert.method, cert.n_params), ("dense", 10))
    self.assertEqual(cert.verdict, "saddle")
    self.assertEqual(cert.grad_norm, 0.0)
    self.assertEqual(cert.grad_norm_rel, 0.0)
    # X^T Y (3 x 2) has rank 2: -2c sigma_1, -2c sigma_2, each twice.
    self.assertEqual(cert.index, 4)
    self.assertEqual(cert.n_flat, 2)
    np.testing.assert_allclose(cert.lambda_min, expected[0], rtol=1e-10)
    np.testing.assert_allclose(cert.lambda_max, expected[-1], rtol=1e-10)
    np.testing.assert_allclose(cert.eig_tol, 1e-6 * expected[-1], rtol=1e-10)
    np.testing.assert_allclose(
        cert.loss, loss_scale(normalization, 7) * np.sum(y ** 2), rtol=1e-12)
    self.assertLess(cert.residual_min, 1e-10 * expected[-1])
    self.assertLess(cert.residual_max, 1e-10 * expected[-1])
    np.testing.assert_allclose(np.linalg.eigvalsh(problem.dense_hessian()),
                               expected, atol=1e-12 * expected[-1])

  def test_explicit_eig_rtol(self):
    # An eig_tol above |lambda_min| makes every eigenvalue flat: no index;
    # the descent probe then finds the descent the curvature test missed.
    _, problem, expected = self._origin_problem()
    # expected = (-a1, -a1, -a2, -a2, 0, 0, a2, a2, a1, a1), a1 > a2 > 0.
    a1 = expected[-1]
    between = -0.5 * (expected[0] + expected[2])  # a2 < eig_tol < a1
    for eig_tol, index, n_flat, verdict in (
        (1.01 * a1, 0, 10, "not_minimum"),
        (between, 2, 6, "saddle"),
        (1e-9, 4, 2, "saddle")):
      cert = lminima.certificate(problem,
                                 tol=Tolerances(eig_rtol=eig_tol / a1))
      np.testing.assert_allclose(cert.eig_tol, eig_tol, rtol=1e-12)
      self.assertEqual((cert.index, cert.n_flat, cert.verdict),
                       (index, n_flat, verdict), eig_tol)
    self.assertGreater(cert.tolerances.eig_rtol, 0)

  def test_lanczos_saddle_at_linear_origin(self):
    # Lanczos from one start vector sees one copy of each distinct
    # eigenvalue: -a1, -a2, 0, a2, a1 (Krylov space of dimension 5, exact).
    _, problem, expected = self._origin_problem()
    # Dense up to and including dense_max_params = n_params, Lanczos above.
    dense = lminima.certificate(problem, dense_max_params=10)
    lanczos = lminima.certificate(problem, dense_max_params=9)
    self.assertEqual((dense.method, lanczos.method), ("dense", "lanczos"))
    self.assertEqual((dense.index, dense.n_flat), (4, 2))
    self.assertEqual((lanczos.verdict, lanczos.index, lanczos.n_flat),
                     ("saddle", 2, 1))
    np.testing.assert_allclose(lanczos.lambda_min, expected[0], rtol=1e-10)
    np.testing.assert_allclose(lanczos.lambda_max, expected[-1], rtol=1e-10)
    self.assertLess(lanczos.residual_min, 1e-10 * expected[-1])


class DefaultEigTolTest(absltest.TestCase):

  def test_eig_tol_scales_with_the_largest_magnitude(self):
    # f = x_1 a^2 + X_2 w at a = 0, w = lstsq(X_2, Y): g = 0 and
    # H = diag(4c x_1^T r) (+) 2c X_2^T X_2, with r = X_2 w - Y. Built so that
    # the spectrum is exactly {-10, 3e-6, 1}: the negative end dominates, so
    # the default eig_tol is 1e-6 * 10 and 3e-6 counts as flat.
    m = 8
    c = loss_scale("mean", m)
    rng = np.random.default_rng(9)
    q = np.linalg.qr(rng.standard_normal((m, 2)))[0]
    x2 = q * np.sqrt(np.array([1.0, 3e-6]) / (2 * c))
    y = rng.standard_normal((m, 1))
    w = np.linalg.lstsq(x2, y, rcond=None)[0]
    r = x2 @ w - y
    x1 = -10.0 * r / (4 * c * np.sum(r ** 2))
    problem = lminima.Problem(
        lambda p, x: x[:, :1] * p["a"] ** 2 + x[:, 1:] @ p["w"],
        {"a": np.zeros((1, 1)), "w": w}, np.hstack([x1, x2]), y)
    np.testing.assert_allclose(np.linalg.eigvalsh(problem.dense_hessian()),
                               [-10.0, 3e-6, 1.0], rtol=1e-9)
    cert = lminima.certificate(problem)
    self.assertLess(cert.grad_norm, 1e-14)
    np.testing.assert_allclose(cert.eig_tol, 1e-5, rtol=1e-9)
    np.testing.assert_allclose([cert.lambda_min, cert.lambda_max],
                               [-10.0, 1.0], rtol=1e-9)
    self.assertEqual((cert.verdict, cert.index, cert.n_flat),
                     ("saddle", 1, 1))


class DenseResidualsTest(absltest.TestCase):

  def test_residuals_are_those_of_their_own_eigenpairs(self):
    # A linear model on two groups of samples, one scaled by 1e-3: the
    # Hessian X^T X / m is exactly block diagonal (disjoint supports), the
    # small block holds lambda_min and the unit-scale block lambda_max, so
    # eigh's roundoff residuals scale with each block: ~1e-22 and ~1e-16.
    rng = np.random.default_rng(1)
    x = np.zeros((12, 6))
    x[:6, :3] = 1e-3 * rng.standard_normal((6, 3))
    x[6:, 3:] = rng.standard_normal((6, 3))
    y = rng.standard_normal((12, 1))
    w = np.linalg.lstsq(x, y, rcond=None)[0]
    problem = lminima.Problem(lambda p, x: x @ p["w"], {"w": w}, x, y)
    hessian = np.asarray(problem.dense_hessian())
    np.testing.assert_allclose(hessian, x.T @ x / 12, rtol=1e-12, atol=0)
    np.testing.assert_array_equal(hessian[:3, 3:], 0.0)
    lam, vecs = np.linalg.eigh(hessian)
    expected = lminima.critical.certify.end_residuals(hessian, lam, vecs)
    self.assertLess(lam[2], 1e-5)  # the small block's three
    self.assertGreater(lam[3], 1e-2)
    # Clearly different, so a residual of the other pair fails the pin.
    self.assertGreater(expected[1], 1e4 * expected[0])
    self.assertGreater(expected[0], 0.0)
    cert = lminima.certificate(problem)
    self.assertEqual(cert.method, "dense")
    np.testing.assert_allclose([cert.lambda_min, cert.lambda_max],
                               [lam[0], lam[-1]], rtol=1e-12)
    np.testing.assert_allclose([cert.residual_min, cert.residual_max],
                               expected, rtol=1e-6, atol=0)


class ZeroHessianTest(absltest.TestCase):
  """The origin of a bias-free deep linear net, Yhat = X W1 W2 W3.

  Every term of the first and second derivatives of Yhat keeps a zero
  factor, so g = 0 and the Hessian is exactly 0: the second-order test is
  inconclusive. The point is a higher-order saddle
  (docs/theory.md#limits-of-a-certificate): along a factorization of t A
  with <X A, Y> > 0, L(t) = L(0) - 2c t^3 <X A, Y> + O(t^6) decreases at
  third order. The descent probe's perturbed start finds that descent, so
  the certificate says ``not_minimum``, not ``local_min``.
  """

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.x, cls.y = gaussian_data(m=7, d_x=3, d_y=2, seed=4)
    cls.model = MLP(d_in=3, widths=(2, 2), d_out=2, activation="identity",
                    bias=False)
    cls.problem = lminima.Problem.for_module(cls.model, _origin(cls.model),
                                             cls.x, cls.y)

  def test_certificate_is_pinned(self):
    n = 3 * 2 + 2 * 2 + 2 * 2
    self.assertEqual(self.problem.n_params, n)
    np.testing.assert_array_equal(self.problem.dense_hessian(),
                                  np.zeros((n, n)))
    cert = lminima.certificate(self.problem)
    self.assertEqual(cert.method, "dense")
    self.assertEqual(cert.grad_norm, 0.0)
    self.assertEqual((cert.lambda_min, cert.lambda_max), (0.0, 0.0))
    self.assertEqual((cert.residual_min, cert.residual_max), (0.0, 0.0))
    self.assertEqual(cert.eig_tol, 0.0)  # 1e-6 * max(|0|, |0|)
    self.assertEqual(cert.index, 0)
    self.assertEqual(cert.n_flat, n)
    self.assertFalse(cert.proof)
    self.assertEqual(cert.verdict, "not_minimum")
    self.assertGreater(cert.probe.decrease, 1e-3)
    # The probe's point is lower by the reference's own loss function.
    w1, w2, w3 = (np.asarray(cert.probe.params["params"][f"layer_{i}"][
        "kernel"]) for i in (1, 2, 3))
    lower = np.sum((self.x @ w1 @ w2 @ w3 - self.y) ** 2) / 14
    np.testing.assert_allclose(lower, cert.probe.loss_end, rtol=1e-10)
    self.assertLess(lower, cert.loss)
    np.testing.assert_allclose(cert.loss, np.sum(self.y ** 2) / 14,
                               rtol=1e-14)

  def test_lanczos_on_the_zero_hessian(self):
    # H v = 0 for the start vector: the Krylov space is invariant after one
    # step and its single Ritz value 0 is exact.
    cert = lminima.certificate(self.problem, dense_max_params=0)
    self.assertEqual(cert.method, "lanczos")
    self.assertEqual((cert.lambda_min, cert.lambda_max, cert.eig_tol),
                     (0.0, 0.0, 0.0))
    self.assertEqual((cert.index, cert.n_flat, cert.verdict),
                     (0, 1, "not_minimum"))

  def test_loss_decreases_at_third_order(self):
    # A = u v^T from the top singular pair of X^T Y, <X A, Y> = sigma_1 > 0,
    # factored as W1 = t u e1^T, W2 = t e1 e1^T, W3 = t e1 v^T.
    u, sigma, vt = np.linalg.svd(self.x.T @ self.y)
    u, sigma_1, v = u[:, 0], sigma[0], vt[0]
    e1 = np.array([1.0, 0.0])
    c = loss_scale("mean", 7)
    loss_0 = self.problem.loss
    def model_loss(t):
      point = flax_variables({"kernel": t * np.outer(u, e1)},
                         {"kernel": t * np.outer(e1, e1)},
                         {"kernel": t * np.outer(e1, v)})
      return self.problem.at(point).loss
    def numpy_loss(t):  # c ||t^3 X u v^T - Y||^2, without the model
      return c * np.sum((t ** 3 * np.outer(self.x @ u, v) - self.y) ** 2)
    for t in (1e-2, 1e-1, 0.3, -0.1):
      self.assertAlmostEqual(model_loss(t), numpy_loss(t), delta=1e-14)
      # The expansion: exact, a polynomial in t^3.
      self.assertAlmostEqual(
          numpy_loss(t),
          loss_0 - 2 * c * t ** 3 * sigma_1
          + c * t ** 6 * np.sum((self.x @ u) ** 2), delta=1e-14)
      if t > 0:
        self.assertLess(model_loss(t), loss_0)  # descent: not a minimum
      else:
        self.assertGreater(model_loss(t), loss_0)
    # No second-order term (H = 0): the decrease per t^3 tends to 2c sigma_1.
    t = 1e-2
    np.testing.assert_allclose((loss_0 - model_loss(t)) / t ** 3,
                               2 * c * sigma_1, rtol=1e-4)


def _isolated_saddle(m=200, d=100, d_z=4, b=1.9, seed=0):
  """A critical point whose Hessian has one isolated negative eigenvalue.

  The model (n = d + d_z + 1 parameters) is a least-squares fit X w plus a
  bilinear "dead unit" (Z u) s, both read from x = [X, Z]:

      f(theta; x) = X w + (Z u) s.

  At w = lstsq(X, Y), u = 0, s = 0 the gradient is 0 (r = X w - Y is
  orthogonal to X; u and s only enter multiplied by each other) and the
  Hessian is 2c X^T X (+) [[0, 2c Z^T r], [2c r^T Z, 0]]. X is built with
  2c X^T X having eigenvalues evenly spaced in [1, 2], and Z is scaled so
  that 2c ||Z^T r|| = b: the spectrum is exactly
  {-b} U {0 (d_z - 1 times)} U linspace(1, 2, d) U {b}.

  With b = 1.9 the eigenvalue -b converges in a few Lanczos steps, while the
  evenly spaced top end takes dozens more: a Lanczos without full
  reorthogonalization grows spurious copies of -b meanwhile and inflates the
  index.
  """
  rng = np.random.default_rng(seed)
  c = loss_scale("mean", m)
  q = np.linalg.qr(rng.standard_normal((m, d)))[0]
  v = np.linalg.qr(rng.standard_normal((d, d)))[0]
  bulk = np.linspace(1.0, 2.0, d)
  x_lin = (q * np.sqrt(bulk / (2 * c))) @ v.T
  y = rng.standard_normal((m, 1))
  w = np.linalg.lstsq(x_lin, y, rcond=None)[0]
  r = x_lin @ w - y
  z = rng.standard_normal((m, d_z))
  z *= b / (2 * c * np.linalg.norm(z.T @ r))
  x = np.hstack([x_lin, z])
  apply_fn = lambda p, x: x[:, :d] @ p["w"] + (x[:, d:] @ p["u"]) * p["s"]
  params = {"w": w, "u": np.zeros((d_z, 1)), "s": np.zeros((1, 1))}
  spectrum = np.sort(np.concatenate([[-b, b], np.zeros(d_z - 1), bulk]))
  return lminima.Problem(apply_fn, params, x, y), spectrum


class LanczosPathTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.problem, cls.spectrum = _isolated_saddle()
    cls.dense_eigs = np.linalg.eigvalsh(cls.problem.dense_hessian())

  def test_dense_reference(self):
    # The construction: the Hessian's spectrum is the analytic one.
    self.assertEqual(self.problem.n_params, 105)
    np.testing.assert_allclose(self.dense_eigs, self.spectrum, atol=1e-12)
    self.assertLess(self.problem.grad_norm, 1e-12)
    dense = lminima.certificate(self.problem)
    self.assertEqual(dense.method, "dense")
    self.assertEqual((dense.verdict, dense.index, dense.n_flat),
                     ("saddle", 1, 3))

  @parameterized.parameters(0, 1, 2)
  def test_lanczos_matches_dense(self, seed):
    dense = lminima.certificate(self.problem)
    cert = lminima.certificate(self.problem, dense_max_params=0,
                               key=jax.random.PRNGKey(seed))
    self.assertEqual(cert.method, "lanczos")
    self.assertEqual(cert.n_params, 105)
    eig_tol = 1e-6 * 2.0
    np.testing.assert_allclose(cert.eig_tol, eig_tol, rtol=1e-10)
    np.testing.assert_allclose(cert.lambda_min, self.dense_eigs[0],
                               rtol=1e-10)
    np.testing.assert_allclose(cert.lambda_max, self.dense_eigs[-1],
                               rtol=1e-10)
    # Lanczos stops once both Ritz residual estimates are <= 1e-8 * 2.
    self.assertLess(cert.residual_min, 1e-7)
    self.assertLess(cert.residual_max, 1e-7)
    # The index is exactly the dense count: one negative eigenvalue, no
    # spurious copies.
    self.assertEqual(cert.index, int(np.sum(self.dense_eigs < -eig_tol)))
    self.assertEqual(cert.index, dense.index)
    self.assertEqual(cert.verdict, "saddle")
    # n_flat from Ritz values is a lower bound in practice: between one copy
    # of the 3-fold 0 and all three (roundoff seeds the other directions).
    self.assertEqual(int(np.sum(np.abs(self.dense_eigs) <= eig_tol)), 3)
    self.assertBetween(cert.n_flat, 1, dense.n_flat)


def _kink_point(activation, bias_shift=0.0, out_shift=0.0):
  """A 2-3-1 net with zero output weights and output bias mean(y) (+ shift).

  Hidden unit j has kernel (s_j, 0) with s_j a power of 2 (exact products)
  and bias -max_i x_i1 s_j + bias_shift: its pre-activation is <= bias_shift
  on every sample, equal to it on one. With bias_shift <= 0 every relu is off
  (h = 0), so the point is critical, and the only curvature is the output
  bias's 2c m = 1: H = e e^T.
  """
  x, y = gaussian_data(m=6, d_x=2, d_y=1)
  model = MLP(d_in=2, widths=(3,), d_out=1, activation=activation)
  s = np.array([1.0, -0.5, 2.0])
  kernel = np.stack([s, np.zeros(3)])
  bias = -np.max(x[:, :1] * s, axis=0) + bias_shift
  variables = flax_variables({"kernel": kernel, "bias": bias},
                         {"kernel": np.zeros((3, 1)),
                          "bias": y.mean(0) + out_shift})
  return lminima.Problem.for_module(model, variables, x, y)


class KinkTest(parameterized.TestCase):

  def test_relu_on_kink_at_one_sample_is_non_differentiable(self):
    problem = _kink_point("relu")
    z = problem.x @ problem.params["params"]["layer_1"]["kernel"] + (
        problem.params["params"]["layer_1"]["bias"])
    self.assertEqual(int(np.sum(np.asarray(z) == 0.0)), 3)  # one per unit
    cert = lminima.certificate(problem)
    self.assertEqual(cert.min_abs_preactivation, 0.0)
    self.assertLessEqual(cert.grad_norm, cert.grad_tol)
    self.assertEqual(cert.verdict, "non_differentiable")
    # "Within kink_tol" includes the kink itself: even kink_tol = 0 flags it.
    self.assertEqual(lminima.certificate(
        problem, tol=Tolerances(kink_tol=0.0)).verdict, "non_differentiable")

  def test_relu_off_the_kink_is_a_local_min(self):
    problem = _kink_point("relu", bias_shift=-1e-3)
    cert = lminima.certificate(problem)
    self.assertAlmostEqual(cert.min_abs_preactivation, 1e-3, delta=1e-15)
    self.assertLessEqual(cert.grad_norm, 1e-15)
    # H = e e^T on the output bias (2c m = 1 with c = 1/(2m)).
    self.assertEqual(cert.n_params, 13)
    self.assertAlmostEqual(cert.lambda_max, 1.0, delta=1e-15)
    self.assertEqual(cert.lambda_min, 0.0)
    self.assertEqual((cert.index, cert.n_flat), (0, 12))
    self.assertEqual(cert.verdict, "local_min")
    # kink_tol is an absolute threshold on min |z|.
    for kink_tol, verdict in ((1e-2, "non_differentiable"),
                              (1e-4, "local_min"),
                              (cert.min_abs_preactivation,
                               "non_differentiable")):
      self.assertEqual(lminima.certificate(
          problem, tol=Tolerances(kink_tol=kink_tol)).verdict, verdict)

  def test_not_critical_comes_before_the_kink(self):
    # Output bias off by 1: g has the entry 2c m * 1 = 1 on it.
    cert = lminima.certificate(_kink_point("relu", out_shift=1.0))
    self.assertEqual(cert.min_abs_preactivation, 0.0)
    self.assertAlmostEqual(cert.grad_norm, 1.0, delta=1e-14)
    self.assertEqual(cert.verdict, "not_critical")

  @parameterized.parameters("relu", "leaky_relu")
  def test_all_units_on_the_kink(self, activation):
    # Zero hidden weights and biases: Z = 0 on every sample; h = 0 for both.
    x, y = gaussian_data(m=6, d_x=2, d_y=1)
    model = MLP(d_in=2, widths=(3,), d_out=1, activation=activation)
    variables = flax_variables(
        {"kernel": np.zeros((2, 3)), "bias": np.zeros(3)},
        {"kernel": np.zeros((3, 1)), "bias": y.mean(0)})
    cert = lminima.certificate(
        lminima.Problem.for_module(model, variables, x, y))
    self.assertEqual(cert.min_abs_preactivation, 0.0)
    self.assertLessEqual(cert.grad_norm, cert.grad_tol)
    self.assertEqual(cert.verdict, "non_differentiable")

  def test_tanh_at_the_same_point_is_a_saddle(self):
    # tanh is smooth: no kink check. Each dead unit j couples its output
    # weight a_j with (w_j, b_j) through 2c [X^T r; sum r] = 2c [X^T r; 0]
    # (tanh'(0) = 1), giving +-2c ||X^T r||; three units, so index 3.
    x, y = gaussian_data(m=6, d_x=2, d_y=1)
    model = MLP(d_in=2, widths=(3,), d_out=1, activation="tanh")
    variables = flax_variables(
        {"kernel": np.zeros((2, 3)), "bias": np.zeros(3)},
        {"kernel": np.zeros((3, 1)), "bias": y.mean(0)})
    problem = lminima.Problem.for_module(model, variables, x, y)
    cert = lminima.certificate(problem)
    c = loss_scale("mean", 6)
    coupling = 2 * c * np.linalg.norm(x.T @ (y.mean(0) - y))
    self.assertIsNone(problem.min_abs_kink_input())
    self.assertIsNone(cert.min_abs_preactivation)
    self.assertEqual((cert.verdict, cert.index), ("saddle", 3))
    np.testing.assert_allclose(cert.lambda_min, -coupling, rtol=1e-12)
    np.testing.assert_allclose(cert.lambda_max, max(coupling, 1.0),
                               rtol=1e-12)
    self.assertEqual(cert.n_flat, 13 - 7)


class CriticalityTest(absltest.TestCase):
  """A linear least-squares problem at w* + delta, gradient 2c X^T X delta."""

  def setUp(self):
    super().setUp()
    self.x, self.y = gaussian_data(m=10, d_x=3, d_y=2, seed=7)
    self.c = loss_scale("mean", 10)
    w_star = np.linalg.lstsq(self.x, self.y, rcond=None)[0]
    self.delta = 1e-6 * np.random.default_rng(8).standard_normal((3, 2))
    self.w = w_star + self.delta
    self.problem = lminima.Problem(lambda p, x: x @ p["w"], {"w": self.w},
                                   self.x, self.y)

  def test_grad_tol_is_relative_to_the_loss(self):
    grad = 2 * self.c * self.x.T @ self.x @ self.delta
    g0 = float(np.linalg.norm(grad))
    loss = self.c * np.sum((self.x @ self.w - self.y) ** 2)
    curvature = np.max(np.linalg.eigvalsh(2 * self.c * self.x.T @ self.x))
    scale = np.sqrt(2 * curvature * loss)  # the largest ||g|| L allows
    cert = lminima.certificate(self.problem)
    np.testing.assert_allclose(cert.grad_norm, g0, rtol=1e-8)
    np.testing.assert_allclose(cert.loss, loss, rtol=1e-12)
    np.testing.assert_allclose(cert.grad_norm_rel, g0 / scale, rtol=1e-8)
    np.testing.assert_allclose(cert.grad_tol, 1e-9 * scale, rtol=1e-8)
    # delta ~ 1e-6 puts g0 above the default 1e-9 relative tolerance.
    self.assertEqual(cert.verdict, "not_critical")
    for rtol, verdict in ((1.01, "local_min"), (0.99, "not_critical")):
      cert = lminima.certificate(
          self.problem, tol=Tolerances(grad_rtol=rtol * g0 / scale))
      self.assertEqual(cert.verdict, verdict)
    # Least squares: H is constant and positive definite, so second-order
    # sufficiency decides, with the bound ||g||^2 / (2 lambda_min L).
    lam_min = np.min(np.linalg.eigvalsh(2 * self.c * self.x.T @ self.x))
    cert = lminima.certificate(
        self.problem, tol=Tolerances(grad_rtol=1.01 * g0 / scale))
    self.assertTrue(cert.proof)
    self.assertIsNone(cert.probe)
    np.testing.assert_allclose(cert.decrease_bound,
                               g0 ** 2 / (2 * lam_min * loss), rtol=1e-6)

  def test_not_critical_still_reports_the_spectrum(self):
    cert = lminima.certificate(self.problem,
                               tol=Tolerances(grad_rtol=1e-12))
    spectrum = np.linalg.eigvalsh(2 * self.c * np.kron(self.x.T @ self.x,
                                                       np.eye(2)))
    self.assertEqual(cert.verdict, "not_critical")
    np.testing.assert_allclose([cert.lambda_min, cert.lambda_max],
                               spectrum[[0, -1]], rtol=1e-10)
    self.assertEqual((cert.index, cert.n_flat), (0, 0))

  def test_non_finite_loss_is_not_critical_and_json_safe(self):
    # X w overflows when squared: L = inf, so no spectrum is computed.
    problem = self.problem.at({"w": np.full((3, 2), 1e200)})
    with np.errstate(over="ignore"):  # ||g||_2 overflows as well
      cert = lminima.certificate(problem)
    self.assertEqual(cert.loss, float("inf"))
    self.assertEqual(cert.verdict, "not_critical")
    self.assertTrue(np.isnan(cert.lambda_min) and np.isnan(cert.lambda_max))
    self.assertEqual((cert.index, cert.n_flat), (0, 0))
    record = cert.to_dict()
    self.assertIsNone(record["loss"])
    self.assertIsNone(record["lambda_min"])
    json.dumps(record, allow_nan=False)

  def test_infinite_loss_with_zero_gradient_is_not_critical(self):
    # The output 1e200 (params enter times 0): L = inf, but g = 0 exactly.
    problem = lminima.Problem(lambda p, x: 0.0 * (x @ p["w"]) + 1e200,
                              {"w": np.zeros((3, 2))}, self.x, self.y)
    cert = lminima.certificate(problem)
    self.assertEqual((cert.loss, cert.grad_norm), (float("inf"), 0.0))
    self.assertEqual(cert.verdict, "not_critical")

  def test_to_dict(self):
    cert = lminima.certificate(self.problem, tol=Tolerances(grad_rtol=1.0))
    record = cert.to_dict()
    self.assertEqual(
        set(record),
        {f.name for f in dataclasses.fields(cert)} - {"probe"}
        | {"probe_method", "probe_iters", "probe_decrease",
           "probe_displacement"})
    self.assertEqual(record["tolerances"]["grad_rtol"], 1.0)
    self.assertIn(record["verdict"], VERDICTS)
    self.assertEqual(json.loads(json.dumps(record, allow_nan=False)), record)


class InputTest(absltest.TestCase):
  """Bad inputs fail once, in Problem's constructor; bad options in
  certificate."""

  def setUp(self):
    super().setUp()
    self.model = MLP(d_in=2, widths=(3,), d_out=1, activation="tanh")
    self.variables = self.model.init_params(jax.random.PRNGKey(0))
    self.x, self.y = gaussian_data(m=5, d_x=2, d_y=1)

  def _problem(self, variables=None, x=None, y=None, **kwargs):
    return lminima.Problem.for_module(
        self.model, self.variables if variables is None else variables,
        self.x if x is None else x, self.y if y is None else y, **kwargs)

  def test_nan_params(self):
    bad = jax.tree_util.tree_map(lambda a: a, self.variables)
    bad["params"]["layer_1"]["kernel"] = bad["params"]["layer_1"][
        "kernel"].at[0, 0].set(jnp.nan)
    with self.assertRaisesRegex(ValueError, "params contains NaN"):
      self._problem(bad)
    with self.assertRaisesRegex(ValueError, "params contains NaN"):
      self._problem().at(bad)

  def test_non_finite_data(self):
    x = self.x.copy()
    x[1, 1] = np.inf
    with self.assertRaisesRegex(ValueError, "x contains NaN or inf"):
      self._problem(x=x)
    y = self.y.copy()
    y[0, 0] = np.nan
    with self.assertRaisesRegex(ValueError, "y contains NaN or inf"):
      self._problem(y=y)

  def test_params_of_another_model(self):
    other = MLP(d_in=2, widths=(4,), d_out=1).init_params(
        jax.random.PRNGKey(0))
    with self.assertRaisesRegex(ValueError, "expected shapes"):
      self._problem(other)
    with self.assertRaisesRegex(ValueError, "structure"):
      self._problem().at({"w": np.zeros(3)})

  def test_shape_mismatch(self):
    with self.assertRaisesRegex(ValueError, "y has 4 rows but x has 5"):
      self._problem(y=self.y[:4])
    with self.assertRaisesRegex(ValueError, r"apply_fn\(params, x\) failed"):
      self._problem(x=self.x[:, :1])
    with self.assertRaisesRegex(ValueError, r"apply_fn\(params, x\) has "
                                r"shape \(5, 1\), but y has shape \(5, 2\)"):
      self._problem(y=np.hstack([self.y, self.y]))
    with self.assertRaisesRegex(ValueError, "x must have shape"):
      self._problem(x=self.x[:, 0])
    with self.assertRaisesRegex(ValueError, "y must be a 2-D array"):
      self._problem(y=self.y[:, 0])

  def test_bad_problem_options(self):
    with self.assertRaisesRegex(ValueError, "unknown normalization"):
      self._problem(normalization="avg")
    with self.assertRaisesRegex(ValueError, "memory_budget_bytes"):
      self._problem(memory_budget_bytes=0)

  def test_memory_budget_guards_the_dense_hessian(self):
    n = self.model.n_params
    problem = self._problem(memory_budget_bytes=8 * n * n - 1)
    with self.assertRaisesRegex(ValueError, "memory budget"):
      lminima.certificate(problem)
    self.assertEqual(
        lminima.certificate(self._problem(memory_budget_bytes=8 * n * n)
                            ).method, "dense")

  def test_bad_certificate_options(self):
    problem = self._problem()
    with self.assertRaisesRegex(ValueError, "certificate: need"):
      lminima.certificate(problem, dense_max_params=-1)
    for kwargs in (dict(grad_rtol=-1.0), dict(kink_tol=-1.0),
                   dict(eig_rtol=float("nan")), dict(probe_iters=0),
                   dict(growth=1.0), dict(escape_fall=0.5),
                   dict(escape_spread=1.0), dict(escape_points=2.5)):
      with self.subTest(**kwargs):
        with self.assertRaisesRegex(ValueError, "Tolerances: need"):
          Tolerances(**kwargs)

  def test_float32_inputs_are_cast(self):
    # float32 variables and x: Problem casts, and the certificate equals the
    # one of the same values given in float64.
    x32 = self.x.astype(np.float32)
    problem = self._problem(x=x32)
    self.assertTrue(all(leaf.dtype == jnp.float64 for leaf in
                        jax.tree_util.tree_leaves(problem.params)))
    self.assertEqual(problem.x.dtype, jnp.float64)
    as64 = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64),
                                  self.variables)
    reference = self._problem(as64, x=x32.astype(np.float64))
    self.assertEqual(lminima.certificate(problem),
                     lminima.certificate(reference))

  def test_far_point_is_not_critical(self):
    cert = lminima.certificate(self._problem())
    self.assertGreater(cert.grad_norm, 1e-3)
    self.assertEqual(cert.verdict, "not_critical")


if __name__ == "__main__":
  absltest.main()
