"""Tests of lminima.theory: D(theta) and the identities of DESIGN 1.3.

Critical points are reached with ``lminima.certify.refine``; every test that
needs one first asserts, with theory's own autodiff gradient, that the
gradient norm is <= 1e-10, so a refinement that stops early fails loudly
instead of weakening the identity checks.
"""

import json

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
import numpy as np

from lminima import certify
from lminima import classical
from lminima import theory
from lminima.losses import loss_scale, squared_loss
from lminima.models import ACTIVATIONS, HOMOGENEOUS_ACTIVATIONS, MLP
from lminima.models import cast_params

GRAD_TOL = 1e-10
IDENTITY_RTOL = 1e-8  # |L - rhs| <= IDENTITY_RTOL * (1 + L) at critical points.


def _perturbed(params, rng, scale):
  """float64 params plus N(0, scale^2) noise (makes the zero biases nonzero)."""
  return jax.tree_util.tree_map(
      lambda a: np.asarray(a, np.float64) + scale * rng.standard_normal(
          a.shape), cast_params(params, jnp.float64))


def _random_point(activation, bias, widths=(4, 3), d_in=3, d_out=2, m=7,
                  seed=0):
  model = MLP(d_in, widths, d_out, activation, bias)
  rng = np.random.default_rng(seed)
  params = _perturbed(model.init(jax.random.PRNGKey(seed)), rng, 0.3)
  x = rng.standard_normal((m, d_in))
  y = rng.standard_normal((m, d_out))
  return model, params, x, y


def _teacher_problem(activation, widths, bias, *, m=40, d_in=3, d_out=2,
                     seed=0, noise=0.01, margin=0.1):
  """Noisy targets of a random teacher; the start is near the teacher.

  Inputs are kept only where every teacher pre-activation is at least
  ``margin`` away from 0, and the noise is small, so that the nearby minimum
  tends to be an interior, differentiable critical point (no ReLU kinks, no
  units at infinity) with a nonzero loss. Tests check both.
  """
  model = MLP(d_in, widths, d_out, activation, bias)
  rng = np.random.default_rng(seed)
  teacher = _perturbed(model.init(jax.random.PRNGKey(seed)), rng, 0.3)
  x = rng.standard_normal((8 * m, d_in))
  pre = model.forward(teacher, x)[1]
  far_from_kink = np.all(np.concatenate(
      [np.abs(np.asarray(z)) > margin for z in pre], axis=1), axis=1)
  x = x[far_from_kink][:m]
  assert x.shape[0] == m, "too few inputs away from the kinks"
  y = np.asarray(model.apply(teacher, x)) + noise * rng.standard_normal(
      (m, d_out))
  return model, _perturbed(teacher, rng, 0.01), x, y


def _refine(model, params, x, y):
  """float64 parameters at the critical point ``certify.refine`` reaches."""
  return certify.refine(model, params, x, y).params


def _numpy_loss(model, params, x, y, normalization="mean"):
  yhat = np.asarray(model.apply(params, x))
  return loss_scale(normalization, x.shape[0]) * np.sum((yhat - y) ** 2)


def _lstsq_value(features, y, c):
  """c ||Y - F F^+ Y||^2 by numpy.linalg.lstsq (independent reference)."""
  coef = np.linalg.lstsq(features, y, rcond=None)[0]
  return c * np.sum((y - features @ coef) ** 2)


def _ones(m):
  return np.ones((m, 1))


def _inclusion_residual(d, features):
  """||(I - P[D]) M||_F / ||M||_F, M = F kron I_{d_y}, by lstsq."""
  design = np.kron(features, np.eye(d.shape[0] // features.shape[0]))
  fitted = d @ np.linalg.lstsq(d, design, rcond=None)[0]
  return np.linalg.norm(design - fitted) / np.linalg.norm(design)


class DerivativeMatrixTest(parameterized.TestCase):

  @parameterized.product(activation=sorted(ACTIVATIONS), bias=(True, False),
                         normalization=("mean", "sum"))
  def test_gradient_is_2c_dt_residual(self, activation, bias, normalization):
    model, params, x, y = _random_point(activation, bias)
    d = theory.derivative_matrix(model, params, x)
    grad = ravel_pytree(jax.grad(
        lambda p: squared_loss(model.apply(p, x), y, normalization))(params))[0]
    c = loss_scale(normalization, x.shape[0])
    predicted = 2 * c * d.matrix.T @ (d.yhat - y).reshape(-1)
    np.testing.assert_allclose(predicted, grad, rtol=0,
                               atol=1e-12 * np.linalg.norm(grad))
    self.assertEqual(d.matrix.shape, (x.shape[0] * 2, model.n_params))

  def test_matches_central_differences(self):
    model, params, x, _ = _random_point("tanh", True, widths=(3,), m=4)
    flat, unravel = ravel_pytree(params)
    step = 1e-6
    columns = []
    for j in range(flat.size):
      e = np.zeros(flat.size)
      e[j] = step
      columns.append((np.asarray(model.apply(unravel(flat + e), x))
                      - np.asarray(model.apply(unravel(flat - e), x))
                      ).reshape(-1) / (2 * step))
    d = theory.derivative_matrix(model, params, x).matrix
    np.testing.assert_allclose(d, np.stack(columns, axis=1), rtol=0,
                               atol=1e-8)

  @parameterized.parameters(True, False)
  def test_output_blocks_are_kronecker_products(self, bias):
    model, params, x, _ = _random_point("softplus", bias)
    d = theory.derivative_matrix(model, params, x)
    hidden = np.asarray(model.forward(params, x)[2][-1])
    eye = np.eye(model.d_out)
    np.testing.assert_array_equal(d.block("layer_3/w"), np.kron(hidden, eye))
    np.testing.assert_array_equal(d.weight_blocks[-1], np.kron(hidden, eye))
    if bias:
      np.testing.assert_array_equal(d.bias_blocks[-1],
                                    np.kron(_ones(x.shape[0]), eye))
    else:
      self.assertEqual(d.bias_blocks, ())

  def test_first_layer_block_closed_form(self):
    # yhat[i,k] = sum_b tanh(z[i,b]) W2[b,k] + b2[k], z = x W1 + b1, so
    # d yhat[i,k] / d W1[a,b] = x[i,a] tanh'(z[i,b]) W2[b,k].
    model, params, x, _ = _random_point("tanh", True, widths=(5,))
    w1, b1 = np.asarray(params[0]["w"]), np.asarray(params[0]["b"])
    w2 = np.asarray(params[1]["w"])
    slope = 1 - np.tanh(x @ w1 + b1) ** 2
    rows = x.shape[0] * model.d_out
    want_w = np.einsum("ia,ib,bk->ikab", x, slope, w2).reshape(rows, -1)
    want_b = np.einsum("ib,bk->ikb", slope, w2).reshape(rows, -1)
    d = theory.derivative_matrix(model, params, x)
    np.testing.assert_allclose(d.block("layer_1/w"), want_w, atol=1e-14)
    np.testing.assert_allclose(d.block("layer_1/b"), want_b, atol=1e-14)

  def test_nbytes_and_budget(self):
    model, params, x, _ = _random_point("relu", True)
    d = theory.derivative_matrix(model, params, x)
    nbytes = theory.derivative_matrix_nbytes(model, x.shape[0])
    self.assertEqual(nbytes, d.matrix.nbytes)
    theory.derivative_matrix(model, params, x, memory_budget_bytes=nbytes)
    with self.assertRaisesRegex(ValueError, "memory budget"):
      theory.derivative_matrix(model, params, x,
                               memory_budget_bytes=nbytes - 1)

  def test_bad_inputs(self):
    model, params, x, y = _random_point("tanh", True)
    bad_x = x.copy()
    bad_x[0, 0] = np.nan
    bad_y = y.copy()
    bad_y[1, 1] = np.inf
    bad_params = _perturbed(params, np.random.default_rng(0), 0.0)
    bad_params[0]["w"][0, 0] = np.nan
    cases = {
        "x must have shape": (params, x[:, :2], y),
        "y must have shape": (params, x, y[:, :1]),
        "y must have shape.*to match": (params, x, y[:-1]),
        "x contains NaN": (params, bad_x, y),
        "y contains NaN": (params, x, bad_y),
        "params contain NaN": (bad_params, x, y),
    }
    for message, (p, xx, yy) in cases.items():
      with self.subTest(message), self.assertRaisesRegex(ValueError, message):
        theory.critical_point_identity(model, p, xx, yy)
    with self.assertRaisesRegex(ValueError, "layer_1: expected shapes"):
      theory.derivative_matrix(model, params[::-1], x)
    with self.assertRaisesRegex(ValueError, "unknown block"):
      theory.derivative_matrix(model, params, x).block("layer_9/w")
    with self.assertRaisesRegex(ValueError, "rank_tol must be positive"):
      theory.full_rank_check(model, params, x, y, rank_tol=0.0)
    with self.assertRaisesRegex(ValueError, "features must have shape"):
      theory.subspace_bound(model, params, x, y, features=x[:-1])
    with self.assertRaisesRegex(ValueError, "derivative has shape"):
      theory.euler_identity(model, params, x, y, derivative=(
          theory.derivative_matrix(model, params, x[:-1])))
    with self.assertRaisesRegex(ValueError, "layer must be in"):
      theory.euler_blocks(model, 0)
    for needs_d in (theory.euler_identity, theory.subspace_bound,
                    theory.full_rank_check, theory.residuals):
      with self.subTest(needs_d.__name__), self.assertRaisesRegex(
          ValueError, "memory budget"):
        needs_d(model, params, x, y, memory_budget_bytes=8)


class EulerIdentityTest(parameterized.TestCase):

  @parameterized.product(activation=HOMOGENEOUS_ACTIVATIONS,
                         bias=(True, False))
  def test_holds_for_every_layer(self, activation, bias):
    model, params, x, y = _random_point(activation, bias)
    out = theory.euler_identity(model, params, x, y)
    self.assertTrue(out.homogeneous)
    for layer in out.layers:
      self.assertTrue(layer.exact_by_homogeneity)
      self.assertLess(layer.euler_residual, 1e-13 * (1 + out.yhat_norm),
                      msg=f"layer {layer.layer}")
    self.assertEqual(out.euler_residual_max,
                     max(layer.euler_residual for layer in out.layers))

  @parameterized.parameters(*HOMOGENEOUS_ACTIVATIONS)
  def test_scaling_the_group_scales_the_output(self, activation):
    # The homogeneity behind E^(l), checked on the forward pass alone.
    model, params, x, _ = _random_point(activation, True)
    yhat = np.asarray(model.apply(params, x))
    for l in range(1, model.depth + 2):
      scaled = [dict(layer) for layer in params]
      for name in theory.euler_blocks(model, l):
        layer, key = name.split("/")
        index = int(layer[len("layer_"):]) - 1
        scaled[index][key] = 1.7 * scaled[index][key]
      np.testing.assert_allclose(np.asarray(model.apply(tuple(scaled), x)),
                                 1.7 * yhat, rtol=1e-13, atol=1e-13)

  def test_own_bias_alone_is_not_enough_below_the_output(self):
    model, params, x, y = _random_point("relu", True)
    d = theory.derivative_matrix(model, params, x)
    vec_yhat = d.yhat.reshape(-1)
    for l in range(1, model.depth + 2):
      own = (d.block(f"layer_{l}/w") @ np.ravel(params[l - 1]["w"])
             + d.block(f"layer_{l}/b") @ np.ravel(params[l - 1]["b"]))
      residual = np.linalg.norm(own - vec_yhat)
      if l == model.depth + 1:
        self.assertLess(residual, 1e-13 * np.linalg.norm(vec_yhat))
      else:
        self.assertGreater(residual, 1e-3 * np.linalg.norm(vec_yhat))

  def test_fails_for_tanh_except_the_output_layer(self):
    model, params, x, y = _random_point("tanh", True)
    out = theory.euler_identity(model, params, x, y)
    self.assertFalse(out.homogeneous)
    *hidden_layers, output_layer = out.layers
    for layer in hidden_layers:
      self.assertFalse(layer.exact_by_homogeneity)
      self.assertGreater(layer.euler_residual, 1e-3 * out.yhat_norm)
    self.assertTrue(output_layer.exact_by_homogeneity)
    self.assertLess(output_layer.euler_residual, 1e-13 * out.yhat_norm)

  # Seeds: with two hidden layers refinement ends on a kink (min |Z| ~ 1e-15,
  # not a differentiable point) or stalls for most seeds; these end inside.
  @parameterized.parameters(((3,), False, 0), ((4, 3), False, 1),
                            ((4, 3), True, 3))
  def test_projection_form_at_refined_leaky_relu_points(self, widths, bias,
                                                        seed):
    model, start, x, y = _teacher_problem("leaky_relu", widths, bias,
                                          seed=seed)
    params = _refine(model, start, x, y)
    out = theory.euler_identity(model, params, x, y)
    self.assertLess(out.grad_norm, GRAD_TOL)
    min_pre_activation = min(float(np.min(np.abs(z)))
                             for z in model.forward(params, x)[1])
    self.assertGreater(min_pre_activation, 1e-6)  # differentiable point
    loss = _numpy_loss(model, params, x, y)
    self.assertAlmostEqual(out.loss, loss, delta=1e-14)
    self.assertGreater(loss, 1e-6)
    for layer in out.layers:
      self.assertLess(layer.gap, IDENTITY_RTOL * (1 + loss),
                      msg=f"layer {layer.layer}")
      self.assertLess(layer.euler_residual, 1e-12 * (1 + out.yhat_norm))


class CriticalPointIdentityTest(parameterized.TestCase):

  @parameterized.parameters(("tanh", (3,), True), ("softplus", (3,), True),
                            ("tanh", (3, 2), False))
  def test_holds_at_refined_points(self, activation, widths, bias):
    model, start, x, y = _teacher_problem(activation, widths, bias)
    c = loss_scale("mean", x.shape[0])
    features = np.asarray(model.forward(start, x)[2][-1])
    features = np.hstack([features, _ones(x.shape[0])]) if bias else features
    before = theory.critical_point_identity(model, start, x, y)
    # Away from criticality L exceeds the best output layer for the same
    # hidden layer, so the identity below is not true by construction.
    self.assertGreater(before.gap_last, 1e-6)
    self.assertAlmostEqual(before.last_value, _lstsq_value(features, y, c),
                           delta=1e-14)

    params = _refine(model, start, x, y)
    out = theory.critical_point_identity(model, params, x, y)
    loss = _numpy_loss(model, params, x, y)
    self.assertLess(out.grad_norm, GRAD_TOL)
    self.assertGreater(loss, 1e-6)
    self.assertAlmostEqual(out.loss, loss, delta=1e-14)
    self.assertLess(out.gap_full, IDENTITY_RTOL * (1 + loss))
    self.assertLess(out.gap_last, IDENTITY_RTOL * (1 + loss))
    features = np.asarray(model.forward(params, x)[2][-1])
    features = np.hstack([features, _ones(x.shape[0])]) if bias else features
    self.assertAlmostEqual(out.last_value, _lstsq_value(features, y, c),
                           delta=1e-14)
    self.assertEqual(out.rank_last_hidden, np.linalg.matrix_rank(features))
    d = theory.derivative_matrix(model, params, x).matrix
    self.assertEqual(out.rank_D, np.linalg.matrix_rank(d))
    self.assertIsNone(out.full_D_skipped)

  def test_skips_full_form_over_budget(self):
    model, params, x, y = _random_point("tanh", True)
    full = theory.critical_point_identity(model, params, x, y)
    cheap = theory.critical_point_identity(model, params, x, y,
                                           memory_budget_bytes=8)
    self.assertIsNone(cheap.full_value)
    self.assertIsNone(cheap.gap_full)
    self.assertIsNone(cheap.rank_D)
    self.assertIn("memory budget", cheap.full_D_skipped)
    self.assertEqual(cheap.last_value, full.last_value)
    self.assertEqual(cheap.rank_last_hidden, full.rank_last_hidden)

  def test_residuals_of_every_block(self):
    model, params, x, y = _random_point("tanh", True)
    c = loss_scale("sum", x.shape[0])
    out = theory.residuals(model, params, x, y, normalization="sum")
    d = theory.derivative_matrix(model, params, x)
    self.assertEqual(set(out), {"D", "last_hidden", *d.column_slices})
    for name in d.column_slices:
      block = d.block(name)
      self.assertEqual(out[name].rank, np.linalg.matrix_rank(block), name)
      self.assertAlmostEqual(out[name].value,
                             _lstsq_value(block, y.reshape(-1), c),
                             delta=1e-12, msg=name)
    hidden = np.hstack([np.asarray(model.forward(params, x)[2][-1]),
                        _ones(x.shape[0])])
    self.assertAlmostEqual(out["last_hidden"].value,
                           _lstsq_value(hidden, y, c), delta=1e-12)
    # The output-layer blocks span F kron I: rank d_y rank F.
    self.assertEqual(
        np.linalg.matrix_rank(np.hstack([d.block("layer_3/w"),
                                         d.block("layer_3/b")])),
        model.d_out * out["last_hidden"].rank)


class SubspaceAndRankTest(parameterized.TestCase):

  def _shared_pattern_point(self):
    """A leaky-ReLU net, every unit active on every sample, at a critical point.

    With all units active the net is Yhat = X A + 1 a^T, A = W1 W2 W3, so
    choosing W3 = (W1 W2)^+ B* and b3 to match the least-squares fit [B*; b*]
    puts it at the linear optimum, where the residual is orthogonal to every
    derivative (all lie in col([X, 1] kron I)): a critical point by
    construction, with col(D) = col([X, 1] kron I) since W1 W2 has full row
    rank and W3 rank d_y.
    """
    rng = np.random.default_rng(3)
    m, d_in, d_out, widths = 25, 3, 2, (4, 4)
    model = MLP(d_in, widths, d_out, "leaky_relu", True)
    x = rng.uniform(0.5, 1.5, (m, d_in))
    y = np.stack([np.sin(3 * x[:, 0]), x[:, 1] * x[:, 2]], axis=1)
    y += 0.1 * rng.standard_normal(y.shape)
    w1 = rng.uniform(0.1, 1.0, (d_in, widths[0]))
    b1 = rng.uniform(0.1, 1.0, widths[0])
    w2 = rng.uniform(0.1, 1.0, widths)
    b2 = rng.uniform(0.1, 1.0, widths[1])
    coef = np.linalg.lstsq(np.hstack([x, _ones(m)]), y, rcond=None)[0]
    w3 = np.linalg.pinv(w1 @ w2) @ coef[:-1]
    b3 = coef[-1] - (b1 @ w2 + b2) @ w3
    params = ({"w": w1, "b": b1}, {"w": w2, "b": b2}, {"w": w3, "b": b3})
    return model, params, x, y

  def test_shared_activation_pattern_reaches_linear_optimum(self):
    model, params, x, y = self._shared_pattern_point()
    self.assertTrue(all(np.all(np.asarray(z) > 0)
                        for z in model.forward(params, x)[1]))
    c = loss_scale("mean", x.shape[0])
    lstsq = _lstsq_value(np.hstack([x, _ones(x.shape[0])]), y, c)
    linear = classical.linear_regression_optimum(x, y, intercept=True).value
    self.assertAlmostEqual(linear, lstsq, delta=1e-14)
    self.assertGreater(lstsq, 1e-3)

    bound = theory.subspace_bound(model, params, x, y)
    self.assertLess(bound.grad_norm, GRAD_TOL)
    self.assertLess(bound.inclusion_residual, 1e-10)
    self.assertTrue(bound.holds)
    self.assertAlmostEqual(bound.bound, lstsq, delta=1e-14)
    self.assertAlmostEqual(bound.loss, lstsq, delta=1e-12)
    record = theory.theory_record(model, params, x, y)
    self.assertTrue(record["below_linear"])
    self.assertAlmostEqual(record["linear_opt"], lstsq, delta=1e-14)

  def test_shared_activation_pattern_refined_from_a_perturbation(self):
    model, params, x, y = self._shared_pattern_point()
    start = _perturbed(params, np.random.default_rng(4), 0.05)
    refined = _refine(model, start, x, y)
    self.assertTrue(all(np.all(np.asarray(z) > 0)
                        for z in model.forward(refined, x)[1]))
    bound = theory.subspace_bound(model, refined, x, y)
    self.assertLess(bound.grad_norm, GRAD_TOL)
    lstsq = _lstsq_value(np.hstack([x, _ones(x.shape[0])]), y,
                         loss_scale("mean", x.shape[0]))
    self.assertAlmostEqual(_numpy_loss(model, refined, x, y), lstsq,
                           delta=IDENTITY_RTOL * (1 + lstsq))
    self.assertLess(bound.inclusion_residual, 1e-8)

  def test_bound_fails_when_inclusion_fails(self):
    # A width-1 linear net fits rank-1 maps only: at its critical point
    # (reduced-rank regression) L > L*_linear and col(X kron I) is not in
    # col(D), as the contrapositive of (C) requires.
    rng = np.random.default_rng(5)
    model = MLP(3, (1,), 2, "identity", True)
    x = rng.standard_normal((30, 3))
    y = x @ rng.standard_normal((3, 2)) + 0.05 * rng.standard_normal((30, 2))
    start = _perturbed(model.init(jax.random.PRNGKey(0)), rng, 0.3)
    params = _refine(model, start, x, y)
    bound = theory.subspace_bound(model, params, x, y)
    self.assertLess(bound.grad_norm, GRAD_TOL)
    self.assertFalse(bound.holds)
    self.assertGreater(bound.loss, bound.bound + 1e-3)
    self.assertGreater(bound.inclusion_residual, 1e-2)

  def test_random_feature_bound_uses_the_given_features(self):
    model, params, x, y = _random_point("tanh", True, widths=(3,), m=12)
    phi = classical.random_features(x, 5, "tanh", seed=1)
    out = theory.subspace_bound(model, params, x, y, features=phi,
                                intercept=False)
    self.assertAlmostEqual(out.bound,
                           _lstsq_value(phi, y, loss_scale("mean", 12)),
                           delta=1e-14)
    self.assertEqual(out.rank_features, 5)
    d = theory.derivative_matrix(model, params, x).matrix
    self.assertAlmostEqual(out.inclusion_residual,
                           _inclusion_residual(d, phi), delta=1e-8)

  def test_linear_model_contains_its_own_design(self):
    model, params, x, y = _random_point("tanh", True, widths=())
    out = theory.subspace_bound(model, params, x, y)
    self.assertLess(out.inclusion_residual, 1e-14)

  def test_full_rank_forces_zero_loss(self):
    model, start, x, y = _teacher_problem("tanh", (8,), True, m=6, noise=0.5)
    self.assertGreaterEqual(model.n_params, y.size)
    params = _refine(model, start, x, y)
    out = theory.full_rank_check(model, params, x, y)
    self.assertTrue(out.full_rank)
    self.assertEqual(out.rank_D, y.size)
    self.assertEqual(
        out.rank_D,
        np.linalg.matrix_rank(theory.derivative_matrix(model, params,
                                                       x).matrix))
    self.assertLess(_numpy_loss(model, params, x, y), 1e-20)
    self.assertLess(out.loss, 1e-20)
    self.assertLess(out.residual, 1e-20)

  def test_below_full_rank_at_a_nonzero_critical_point(self):
    model, start, x, y = _teacher_problem("tanh", (3,), True)
    self.assertLess(model.n_params, y.size)  # full rank is impossible
    params = _refine(model, start, x, y)
    out = theory.full_rank_check(model, params, x, y)
    self.assertLess(out.grad_norm, GRAD_TOL)
    self.assertFalse(out.full_rank)
    self.assertLessEqual(out.rank_D, model.n_params)
    self.assertGreater(out.loss, 1e-6)


class TheoryRecordTest(parameterized.TestCase):

  KEYS = {"rank_D", "rank_D_frac", "rank_last_hidden", "identity_gap_full",
          "identity_gap_last", "euler_residual_max", "linear_opt", "rf_opt",
          "inclusion_residual_linear", "below_linear", "rank_tol",
          "full_D_skipped"}

  @parameterized.parameters(("relu", True), ("leaky_relu", False),
                            ("tanh", True))
  def test_fields_match_independent_references(self, activation, bias):
    model, params, x, y = _random_point(activation, bias, m=12)
    record = theory.theory_record(model, params, x, y, normalization="sum",
                                  seed=3)
    self.assertEqual(set(record), self.KEYS)
    json.dumps(record)
    c = loss_scale("sum", x.shape[0])
    d = theory.derivative_matrix(model, params, x).matrix
    self.assertEqual(record["rank_D"], np.linalg.matrix_rank(d))
    self.assertEqual(record["rank_D_frac"], record["rank_D"] / y.size)
    self.assertIsNone(record["full_D_skipped"])

    design = np.hstack([x, _ones(x.shape[0])]) if bias else x
    self.assertAlmostEqual(record["linear_opt"], _lstsq_value(design, y, c),
                           delta=1e-12)
    # Random features of the last hidden width, same activation and seed.
    first = MLP(x.shape[1], (model.widths[-1],), 1, activation,
                bias).init(jax.random.PRNGKey(3), jnp.float64)[0]
    phi = np.asarray(ACTIVATIONS[activation](x @ np.asarray(first["w"])))
    phi = np.hstack([phi, _ones(x.shape[0])]) if bias else phi
    self.assertAlmostEqual(record["rf_opt"], _lstsq_value(phi, y, c),
                           delta=1e-12)

    loss = _numpy_loss(model, params, x, y, "sum")
    hidden = np.asarray(model.forward(params, x)[2][-1])
    hidden = np.hstack([hidden, _ones(x.shape[0])]) if bias else hidden
    self.assertAlmostEqual(record["identity_gap_last"],
                           abs(loss - _lstsq_value(hidden, y, c)), delta=1e-12)
    self.assertEqual(record["rank_last_hidden"],
                     np.linalg.matrix_rank(hidden))
    self.assertEqual(record["below_linear"],
                     loss <= record["linear_opt"] * (1 + 1e-8) + 1e-8)
    if activation in HOMOGENEOUS_ACTIVATIONS:
      self.assertLess(record["euler_residual_max"], 1e-12)
    else:
      self.assertIsNone(record["euler_residual_max"])
    self.assertAlmostEqual(record["inclusion_residual_linear"],
                           _inclusion_residual(d, design), delta=1e-8)

  def test_over_budget_keeps_the_cheap_fields(self):
    model, params, x, y = _random_point("relu", True, m=12)
    full = theory.theory_record(model, params, x, y)
    cheap = theory.theory_record(model, params, x, y, memory_budget_bytes=8)
    self.assertEqual(set(cheap), self.KEYS)
    json.dumps(cheap)
    for key in ("rank_D", "rank_D_frac", "identity_gap_full",
                "inclusion_residual_linear", "euler_residual_max"):
      self.assertIsNone(cheap[key], key)
      self.assertIsNotNone(full[key], key)
    self.assertIn("memory budget", cheap["full_D_skipped"])
    for key in ("rank_last_hidden", "identity_gap_last", "linear_opt",
                "rf_opt", "below_linear", "rank_tol"):
      self.assertEqual(cheap[key], full[key], key)

  def test_linear_model_has_no_random_features(self):
    model, params, x, y = _random_point("tanh", False, widths=(), m=12)
    record = theory.theory_record(model, params, x, y)
    self.assertIsNone(record["rf_opt"])
    self.assertEqual(record["rank_last_hidden"], np.linalg.matrix_rank(x))


if __name__ == "__main__":
  absltest.main()
