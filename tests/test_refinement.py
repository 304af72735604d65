"""Tests of lminima.critical.refinement against independent references.

References are closed forms (least squares, the spectrum of a linear network
at its origin) or numpy recomputations (forward passes, finite differences),
never lminima's own derivatives.
"""


from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import threadpoolctl

import lminima
from lminima.core import problem as problem_lib
from lminima.core.losses import loss_scale
from lminima.core.models import MLP
from lminima.core.tolerances import Tolerances
from lminima.critical import refinement

from _helpers import flax_variables, gaussian_data
from _helpers import linear_net_spectrum_at_origin


def _layers(variables):
  """The numpy layers (layer_1, layer_2, ...) of flax variables."""
  params = variables["params"]
  return [{k: np.asarray(v) for k, v in params[f"layer_{l}"].items()}
          for l in range(1, len(params) + 1)]


def _gradient_descent(model, variables, x, y, steps, lr):
  loss = lambda p: 0.5 * jnp.mean(jnp.sum((model.apply(p, x) - y) ** 2, 1))
  step = jax.jit(lambda p: jax.tree_util.tree_map(
      lambda a, g: a - lr * g, p, jax.grad(loss)(p)))
  for _ in range(steps):
    variables = step(variables)
  return variables


def _near_linear_net_saddle():
  """A 2-2-2 bias-free linear net 1e-3 from its origin saddle, and its data."""
  x, y = gaussian_data(m=9, d_x=2, d_y=2, seed=1)
  model = MLP(d_in=2, widths=(2,), d_out=2, activation="identity", bias=False)
  start = jax.tree_util.tree_map(
      lambda a: 1e-3 * jnp.asarray(a, jnp.float64),
      model.init_params(jax.random.PRNGKey(1)))
  return lminima.Problem.for_module(model, start, x, y), x, y


class SaddleTest(absltest.TestCase):

  def test_newton_mr_converges_to_nearby_saddle(self):
    # d_x = d_y = hidden = 2 with X^T Y of rank 2: the origin is a
    # nondegenerate saddle (eigenvalues +-2c sigma_i, each twice, none zero).
    problem, x, y = _near_linear_net_saddle()
    result = lminima.refine(problem, method="newton_mr")
    self.assertEqual(result.method, "newton_mr")
    self.assertTrue(result.converged, result)
    self.assertEqual(result.stop_reason, "grad_tol")
    self.assertLessEqual(result.grad_norm, result.grad_tol)
    flat = np.concatenate([np.ravel(layer["kernel"])
                           for layer in _layers(result.params)])
    self.assertLess(np.max(np.abs(flat)), 1e-8)  # it is the origin
    # The loss there is c ||Y||^2, computed without the model.
    np.testing.assert_allclose(result.loss, np.sum(y ** 2) / 18, rtol=1e-12)
    cert = lminima.certificate(problem.at(result.params))
    expected = linear_net_spectrum_at_origin(x, y, 2, "mean")
    self.assertEqual(cert.verdict, "saddle")
    self.assertEqual(cert.index, 4)
    self.assertEqual(cert.n_flat, 0)
    np.testing.assert_allclose(cert.lambda_min, expected[0], rtol=1e-6)
    np.testing.assert_allclose(cert.lambda_max, expected[-1], rtol=1e-6)

  def test_lm_step_is_a_positive_definite_shift_of_newton(self):
    # docs/theory.md#refinement: d = -(H + mu I)^{-1} g with
    # mu = max(0, -lambda_min) + nu ||g|| > -lambda_min. Recover mu from the
    # step taken, d . ((H + mu I) d + g) = 0, and check the whole equation.
    problem, _, _ = _near_linear_net_saddle()
    hessian = problem.dense_hessian()
    lambda_min = np.linalg.eigvalsh(hessian)[0]
    self.assertLess(lambda_min, 0)  # negative curvature at the start
    result = lminima.refine(problem, method="lm", max_iters=1)
    self.assertEqual(result.iters, 1)
    grad = problem.grad
    step = np.asarray(jax.flatten_util.ravel_pytree(result.params)[0]
                      - problem.flat)
    mu = -float(step @ (grad + hessian @ step)) / float(step @ step)
    self.assertGreater(mu, -lambda_min)
    np.testing.assert_allclose(hessian @ step + mu * step, -grad,
                               atol=1e-9 * np.linalg.norm(grad))
    self.assertLess(result.loss, problem.loss)

  def test_lm_from_near_saddle_reaches_global_minimum(self):
    # Same net; LM only accepts loss decreases, so it leaves the saddle and
    # (width 2 = full rank) reaches the least-squares optimum.
    problem, x, y = _near_linear_net_saddle()
    result = lminima.refine(problem, method="lm")
    self.assertEqual(result.method, "lm")
    self.assertTrue(result.converged, result)
    w_star = np.linalg.lstsq(x, y, rcond=None)[0]
    optimum = loss_scale("mean", 9) * np.sum((x @ w_star - y) ** 2)
    np.testing.assert_allclose(result.loss, optimum, rtol=1e-10)
    first, second = _layers(result.params)
    np.testing.assert_allclose(first["kernel"] @ second["kernel"], w_star,
                               atol=1e-8)
    # Every accepted LM step decreases L, so L(end) < L(start) < L(origin).
    self.assertLess(result.loss, problem.loss)
    cert = lminima.certificate(problem.at(result.params))
    # The GL(2) symmetry W1 G, G^-1 W2 gives 4 flat directions at a minimum
    # of the 2-2-2 net; the other 4 eigenvalues are positive.
    self.assertEqual((cert.verdict, cert.index, cert.n_flat),
                     ("local_min", 0, 4))


class ConvexTest(parameterized.TestCase):

  @parameterized.parameters(("mean", False), ("sum", True))
  def test_linear_model_strict_minimum(self, normalization, bias):
    x, y = gaussian_data(m=11, d_x=3, d_y=2, seed=2)
    model = MLP(d_in=3, widths=(), d_out=2, activation="identity", bias=bias)
    problem = lminima.Problem.for_module(
        model, model.init_params(jax.random.PRNGKey(0)), x, y,
        normalization=normalization)
    result = lminima.refine(problem)
    self.assertTrue(result.converged)
    # A quadratic: each damped Newton step shrinks the error by mu/(lam+mu)
    # with mu = nu ||g||, so a handful of steps.
    self.assertLessEqual(result.iters, 8)
    self.assertLen(result.grad_norm_history, result.iters + 1)
    design = np.hstack([np.ones((11, 1)), x]) if bias else x
    w_star = np.linalg.lstsq(design, y, rcond=None)[0]
    (layer,) = _layers(result.params)
    np.testing.assert_allclose(layer["kernel"], w_star[-3:], atol=1e-10)
    if bias:
      np.testing.assert_allclose(layer["bias"], w_star[0], atol=1e-10)
    c = loss_scale(normalization, 11)
    # Analytic Hessian 2c (Z^T Z kron I_{d_y}); its spectrum does not depend
    # on the parameter order.
    analytic = np.linalg.eigvalsh(2 * c * np.kron(design.T @ design,
                                                  np.eye(2)))
    cert = lminima.certificate(problem.at(result.params))
    self.assertEqual(cert.verdict, "local_min")
    self.assertEqual((cert.index, cert.n_flat), (0, 0))
    np.testing.assert_allclose(cert.lambda_min, analytic[0], rtol=1e-10)
    np.testing.assert_allclose(cert.lambda_max, analytic[-1], rtol=1e-10)
    np.testing.assert_allclose(
        cert.loss, c * np.sum((design @ w_star - y) ** 2), rtol=1e-10)
    self.assertEqual(cert.loss, result.loss)


class CustomProblemTest(absltest.TestCase):
  """A Problem of a bare callable, not a flax module."""

  def test_linear_callable_reaches_least_squares_minimum(self):
    x, y = gaussian_data(m=13, d_x=4, d_y=3, seed=5)
    w0 = np.random.default_rng(6).standard_normal((4, 3))
    problem = lminima.Problem(lambda p, x: x @ p["w"], {"w": w0}, x, y)
    self.assertEqual((problem.n_params, problem.features_fn,
                      problem.kinks_fn), (12, None, None))
    result = lminima.refine(problem)
    self.assertEqual(result.stop_reason, "grad_tol")
    self.assertLessEqual(result.grad_norm, result.grad_tol)
    self.assertLessEqual(result.iters, 8)
    w_star = np.linalg.lstsq(x, y, rcond=None)[0]
    np.testing.assert_allclose(result.params["w"], w_star, atol=1e-10)
    self.assertEqual(result.param_norm_start, np.linalg.norm(w0))
    np.testing.assert_allclose(result.param_norm, np.linalg.norm(w_star),
                               rtol=1e-10)
    c = loss_scale("mean", 13)
    cert = lminima.certificate(problem.at(result.params))
    spectrum = np.linalg.eigvalsh(2 * c * np.kron(x.T @ x, np.eye(3)))
    self.assertEqual(cert.verdict, "local_min")
    self.assertEqual((cert.index, cert.n_flat, cert.n_params), (0, 0, 12))
    self.assertIsNone(cert.min_abs_preactivation)
    np.testing.assert_allclose(cert.lambda_min, spectrum[0], rtol=1e-10)
    np.testing.assert_allclose(cert.lambda_max, spectrum[-1], rtol=1e-10)
    np.testing.assert_allclose(cert.loss,
                               c * np.sum((x @ w_star - y) ** 2), rtol=1e-10)


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
    start = flax_variables({"kernel": [[0.5]]}, {"kernel": [[0.3]]})
    problem = lminima.Problem.for_module(model, start, x, y)
    result = lminima.refine(problem)
    self.assertTrue(result.converged, result)
    a, b = (float(layer["kernel"][0, 0]) for layer in _layers(result.params))
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
    cert = lminima.certificate(problem.at(result.params))
    self.assertEqual((cert.verdict, cert.index, cert.n_flat),
                     ("local_min", 0, 1))
    self.assertLess(abs(cert.lambda_min), 1e-10)
    np.testing.assert_allclose(
        cert.lambda_max, 2 * c * np.sum(x ** 2) * (a ** 2 + b ** 2),
        rtol=1e-10)


def _numpy_tanh_loss(variables, x, y):
  """L of a one-hidden-layer tanh net with biases, in numpy (mean, c=1/2m)."""
  hidden, out = _layers(variables)
  yhat = (np.tanh(x @ hidden["kernel"] + hidden["bias"]) @ out["kernel"]
          + out["bias"])
  return 0.5 * np.mean(np.sum((yhat - y) ** 2, axis=1))


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
    layer = {"kernel": [[1.0]], "bias": [0.0]}
    cls.start = flax_variables(layer, layer)
    cls.problem = lminima.Problem.for_module(cls.model, cls.start, cls.x,
                                             cls.y)

  def test_stops_as_escaping(self):
    result = lminima.refine(self.problem)
    self.assertEqual(result.stop_reason, "escaping")
    self.assertFalse(result.converged)
    self.assertLess(result.iters, 20)  # no iterations burnt
    start_norm = np.sqrt(2.0)  # the two unit weights
    self.assertAlmostEqual(result.param_norm_start, start_norm, delta=1e-15)
    flat = np.concatenate([np.ravel(leaf) for leaf in
                           jax.tree_util.tree_leaves(result.params)])
    self.assertAlmostEqual(result.param_norm, float(np.linalg.norm(flat)),
                           delta=1e-12)
    # It stopped at the first iterate past 5 max(1, ||theta_0||).
    self.assertGreater(result.param_norm, 5 * start_norm)
    self.assertLess(result.loss, _numpy_tanh_loss(self.start, self.x, self.y))
    self.assertAlmostEqual(
        result.loss, _numpy_tanh_loss(result.params, self.x, self.y),
        delta=1e-14)
    cert = lminima.certificate(self.problem.at(result.params))
    self.assertGreater(cert.grad_norm, cert.grad_tol)
    self.assertEqual(cert.verdict, "not_critical")

  def test_escape_ratio_sets_the_threshold(self):
    # A larger ratio lets the iterates go further out before stopping.
    near = lminima.refine(self.problem, escape_ratio=2.0)
    far = lminima.refine(self.problem, escape_ratio=20.0)
    self.assertEqual((near.stop_reason, far.stop_reason),
                     ("escaping", "escaping"))
    self.assertGreater(near.param_norm, 2 * near.param_norm_start)
    self.assertGreater(far.param_norm, 20 * far.param_norm_start)
    self.assertLess(near.iters, far.iters)

  def test_without_the_check_it_converges_only_by_saturating(self):
    # Ignoring the escape, LM "reaches" ||g|| <= 1e-10 far out along the
    # path, where L ~ 0 and tanh' ~ 0 make g tiny: not a critical point of
    # L (there is none), just the float64 shadow of the infimum.
    escaping = lminima.refine(self.problem)
    result = lminima.refine(self.problem, escape_ratio=None)
    self.assertNotEqual(result.stop_reason, "escaping")
    self.assertGreater(result.param_norm, 10 * escaping.param_norm)
    self.assertLess(_numpy_tanh_loss(result.params, self.x, self.y), 1e-10)
    self.assertGreater(_numpy_tanh_loss(result.params, self.x, self.y), 0)

  def test_stop_when_is_asked_every_few_iterations(self):
    asked = []

    def stop_when(losses, grads, norms):
      asked.append((len(losses), len(grads), len(norms)))
      return len(asked) == 2
    result = lminima.refine(self.problem, escape_ratio=None,
                            stop_on_grad=False, max_iters=100,
                            stop_when=stop_when)
    every = refinement.STOP_WHEN_EVERY
    self.assertEqual(asked, [(every + 1,) * 3, (2 * every + 1,) * 3])
    self.assertEqual((result.stop_reason, result.iters),
                     ("stop_when", 2 * every))

  def test_restores_blas_threads(self):
    before = threadpoolctl.threadpool_info()
    lminima.refine(self.problem, max_iters=2)
    self.assertEqual(threadpoolctl.threadpool_info(), before)


class RefineTanhTest(parameterized.TestCase):
  """A 3-16-1 tanh net (81 parameters) on 20 samples, after 300 GD steps."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.x, cls.y = gaussian_data(m=20, d_x=3, d_y=1, seed=0)
    cls.model = MLP(d_in=3, widths=(16,), d_out=1, activation="tanh")
    start = jax.tree_util.tree_map(
        lambda a: jnp.asarray(a, jnp.float64),
        cls.model.init_params(jax.random.PRNGKey(0)))
    cls.trained = _gradient_descent(cls.model, start, jnp.asarray(cls.x),
                                    jnp.asarray(cls.y), steps=300, lr=0.1)
    cls.problem = lminima.Problem.for_module(cls.model, cls.trained, cls.x,
                                             cls.y)

  def _numpy_outputs(self, problem, theta):
    hidden, out = _layers(problem.unravel(jnp.asarray(theta)))
    return (np.tanh(self.x @ hidden["kernel"] + hidden["bias"])
            @ out["kernel"] + out["bias"])

  @parameterized.parameters("lm", "newton_mr")
  def test_reaches_tolerance_superlinearly(self, method):
    result = lminima.refine(self.problem, method=method)
    self.assertEqual(result.method, method)
    self.assertTrue(result.converged, result.grad_norm_history)
    self.assertLessEqual(result.grad_norm, result.grad_tol)
    history = np.array(result.grad_norm_history)
    self.assertLen(history, result.iters + 1)
    self.assertEqual(history[0], self.problem.grad_norm)
    # Superlinear: over the last three steps the contraction factor
    # ||g_{k+1}|| / ||g_k|| keeps shrinking and ends far below 1.
    history = history[history > 1e-13]  # above the rounding of g
    ratios = history[-3:] / history[-4:-1]
    self.assertTrue(np.all(np.diff(ratios) < 0), history)
    self.assertLess(ratios[-1], 1e-2, history)
    refined = self.problem.at(result.params)
    flat = np.asarray(refined.flat)
    # Independent check of criticality: central differences of a numpy
    # forward pass (error ~ h^2 |L'''| + eps / h, about 1e-10 here).
    numpy_loss = lambda theta: 0.5 * np.mean(
        (self._numpy_outputs(refined, theta) - self.y) ** 2)
    self.assertAlmostEqual(numpy_loss(flat), result.loss, delta=1e-15)
    step = 1e-5
    fd_grad = [(numpy_loss(flat + step * e) - numpy_loss(flat - step * e))
               / (2 * step) for e in np.eye(flat.size)]
    self.assertLess(np.linalg.norm(fd_grad), 1e-8)
    # 81 parameters > 20 samples: the net interpolates (L ~ 0), so the
    # Hessian is the Gauss-Newton matrix 2c J^T J of the output Jacobian J
    # (20 x 81, full row rank): 61 zero eigenvalues and 20 positive ones.
    # J from central differences of the numpy forward pass.
    self.assertLess(result.loss, 1e-20)
    h = 1e-6
    jacobian = np.stack(
        [(self._numpy_outputs(refined, flat + h * e)
          - self._numpy_outputs(refined, flat - h * e)).ravel() / (2 * h)
         for e in np.eye(flat.size)], axis=1)
    reference = np.linalg.eigvalsh(jacobian.T @ jacobian / 20)
    self.assertEqual(np.linalg.matrix_rank(jacobian), 20)
    cert = lminima.certificate(refined)
    self.assertEqual(cert.grad_norm, result.grad_norm)
    self.assertEqual((cert.method, cert.n_params), ("dense", 81))
    # Expected counts from the reference, with a wide margin around eig_tol.
    self.assertGreater(reference[61], 1e3 * cert.eig_tol)
    self.assertLess(np.max(np.abs(reference[:61])), 1e-3 * cert.eig_tol)
    self.assertEqual((cert.verdict, cert.index, cert.n_flat),
                     ("local_min", 0, 61))
    np.testing.assert_allclose(cert.lambda_max, reference[-1], rtol=1e-7)
    self.assertLess(abs(cert.lambda_min), 1e-9)
    np.testing.assert_allclose(cert.eig_tol, 1e-6 * reference[-1], rtol=1e-7)

  def test_lanczos_agrees_with_dense(self):
    refined = self.problem.at(lminima.refine(self.problem).params)
    dense = lminima.certificate(refined)
    lanczos = lminima.certificate(refined, dense_max_params=10)
    self.assertEqual((dense.method, lanczos.method), ("dense", "lanczos"))
    self.assertEqual(dense.verdict, lanczos.verdict)
    np.testing.assert_allclose(lanczos.lambda_max, dense.lambda_max,
                               rtol=1e-8)
    np.testing.assert_allclose(lanczos.lambda_min, dense.lambda_min,
                               atol=1e-8 * dense.lambda_max)
    self.assertEqual(lanczos.index, dense.index)
    # The 61 flat eigenvalues are a cluster of width ~1e-12 around 0; Ritz
    # values resolve at most a few copies of it (at least one: the extreme
    # Ritz values have converged, and 0 is isolated by the gap 1.3e-2).
    self.assertEqual(dense.n_flat, 61)
    self.assertBetween(lanczos.n_flat, 1, 3)


class RefineOptionsTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.model = MLP(d_in=2, widths=(3,), d_out=1, activation="tanh")
    self.x, self.y = gaussian_data(m=5, d_x=2, d_y=1)
    self.problem = lminima.Problem.for_module(
        self.model, self.model.init_params(jax.random.PRNGKey(0)), self.x,
        self.y)

  def test_bad_options(self):
    for kwargs, message in (
        (dict(method="bfgs"), "unknown method"),
        (dict(max_iters=-1), "max_iters >= 0"),
        (dict(escape_ratio=1.0), "escape_ratio"),
        (dict(method="lm", lm_max_params=3), "lm_max_params"),
    ):
      with self.subTest(**kwargs):
        with self.assertRaisesRegex(ValueError, message):
          lminima.refine(self.problem, **kwargs)

  def test_auto_method_switches_at_lm_max_params(self):
    n = self.problem.n_params
    self.assertEqual(n, self.model.n_params)
    for lm_max_params, expected in ((n, "lm"), (n - 1, "newton_mr")):
      result = lminima.refine(self.problem, method="auto", max_iters=1,
                              lm_max_params=lm_max_params)
      self.assertEqual(result.method, expected)
      self.assertEqual(result.iters, 1)

  def test_a_loose_tolerance_stops_at_the_start(self):
    # ||g|| <= sqrt(2 ||H|| L) fails only where the quadratic model does
    # not hold; grad_rtol = 1e6 accepts the start.
    result = lminima.refine(self.problem, tol=Tolerances(grad_rtol=1e6))
    self.assertEqual((result.stop_reason, result.iters, result.converged),
                     ("grad_tol", 0, True))
    self.assertGreaterEqual(result.grad_tol, result.grad_norm)

  def test_max_iters_zero_returns_the_start(self):
    result = lminima.refine(self.problem, max_iters=0)
    self.assertEqual((result.stop_reason, result.iters, result.converged),
                     ("max_iters", 0, False))
    self.assertEqual(result.loss, self.problem.loss)
    self.assertEqual(result.grad_norm_history, (self.problem.grad_norm,))
    np.testing.assert_array_equal(
        jax.flatten_util.ravel_pytree(result.params)[0], self.problem.flat)

  def test_max_iters_caps_the_iterations(self):
    result = lminima.refine(self.problem, max_iters=2, stop_on_grad=False)
    self.assertEqual((result.stop_reason, result.iters), ("max_iters", 2))
    self.assertLen(result.grad_norm_history, 3)
    # Accepted LM steps decrease L.
    self.assertLess(result.loss, self.problem.loss)

  def test_critical_start_takes_no_step(self):
    # The bias-free linear net's origin has g = 0 exactly.
    model = MLP(d_in=2, widths=(3,), d_out=1, activation="identity",
                bias=False)
    origin = jax.tree_util.tree_map(
        jnp.zeros_like, model.init_params(jax.random.PRNGKey(0)))
    problem = lminima.Problem.for_module(model, origin, self.x, self.y)
    for method in ("lm", "newton_mr"):
      result = lminima.refine(problem, method=method)
      self.assertEqual((result.stop_reason, result.iters, result.grad_norm),
                       ("grad_tol", 0, 0.0))
      self.assertEqual(result.param_norm, 0.0)

  def test_non_finite_start_stops_at_once(self):
    # X w overflows when squared: L = inf at the start.
    x, y = gaussian_data(m=4, d_x=2, d_y=1)
    problem = lminima.Problem(lambda p, x: x @ p["w"],
                              {"w": np.full((2, 1), 1e200)}, x, y)
    self.assertEqual(problem.loss, float("inf"))
    for method in ("lm", "newton_mr"):
      with np.errstate(over="ignore"):  # ||g||_2 overflows as well
        result = lminima.refine(problem, method=method)
      self.assertEqual((result.stop_reason, result.iters, result.converged),
                       ("non_finite", 0, False))

  def test_newton_mr_stalls_where_the_merit_is_flat(self):
    # L(t) = (t^3 - 5/2)^2 / 2 at t = 1: g = -9/2 but H = 15 t^4 - 15 t = 0
    # exactly, so the merit ||g||^2 / 2 has gradient H g = 0. MINRES gives
    # d = 0, the fallback -H g is 0 too: no step can decrease the merit, and
    # the documented outcome is "stalled" at once, not max_iters null steps.
    problem = lminima.Problem(lambda p, x: x * p["t"] ** 3,
                              {"t": np.ones((1, 1))}, np.ones((1, 1)),
                              np.full((1, 1), 2.5), normalization="sum")
    self.assertEqual((problem.grad.tolist(), problem.dense_hessian().tolist()),
                     ([-4.5], [[0.0]]))
    result = lminima.refine(problem, method="newton_mr", max_iters=5)
    self.assertEqual((result.stop_reason, result.iters), ("stalled", 0))

  def test_float32_start_is_cast(self):
    variables = self.model.init_params(jax.random.PRNGKey(0), jnp.float32)
    problem = lminima.Problem.for_module(
        self.model, variables, self.x.astype(np.float32), self.y)
    result = lminima.refine(problem, max_iters=1)
    self.assertTrue(all(leaf.dtype == jnp.float64 for leaf in
                        jax.tree_util.tree_leaves(result.params)))
    # The same start in float64 gives the same first step.
    start64 = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64),
                                     variables)
    same = lminima.refine(lminima.Problem.for_module(
        self.model, start64, self.x.astype(np.float32).astype(np.float64),
        self.y), max_iters=1)
    self.assertEqual(result.grad_norm_history, same.grad_norm_history)

  def test_members_of_one_shape_share_compilation(self):
    # Equal modules and equal shapes: the second member compiles nothing.
    model = MLP(d_in=2, widths=(2,), d_out=1, activation="tanh")
    x, y = gaussian_data(m=8, d_x=2, d_y=1, seed=3)
    first = lminima.Problem.for_module(
        model, model.init_params(jax.random.PRNGKey(1)), x, y)
    lminima.refine(first, max_iters=5)
    compiled = (problem_lib._loss_and_flat_grad._cache_size(),
                problem_lib._dense_hessian._cache_size())
    other = MLP(d_in=2, widths=(2,), d_out=1, activation="tanh")
    second = lminima.Problem.for_module(
        other, other.init_params(jax.random.PRNGKey(2)), x, y)
    result = lminima.refine(second, max_iters=5)
    self.assertGreater(result.iters, 0)
    self.assertEqual(compiled, (problem_lib._loss_and_flat_grad._cache_size(),
                                problem_lib._dense_hessian._cache_size()))


class PowerCurvatureTest(absltest.TestCase):

  def test_estimate_is_a_lower_bound_near_the_dense_norm(self):
    # Newton-MR's gradient test uses ||H|| from power iteration; against the
    # largest |eigenvalue| of a dense eigh it is at most that and close to it.
    x, y = gaussian_data(m=20, d_x=3, d_y=1, seed=2)
    model = MLP(d_in=3, widths=(4,), d_out=1)
    problem = lminima.Problem.for_module(
        model, model.init_params(jax.random.PRNGKey(3)), x, y)
    estimate = float(refinement.power_curvature(problem.hvp_operator(),
                                                problem.n_params))
    norm = np.max(np.abs(np.linalg.eigvalsh(problem.dense_hessian())))
    self.assertLessEqual(estimate, norm * (1 + 1e-10))
    self.assertGreater(estimate, 0.9 * norm)


if __name__ == "__main__":
  absltest.main()
