"""Tests of lminima.certify against independent references."""

import json

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import threadpoolctl

from lminima import certify
from lminima.losses import loss_scale
from lminima.models import MLP, cast_params


def _data(m, d_x, d_y, seed=0):
  rng = np.random.default_rng(seed)
  return rng.standard_normal((m, d_x)), rng.standard_normal((m, d_y))


def _linear_net_spectrum_at_origin(x, y, hidden, normalization):
  """Analytic Hessian eigenvalues of c||X W1 W2 - Y||^2 at W1 = W2 = 0.

  L(tA, tB) = L(0) - 2c t^2 tr(Y^T X A B) + O(t^4), a bilinear form coupling
  A and B through X^T Y (x) I_hidden: eigenvalues +-2c sigma_i(X^T Y), each
  ``hidden`` times, and zeros for the rest.
  """
  c = loss_scale(normalization, x.shape[0])
  sigma = np.linalg.svd(x.T @ y, compute_uv=False)
  nonzero = np.repeat(2 * c * sigma, hidden)
  n = hidden * (x.shape[1] + y.shape[1])
  zeros = np.zeros(n - 2 * nonzero.size)
  return np.sort(np.concatenate([-nonzero, zeros, nonzero]))


def _gradient_descent(model, params, x, y, steps, lr):
  loss = lambda p: 0.5 * jnp.mean(jnp.sum((model.apply(p, x) - y) ** 2, 1))
  step = jax.jit(lambda p: jax.tree_util.tree_map(
      lambda a, g: a - lr * g, p, jax.grad(loss)(p)))
  for _ in range(steps):
    params = step(params)
  return params


def _near_linear_net_saddle():
  """A 2-2-2 linear net 1e-3 from its origin saddle, and its data."""
  x, y = _data(m=9, d_x=2, d_y=2, seed=1)
  model = MLP(d_in=2, widths=(2,), d_out=2, activation="identity", bias=False)
  start = cast_params(model.init(jax.random.PRNGKey(1)), jnp.float64)
  return model, jax.tree_util.tree_map(lambda a: 1e-3 * a, start), x, y


class SaddleTest(parameterized.TestCase):

  @parameterized.parameters("mean", "sum")
  def test_origin_of_two_layer_linear_net_is_saddle(self, normalization):
    x, y = _data(m=7, d_x=3, d_y=2)
    hidden = 2
    model = MLP(d_in=3, widths=(hidden,), d_out=2, activation="identity",
                bias=False)
    origin = cast_params(model.init(jax.random.PRNGKey(0)), jnp.float64)
    origin = jax.tree_util.tree_map(jnp.zeros_like, origin)
    cert = certify.certificate(model, origin, x, y,
                               normalization=normalization)
    expected = _linear_net_spectrum_at_origin(x, y, hidden, normalization)
    self.assertEqual(cert.verdict, "saddle")
    self.assertEqual(cert.grad_norm, 0.0)
    self.assertEqual(cert.index, int(np.sum(expected < -cert.eig_tol)))
    self.assertEqual(cert.index, 4)
    self.assertEqual(cert.n_flat, int(np.sum(np.abs(expected)
                                             <= cert.eig_tol)))
    np.testing.assert_allclose(cert.lambda_min, expected[0], rtol=1e-10)
    np.testing.assert_allclose(cert.lambda_max, expected[-1], rtol=1e-10)
    self.assertLess(cert.residual_min, 1e-10)

  def test_newton_mr_converges_to_nearby_saddle(self):
    # d_x = d_y = hidden = 2 with X^T Y of rank 2: the origin is a
    # nondegenerate saddle (eigenvalues +-2c sigma_i, none zero).
    model, start, x, y = _near_linear_net_saddle()
    result = certify.refine(model, start, x, y, method="newton_mr")
    self.assertTrue(result.converged, result)
    self.assertEqual(result.stop_reason, "grad_tol")
    self.assertLessEqual(result.grad_norm, 1e-10)
    flat = np.concatenate([np.ravel(l["w"]) for l in result.params])
    self.assertLess(np.max(np.abs(flat)), 1e-8)  # it is the origin
    cert = certify.certificate(model, result.params, x, y)
    self.assertEqual(cert.verdict, "saddle")
    self.assertEqual(cert.index, 4)
    np.testing.assert_allclose(
        cert.lambda_min, _linear_net_spectrum_at_origin(x, y, 2, "mean")[0],
        rtol=1e-6)

  def test_lm_from_near_saddle_reaches_global_minimum(self):
    # Same net; LM only accepts loss decreases, so it leaves the saddle and
    # (width 2 = full rank) reaches the least-squares optimum.
    model, start, x, y = _near_linear_net_saddle()
    result = certify.refine(model, start, x, y, method="lm")
    self.assertTrue(result.converged, result)
    w_star = np.linalg.lstsq(x, y, rcond=None)[0]
    optimum = loss_scale("mean", 9) * np.sum((x @ w_star - y) ** 2)
    np.testing.assert_allclose(result.loss, optimum, rtol=1e-10)
    self.assertEqual(certify.certificate(model, result.params, x, y).verdict,
                     "local_min")


class ConvexTest(parameterized.TestCase):

  @parameterized.parameters(("mean", False), ("sum", True))
  def test_linear_model_strict_minimum(self, normalization, bias):
    x, y = _data(m=11, d_x=3, d_y=2, seed=2)
    model = MLP(d_in=3, widths=(), d_out=2, activation="identity", bias=bias)
    result = certify.refine(model, model.init(jax.random.PRNGKey(0)), x, y,
                            normalization=normalization)
    self.assertTrue(result.converged)
    # A quadratic: each damped Newton step shrinks the error by mu/(lam+mu)
    # with mu = nu ||g||, so a handful of steps.
    self.assertLessEqual(result.iters, 8)
    design = np.hstack([np.ones((11, 1)), x]) if bias else x
    w_star = np.linalg.lstsq(design, y, rcond=None)[0]
    np.testing.assert_allclose(result.params[0]["w"], w_star[-3:],
                               atol=1e-10)
    c = loss_scale(normalization, 11)
    # Analytic Hessian 2c (Z^T Z kron I_{d_y}); its spectrum does not depend
    # on the parameter order.
    analytic = np.linalg.eigvalsh(2 * c * np.kron(design.T @ design,
                                                  np.eye(2)))
    cert = certify.certificate(model, result.params, x, y,
                               normalization=normalization)
    self.assertEqual(cert.verdict, "local_min")
    self.assertEqual((cert.index, cert.n_flat), (0, 0))
    self.assertGreater(cert.lambda_min, 0)
    np.testing.assert_allclose(cert.lambda_min, analytic[0], rtol=1e-10)
    np.testing.assert_allclose(cert.lambda_max, analytic[-1], rtol=1e-10)
    np.testing.assert_allclose(
        cert.loss, c * np.sum((design @ w_star - y) ** 2), rtol=1e-10)
    json.dumps(cert.to_dict(), allow_nan=False)


class DegenerateMinimumTest(absltest.TestCase):

  def test_scalar_linear_net_converges_quadratically_onto_the_hyperbola(self):
    # yhat = b a x: the minimizers form the hyperbola a b = beta (the least
    # squares slope), so every minimum has a flat direction. There the
    # residual X beta - Y is orthogonal to X, and the Hessian is
    # 2c sum(x^2) [b, a]^T [b, a]: eigenvalues 0 and 2c sum(x^2) (a^2 + b^2).
    rng = np.random.default_rng(0)
    x = rng.standard_normal((9, 1))
    y = 0.7 * x + 0.1 * rng.standard_normal((9, 1))
    beta = float(x[:, 0] @ y[:, 0] / (x[:, 0] @ x[:, 0]))
    model = MLP(d_in=1, widths=(1,), d_out=1, activation="identity",
                bias=False)
    start = ({"w": jnp.array([[0.5]])}, {"w": jnp.array([[0.3]])})
    result = certify.refine(model, start, x, y)
    self.assertTrue(result.converged, result)
    a, b = (float(layer["w"][0, 0]) for layer in result.params)
    self.assertAlmostEqual(a * b, beta, delta=1e-10)
    c = loss_scale("mean", 9)
    self.assertAlmostEqual(result.loss, c * np.sum((beta * x - y) ** 2),
                           delta=1e-15)
    # mu ~ ||g|| damps the flat direction without slowing the others:
    # quadratic convergence, ||g_{k+1}|| <= C ||g_k||^2, over the last step
    # above the roundoff floor (~1e-16 here).
    history = np.array(result.grad_norm_history)
    self.assertLess(result.iters, 10)
    above_roundoff = history[history > 1e-13]
    self.assertLess(above_roundoff[-2], 1e-4, history)
    self.assertLess(above_roundoff[-1], 1e2 * above_roundoff[-2] ** 2,
                    history)
    cert = certify.certificate(model, result.params, x, y)
    self.assertEqual((cert.verdict, cert.n_flat), ("local_min", 1))
    self.assertLess(abs(cert.lambda_min), 1e-10)
    np.testing.assert_allclose(
        cert.lambda_max, 2 * c * np.sum(x ** 2) * (a ** 2 + b ** 2),
        rtol=1e-10)


class EscapeTest(absltest.TestCase):
  """A tanh unit fitting y = sign(x): L > 0 everywhere, inf L = 0.

  ``a tanh(w x + b1) + b2`` is constant (a w = 0) or strictly monotone in x,
  so it cannot equal -1 at both x = -1 and x = -0.05: L > 0 at every finite
  point, while a = 1, b1 = b2 = 0, w -> infinity drives L to 0. No critical
  point lies on the way; the infimum is at infinity.
  """

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    grid = np.linspace(0.05, 1.0, 10)
    cls.x = np.concatenate([-grid, grid])[:, None]
    cls.y = np.sign(cls.x)
    cls.model = MLP(d_in=1, widths=(1,), d_out=1, activation="tanh")
    layer = {"w": jnp.ones((1, 1)), "b": jnp.zeros(1)}
    cls.start = (layer, layer)

  def test_stops_as_escaping(self):
    result = certify.refine(self.model, self.start, self.x, self.y)
    self.assertEqual(result.stop_reason, "escaping")
    self.assertFalse(result.converged)
    self.assertLess(result.iters, 20)  # no iterations burnt
    start_norm = np.sqrt(2.0)  # the two unit weights
    self.assertAlmostEqual(result.param_norm_start, start_norm, delta=1e-15)
    flat = jax.flatten_util.ravel_pytree(result.params)[0]
    self.assertAlmostEqual(result.param_norm, float(np.linalg.norm(flat)),
                           delta=1e-12)
    self.assertGreater(result.param_norm, 5 * start_norm)
    self.assertLess(result.loss, _numpy_tanh_loss(self.start, self.x, self.y))
    self.assertEqual(certify.certificate(self.model, result.params, self.x,
                                         self.y).verdict, "not_critical")

  def test_without_the_check_it_converges_only_by_saturating(self):
    # Ignoring the escape, LM "reaches" ||g|| <= 1e-10 far out along the
    # path, where L ~ 0 and tanh' ~ 0 make g tiny: not a critical point of
    # L (there is none), just the float64 shadow of the infimum.
    escaping = certify.refine(self.model, self.start, self.x, self.y)
    result = certify.refine(self.model, self.start, self.x, self.y,
                            escape_ratio=None)
    self.assertNotEqual(result.stop_reason, "escaping")
    self.assertGreater(result.param_norm, 10 * escaping.param_norm)
    self.assertLess(_numpy_tanh_loss(result.params, self.x, self.y),
                    1e-10)
    self.assertGreater(_numpy_tanh_loss(result.params, self.x, self.y), 0)

  def test_restores_blas_threads(self):
    before = threadpoolctl.threadpool_info()
    certify.refine(self.model, self.start, self.x, self.y, max_iters=2)
    self.assertEqual(threadpoolctl.threadpool_info(), before)


def _numpy_tanh_loss(params, x, y):
  """L of a one-hidden-layer tanh net with biases, in numpy (mean, c=1/2m)."""
  hidden, out = ({k: np.asarray(v) for k, v in layer.items()}
                 for layer in params)
  yhat = np.tanh(x @ hidden["w"] + hidden["b"]) @ out["w"] + out["b"]
  return 0.5 * np.mean(np.sum((yhat - y) ** 2, axis=1))


class RefineTanhTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.x, cls.y = _data(m=20, d_x=3, d_y=1, seed=0)
    cls.model = MLP(d_in=3, widths=(16,), d_out=1, activation="tanh")
    start = cast_params(cls.model.init(jax.random.PRNGKey(0)), jnp.float64)
    cls.trained = _gradient_descent(cls.model, start, jnp.asarray(cls.x),
                                    jnp.asarray(cls.y), steps=300, lr=0.1)

  @parameterized.parameters("lm", "newton_mr")
  def test_reaches_tolerance_superlinearly(self, method):
    result = certify.refine(self.model, self.trained, self.x, self.y,
                            method=method)
    self.assertTrue(result.converged, result.grad_norm_history)
    self.assertLessEqual(result.grad_norm, 1e-10)
    history = np.array(result.grad_norm_history)
    self.assertLen(history, result.iters + 1)
    # Superlinear: over the last three steps the contraction factor
    # ||g_{k+1}|| / ||g_k|| keeps shrinking and ends far below 1.
    ratios = history[-3:] / history[-4:-1]
    self.assertTrue(np.all(np.diff(ratios) < 0), history)
    self.assertLess(ratios[-1], 1e-2, history)
    # Independent check of criticality: central differences of a numpy
    # forward pass (error ~ h^2 |L'''| + eps / h, about 1e-10 here).
    flat, unravel = jax.flatten_util.ravel_pytree(result.params)
    def numpy_loss(theta):
      (hidden, out) = unravel(jnp.asarray(theta))
      h = np.tanh(self.x @ np.asarray(hidden["w"]) + np.asarray(hidden["b"]))
      yhat = h @ np.asarray(out["w"]) + np.asarray(out["b"])
      return 0.5 * np.mean(np.sum((yhat - self.y) ** 2, axis=1))
    step, flat = 1e-5, np.asarray(flat)
    fd_grad = [(numpy_loss(flat + step * e) - numpy_loss(flat - step * e))
               / (2 * step) for e in np.eye(flat.size)]
    self.assertLess(np.linalg.norm(fd_grad), 1e-8)
    cert = certify.certificate(self.model, result.params, self.x, self.y)
    self.assertIn(cert.verdict, ("local_min", "saddle"))
    self.assertEqual(cert.grad_norm, result.grad_norm)

  def test_lanczos_agrees_with_dense(self):
    result = certify.refine(self.model, self.trained, self.x, self.y)
    dense = certify.certificate(self.model, result.params, self.x, self.y)
    lanczos = certify.certificate(self.model, result.params, self.x, self.y,
                                  dense_max_params=10)
    self.assertEqual((dense.method, lanczos.method), ("dense", "lanczos"))
    self.assertEqual(dense.verdict, lanczos.verdict)
    np.testing.assert_allclose(lanczos.lambda_max, dense.lambda_max,
                               rtol=1e-8)
    np.testing.assert_allclose(lanczos.lambda_min, dense.lambda_min,
                               atol=1e-8 * dense.lambda_max)
    self.assertLessEqual(lanczos.index, dense.index)

  def test_lanczos_saddle_at_linear_origin(self):
    x, y = _data(m=7, d_x=3, d_y=2)
    model = MLP(d_in=3, widths=(2,), d_out=2, activation="identity",
                bias=False)
    origin = tuple({"w": jnp.zeros(s)} for s in ((3, 2), (2, 2)))
    dense = certify.certificate(model, origin, x, y)
    lanczos = certify.certificate(model, origin, x, y, dense_max_params=0)
    self.assertEqual(lanczos.verdict, "saddle")
    self.assertGreaterEqual(lanczos.index, 1)
    self.assertLessEqual(lanczos.index, dense.index)
    np.testing.assert_allclose(lanczos.lambda_min, dense.lambda_min,
                               rtol=1e-8)


class KinkTest(absltest.TestCase):

  def _dead_relu_point(self, activation):
    # All hidden units at Z = 0 on every sample, zero output weights and the
    # output bias at mean(y): a critical point sitting exactly on the kink.
    x, y = _data(m=6, d_x=2, d_y=1)
    model = MLP(d_in=2, widths=(3,), d_out=1, activation=activation)
    params = ({"w": jnp.zeros((2, 3)), "b": jnp.zeros(3)},
              {"w": jnp.zeros((3, 1)), "b": jnp.asarray(y.mean(0))})
    return certify.certificate(model, params, x, y)

  def test_relu_on_kink_is_non_differentiable(self):
    for activation in ("relu", "leaky_relu"):
      cert = self._dead_relu_point(activation)
      self.assertEqual(cert.min_abs_preactivation, 0.0)
      self.assertLessEqual(cert.grad_norm, cert.grad_tol)
      self.assertEqual(cert.verdict, "non_differentiable")

  def test_smooth_activation_has_no_kink(self):
    cert = self._dead_relu_point("tanh")
    self.assertIsNone(cert.min_abs_preactivation)
    self.assertNotEqual(cert.verdict, "non_differentiable")


class BadInputTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.model = MLP(d_in=2, widths=(3,), d_out=1, activation="tanh")
    self.params = cast_params(self.model.init(jax.random.PRNGKey(0)),
                              jnp.float64)
    self.x, self.y = _data(m=5, d_x=2, d_y=1)

  def test_certificate_requires_float64(self):
    with self.assertRaisesRegex(ValueError, "float64"):
      certify.certificate(self.model, cast_params(self.params, jnp.float32),
                          self.x, self.y)
    with self.assertRaisesRegex(ValueError, "x must be float64"):
      certify.certificate(self.model, self.params,
                          self.x.astype(np.float32), self.y)

  def test_refine_casts_float32(self):
    result = certify.refine(self.model, cast_params(self.params, jnp.float32),
                            self.x.astype(np.float32), self.y, max_iters=1)
    self.assertTrue(all(leaf.dtype == jnp.float64 for leaf in
                        jax.tree_util.tree_leaves(result.params)))

  def test_nan_params(self):
    bad = ({"w": self.params[0]["w"].at[0, 0].set(jnp.nan),
            "b": self.params[0]["b"]}, self.params[1])
    for fn in (certify.certificate, certify.refine):
      with self.assertRaisesRegex(ValueError, "NaN"):
        fn(self.model, bad, self.x, self.y)

  def test_params_of_another_model(self):
    other = MLP(d_in=2, widths=(4,), d_out=1)
    with self.assertRaisesRegex(ValueError, "expected shapes"):
      certify.certificate(other, self.params, self.x, self.y)

  def test_shape_mismatch(self):
    with self.assertRaisesRegex(ValueError, "y must have shape"):
      certify.certificate(self.model, self.params, self.x, self.y[:4])
    with self.assertRaisesRegex(ValueError, "x must have shape"):
      certify.refine(self.model, self.params, self.x[:, :1], self.y)

  def test_unknown_options(self):
    with self.assertRaisesRegex(ValueError, "unknown method"):
      certify.refine(self.model, self.params, self.x, self.y, method="bfgs")
    with self.assertRaisesRegex(ValueError, "normalization"):
      certify.certificate(self.model, self.params, self.x, self.y,
                          normalization="avg")
    with self.assertRaisesRegex(ValueError, "lm_max_params"):
      certify.refine(self.model, self.params, self.x, self.y, lm_max_params=3)
    with self.assertRaisesRegex(ValueError, "escape_ratio"):
      certify.refine(self.model, self.params, self.x, self.y,
                     escape_ratio=1.0)

  def test_auto_method_switches_at_lm_max_params(self):
    kwargs = dict(max_iters=1)
    small = certify.refine(self.model, self.params, self.x, self.y,
                           method="auto", **kwargs)
    large = certify.refine(self.model, self.params, self.x, self.y,
                           method="auto", lm_max_params=3, **kwargs)
    self.assertEqual((small.method, large.method), ("lm", "newton_mr"))

  def test_far_point_is_not_critical(self):
    cert = certify.certificate(self.model, self.params, self.x, self.y)
    self.assertGreater(cert.grad_norm, 1e-3)
    self.assertEqual(cert.verdict, "not_critical")


class PopulationTest(absltest.TestCase):

  def test_refine_and_certify_matches_single_calls_and_reuses_compilation(
      self):
    x, y = _data(m=8, d_x=2, d_y=1, seed=3)
    small = MLP(d_in=2, widths=(), d_out=1, activation="identity")
    net = MLP(d_in=2, widths=(2,), d_out=1, activation="tanh")
    members = [(small, small.init(jax.random.PRNGKey(0))),
               (net, net.init(jax.random.PRNGKey(1))),
               (net, net.init(jax.random.PRNGKey(2)))]
    calls = []
    kwargs = dict(refine_kwargs=dict(max_iters=5))
    out = certify.refine_and_certify(
        members[:2], x, y, progress=lambda *a: calls.append(a[:2]), **kwargs)
    compiled = (certify._flat_loss_and_grad._cache_size(),
                certify._flat_dense_hessian._cache_size())
    out += certify.refine_and_certify(members[2:], x, y, **kwargs)
    self.assertEqual(calls, [(0, 2), (1, 2)])
    self.assertEqual(compiled, (certify._flat_loss_and_grad._cache_size(),
                                certify._flat_dense_hessian._cache_size()))
    for (model, params), (refined, cert) in zip(members, out):
      single = certify.refine(model, params, x, y, max_iters=5)
      self.assertEqual(refined.grad_norm_history, single.grad_norm_history)
      self.assertEqual(cert, certify.certificate(model, single.params, x, y))


if __name__ == "__main__":
  absltest.main()
