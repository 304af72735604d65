"""Tests of lminima.theory.identities: the identities of docs/theory.md against
references.

Every value is compared with something computed independently of lminima:
numpy forward passes, D(theta) by central finite differences of the outputs,
numpy.linalg.lstsq / pinv / matrix_rank, and exact values of matrices built
with a known SVD. Critical points are reached with ``lminima.refine``; every
test that needs one first asserts ||grad L|| <= 1e-10 (``Problem.grad``,
checked against jax.grad in test_derivative.py), so a refinement that stops
early fails loudly instead of weakening the identity checks. D(theta) itself
is tested in test_derivative.py; ranks are compared with numpy on it where
exact zero singular values (parameter symmetries) would be finite-difference
noise in a numerical D.
"""

import functools
import json

from absl.testing import absltest
from absl.testing import parameterized
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
import numpy as np
import scipy.linalg

import lminima
from lminima.core.models import HOMOGENEOUS_ACTIVATIONS, MLP
from lminima.core.tolerances import Tolerances
from lminima.theory import classical
from lminima.theory import euler
from lminima.theory import identities
from lminima.theory import quantities

GRAD_TOL = 1e-10
IDENTITY_RTOL = 1e-8  # |L - rhs| <= IDENTITY_RTOL * (1 + L) at critical points.
EPS = np.finfo(np.float64).eps

NUMPY_ACTIVATIONS = {
    "relu": lambda z: np.maximum(z, 0),
    "leaky_relu": lambda z: np.where(z >= 0, z, 0.01 * z),
    "tanh": np.tanh,
    "softplus": lambda z: np.logaddexp(0, z),
    "identity": lambda z: z,
}


# ---------------------------------------------------------------------------
# Independent references.


def _c(normalization, m):
  """The loss constant, written out (not lminima.core.losses.loss_scale)."""
  return {"sum": 0.5, "mean": 0.5 / m}[normalization]


def _numpy_forward(variables, x, activation, bias):
  """(yhat, [h^(0) = X, ..., h^(H)]) by a numpy forward pass of an MLP."""
  params = variables["params"]
  sigma = NUMPY_ACTIVATIONS[activation]
  hidden = [np.asarray(x)]
  n_layers = len(params)
  for l in range(1, n_layers + 1):
    z = hidden[-1] @ np.asarray(params[f"layer_{l}"]["kernel"])
    if bias:
      z = z + np.asarray(params[f"layer_{l}"]["bias"])
    if l == n_layers:
      return z, hidden
    hidden.append(sigma(z))


def _numpy_loss(problem, activation, bias):
  yhat, _ = _numpy_forward(problem.params, problem.x, activation, bias)
  c = _c(problem.normalization, problem.m)
  return c * np.sum((yhat - np.asarray(problem.y)) ** 2)


# Compiled once per model and shapes (eager flax calls compile every op).


@functools.partial(jax.jit, static_argnums=0)
def _apply(fn, params, x):
  return fn(params, x)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _module_apply(module, variables, x, method=None):
  return module.apply(variables, x, method=method)


@functools.partial(jax.jit, static_argnums=0)
def _outputs_at(fn, flats, like, x):
  """vec(fn(theta_k, x)) for every row theta_k of ``flats``."""
  unravel = ravel_pytree(like)[1]
  return jax.vmap(lambda f: fn(unravel(f), x).reshape(-1))(flats)


def _fd_derivative(problem, step=1e-6):
  """D(theta) by central differences of vec(apply_fn), ravel_pytree order."""
  flat = np.asarray(ravel_pytree(problem.params)[0])
  shifts = step * np.eye(flat.size)
  out = np.asarray(_outputs_at(problem.apply_fn,
                               np.concatenate([flat + shifts, flat - shifts]),
                               problem.params, problem.x))
  return (out[:flat.size] - out[flat.size:]).T / (2 * step)


def _lstsq_value(features, y, c):
  """c ||Y - F F^+ Y||^2 by numpy.linalg.lstsq."""
  coef = np.linalg.lstsq(features, y, rcond=None)[0]
  return c * np.sum((y - features @ coef) ** 2)


def _pinv_value(matrix, vec_y, c):
  """c ||(I - M M^+) vec Y||^2 by numpy.linalg.pinv."""
  residual = vec_y - matrix @ (np.linalg.pinv(matrix) @ vec_y)
  return c * float(np.sum(residual ** 2))


def _ones(m):
  return np.ones((m, 1))


def _inclusion_residual(d, features):
  """||(I - P[D]) M||_F / ||M||_F, M = F kron I_{d_y}, by lstsq."""
  design = np.kron(features, np.eye(d.shape[0] // features.shape[0]))
  fitted = d @ np.linalg.lstsq(d, design, rcond=None)[0]
  return np.linalg.norm(design - fitted) / np.linalg.norm(design)


# ---------------------------------------------------------------------------
# Problems.


def _perturbed(variables, rng, scale):
  """float64 variables plus N(0, scale^2) noise (makes zero biases nonzero)."""
  return jax.tree_util.tree_map(
      lambda a: np.asarray(a, np.float64) + scale * rng.standard_normal(
          np.shape(a)), variables)


def _random_variables(model, rng, noise=0.0):
  """Kernels N(0, gain^2 / fan_in) + N(0, noise^2) and N(0, 0.3^2) biases.

  The gain is sqrt(2) for relu and leaky_relu hidden layers, else 1 (as
  ``init_params``, but drawn by numpy: no jax.random compilation per shape).
  """
  sizes = (model.d_in, *model.widths, model.d_out)
  gain = np.sqrt(2.0) if model.activation in ("relu", "leaky_relu") else 1.0
  params = {}
  for l, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:]), start=1):
    scale = (gain if l < len(sizes) - 1 else 1.0) / np.sqrt(fan_in)
    layer = {"kernel": scale * rng.standard_normal((fan_in, fan_out))
                       + noise * rng.standard_normal((fan_in, fan_out))}
    if model.bias:
      layer["bias"] = 0.3 * rng.standard_normal(fan_out)
    params[f"layer_{l}"] = layer
  return {"params": params}


def _random_problem(activation, bias, widths=(4, 3), d_in=3, d_out=2, m=7,
                    seed=0, normalization="mean", **kwargs):
  model = MLP(d_in, widths, d_out, activation, bias)
  rng = np.random.default_rng(seed)
  variables = _random_variables(model, rng)
  x = rng.standard_normal((m, d_in))
  y = rng.standard_normal((m, d_out))
  return lminima.Problem.for_module(model, variables, x, y,
                                    normalization=normalization, **kwargs)


def _teacher_problem(activation, widths, bias, *, m=40, d_in=3, d_out=2,
                     seed=0, noise=0.01, margin=0.1, **kwargs):
  """Noisy targets of a random teacher; the start is near the teacher.

  Inputs are kept only where every teacher pre-activation is at least
  ``margin`` away from 0, and the noise is small, so that the nearby minimum
  tends to be an interior, differentiable critical point (no ReLU kinks, no
  units at infinity) with a nonzero loss. Tests check both.
  """
  model = MLP(d_in, widths, d_out, activation, bias)
  rng = np.random.default_rng(seed)
  teacher = _random_variables(model, rng, noise=0.3)
  x = rng.standard_normal((8 * m, d_in))
  pre = _module_apply(model, teacher, x, "forward")[1]
  far_from_kink = np.all(np.concatenate(
      [np.abs(np.asarray(z)) > margin for z in pre], axis=1), axis=1)
  x = x[far_from_kink][:m]
  assert x.shape[0] == m, "too few inputs away from the kinks"
  y = np.asarray(_module_apply(model, teacher, x)) + noise * rng.standard_normal(
      (m, d_out))
  return lminima.Problem.for_module(model, _perturbed(teacher, rng, 0.01), x,
                                    y, **kwargs)


class _TestCase(parameterized.TestCase):

  def refined(self, problem):
    """The problem at the critical point ``lminima.refine`` reaches."""
    # Tighter than the default relative test, so that ||g|| <= GRAD_TOL
    # holds at every scale of L these tests use.
    result = lminima.refine(problem, tol=Tolerances(grad_rtol=1e-12))
    refined = problem.at(result.params)
    # Problem.grad is checked against jax.grad in test_derivative.py.
    self.assertLessEqual(refined.grad_norm, GRAD_TOL,
                         msg=f"refinement stopped: {result.stop_reason}")
    return refined


# A model written as plain functions (no flax, no MLP): tanh hidden layer,
# linear output layer, and the design of that output layer.


def _two_layer(params, x):
  return jnp.tanh(x @ params["w1"] + params["b1"]) @ params["w2"] + (
      params["b2"])


def _two_layer_features(params, x):
  hidden = jnp.tanh(x @ params["w1"] + params["b1"])
  return jnp.concatenate([hidden, jnp.ones((x.shape[0], 1))], axis=1)


def _two_layer_problem():
  """Under-parameterized (17 parameters, 40 outputs), noisy teacher data."""
  rng = np.random.default_rng(4)
  teacher = {"w1": rng.standard_normal((2, 3)),
             "b1": 0.5 * rng.standard_normal(3),
             "w2": rng.standard_normal((3, 2)),
             "b2": 0.3 * rng.standard_normal(2)}
  x = rng.standard_normal((20, 2))
  y = np.asarray(_two_layer(teacher, x)) + 0.05 * rng.standard_normal((20, 2))
  return lminima.Problem(_two_layer, _perturbed(teacher, rng, 0.01), x, y,
                         features_fn=_two_layer_features)


class _NotAnMLP(nn.Module):
  """A flax model with a linear output layer that is not an lminima MLP."""

  @nn.compact
  def __call__(self, x):
    return nn.Dense(1, param_dtype=jnp.float64)(jnp.sin(x))


# ---------------------------------------------------------------------------
# (B) Euler identity.


def _scaled(variables, names, factor):
  """A copy of ``variables`` with the leaves ``names`` multiplied by factor."""
  params = {layer: dict(leaves)
            for layer, leaves in variables["params"].items()}
  for name in names:
    layer, leaf = name.split("/")
    params[layer][leaf] = factor * np.asarray(params[layer][leaf])
  return {"params": params}


def _scaling_derivative(problem, names, step=1e-4):
  """d vec Yhat / da of scaling the group ``names`` by a, at a = 1.

  Central differences; by the chain rule this is E^(l) g_l, and Euler's
  theorem makes it vec Yhat when the network is homogeneous in the group.
  """
  out = [np.asarray(_apply(problem.apply_fn,
                          _scaled(problem.params, names, a),
                          problem.x)).reshape(-1)
         for a in (1 + step, 1 - step)]
  return (out[0] - out[1]) / (2 * step)


class EulerIdentityTest(_TestCase):

  @parameterized.parameters(("relu", True), ("leaky_relu", False),
                            ("identity", True))
  def test_holds_for_every_layer(self, activation, bias):
    problem = _random_problem(activation, bias)
    out = euler.euler_identity(problem)
    vec_yhat = _numpy_forward(problem.params, problem.x, activation,
                              bias)[0].reshape(-1)
    self.assertTrue(out.homogeneous)
    self.assertAlmostEqual(out.yhat_norm, np.linalg.norm(vec_yhat),
                           delta=1e-13)
    self.assertLen(out.layers, 3)
    for layer in out.layers:
      with self.subTest(layer=layer.layer):
        # The homogeneity itself, by finite differences of the forward pass.
        np.testing.assert_allclose(
            _scaling_derivative(problem, layer.blocks), vec_yhat, rtol=0,
            atol=1e-9 * np.linalg.norm(vec_yhat))
        self.assertTrue(layer.exact_by_homogeneity)
        self.assertLess(layer.euler_residual, 1e-13 * (1 + out.yhat_norm))
    self.assertLess(out.euler_residual_max, 1e-13 * (1 + out.yhat_norm))

  @parameterized.parameters(True, False)
  def test_blocks_are_the_scaled_group(self, bias):
    problem = _random_problem("relu", bias)
    want = (("layer_1/kernel", "layer_1/bias", "layer_2/bias", "layer_3/bias"),
            ("layer_2/kernel", "layer_2/bias", "layer_3/bias"),
            ("layer_3/kernel", "layer_3/bias"))
    if not bias:
      want = (("layer_1/kernel",), ("layer_2/kernel",), ("layer_3/kernel",))
    self.assertEqual(tuple(layer.blocks for layer in
                           euler.euler_identity(problem).layers), want)
    for l, names in enumerate(want, start=1):
      self.assertEqual(euler.euler_blocks(problem.module, l), names)

  @parameterized.parameters(*HOMOGENEOUS_ACTIVATIONS)
  def test_scaling_the_group_scales_the_output(self, activation):
    # The homogeneity behind E^(l), checked on the forward pass alone.
    problem = _random_problem(activation, True)
    model = problem.module
    yhat = _numpy_forward(problem.params, problem.x, activation, True)[0]
    for l in range(1, model.depth + 2):
      scaled = _scaled(problem.params, euler.euler_blocks(model, l), 1.7)
      np.testing.assert_allclose(
          _numpy_forward(scaled, problem.x, activation, True)[0], 1.7 * yhat,
          rtol=1e-13, atol=1e-13)

  @parameterized.parameters("tanh", "softplus")
  def test_residual_is_the_finite_difference_departure(self, activation):
    # E^(l) g_l is the derivative of scaling the group; for a non-homogeneous
    # activation it departs from vec Yhat below the output layer, and the
    # reported residual must be that departure.
    problem = _random_problem(activation, True)
    out = euler.euler_identity(problem)
    vec_yhat = _numpy_forward(problem.params, problem.x, activation,
                              True)[0].reshape(-1)
    self.assertFalse(out.homogeneous)
    *hidden_layers, output_layer = out.layers
    departures = []
    for layer in out.layers:
      departures.append(np.linalg.norm(
          _scaling_derivative(problem, layer.blocks) - vec_yhat))
      self.assertAlmostEqual(layer.euler_residual, departures[-1],
                             delta=1e-7 * np.linalg.norm(vec_yhat),
                             msg=f"layer {layer.layer}")
    for layer, departure in zip(hidden_layers, departures):
      self.assertFalse(layer.exact_by_homogeneity)
      self.assertGreater(departure, 1e-2 * np.linalg.norm(vec_yhat))
    self.assertTrue(output_layer.exact_by_homogeneity)
    self.assertLess(output_layer.euler_residual, 1e-13 * out.yhat_norm)
    self.assertAlmostEqual(out.euler_residual_max, max(departures),
                           delta=1e-7 * np.linalg.norm(vec_yhat))

  def test_euler_terms_are_the_scaling_derivative(self):
    problem = _random_problem("tanh", True)
    vec_yhat = problem.yhat().reshape(-1)
    for l, names, block, residual in euler.euler_terms(problem):
      flat = np.asarray(ravel_pytree(problem.params)[0])
      slices = problem.column_slices()
      group = np.concatenate([flat[slices[n]] for n in names])
      np.testing.assert_allclose(block @ group,
                                 _scaling_derivative(problem, names),
                                 rtol=0, atol=1e-7, err_msg=f"layer {l}")
      self.assertAlmostEqual(residual,
                             np.linalg.norm(block @ group - vec_yhat),
                             delta=1e-12)

  def test_own_bias_alone_is_not_enough_below_the_output(self):
    problem = _random_problem("relu", True)
    vec_yhat = _numpy_forward(problem.params, problem.x, "relu",
                              True)[0].reshape(-1)
    for l in range(1, problem.module.depth + 2):
      own = _scaling_derivative(problem, (f"layer_{l}/kernel",
                                          f"layer_{l}/bias"))
      residual = np.linalg.norm(own - vec_yhat)
      if l == problem.module.depth + 1:
        self.assertLess(residual, 1e-9 * np.linalg.norm(vec_yhat))
      else:
        self.assertGreater(residual, 1e-3 * np.linalg.norm(vec_yhat))

  # Seeds: with two hidden layers refinement often ends on a kink or stalls;
  # these end at interior critical points.
  @parameterized.parameters(((3,), False, 0), ((4, 3), False, 0),
                            ((4, 3), True, 2))
  def test_projection_form_at_refined_leaky_relu_points(self, widths, bias,
                                                        seed):
    problem = self.refined(_teacher_problem("leaky_relu", widths, bias,
                                            seed=seed))
    out = euler.euler_identity(problem)
    self.assertLess(out.grad_norm, GRAD_TOL)
    self.assertGreater(problem.min_abs_kink_input(), 1e-6)  # differentiable
    pre = _module_apply(problem.module, problem.params, problem.x,
                        "forward")[1]
    self.assertAlmostEqual(problem.min_abs_kink_input(),
                           min(float(np.min(np.abs(z))) for z in pre))
    loss = _numpy_loss(problem, "leaky_relu", bias)
    self.assertAlmostEqual(out.loss, loss, delta=1e-14)
    self.assertGreater(loss, 1e-6)
    d = _fd_derivative(problem)
    vec_y = np.asarray(problem.y).reshape(-1)
    slices = problem.column_slices()
    for layer in out.layers:
      with self.subTest(layer=layer.layer):
        self.assertLess(layer.gap, IDENTITY_RTOL * (1 + loss))
        self.assertLess(layer.euler_residual, 1e-12 * (1 + out.yhat_norm))
        block = np.hstack([d[:, slices[n]] for n in layer.blocks])
        self.assertAlmostEqual(layer.projection_value,
                               _pinv_value(block, vec_y, problem.c),
                               delta=1e-6 * loss)
        self.assertEqual(layer.rank, np.linalg.matrix_rank(block))

  def test_raises_for_models_outside_the_mlp_family(self):
    custom = _two_layer_problem()
    rng = np.random.default_rng(0)
    module = _NotAnMLP()
    x = rng.standard_normal((5, 2))
    flax_problem = lminima.Problem.for_module(
        module, module.init(jax.random.PRNGKey(0), x), x,
        rng.standard_normal((5, 1)))
    for problem in (custom, flax_problem):
      with self.assertRaisesRegex(ValueError, "MLP family only") as caught:
        euler.euler_identity(problem)
      self.assertNotIn("\n", str(caught.exception))
      with self.assertRaisesRegex(ValueError, "MLP family only"):
        list(euler.euler_terms(problem))

  def test_bad_layer(self):
    problem = _random_problem("relu", True)
    for layer in (0, 4):
      with self.assertRaisesRegex(ValueError, "layer must be in 1..3"):
        euler.euler_blocks(problem.module, layer)


# ---------------------------------------------------------------------------
# (A) Critical-point identity and (D) full rank.


class CriticalPointIdentityTest(_TestCase):

  @parameterized.parameters(("tanh", (3,), True, 0),
                            ("softplus", (3,), True, 2),
                            ("tanh", (3, 2), False, 2))
  def test_holds_at_refined_points(self, activation, widths, bias, seed):
    start = _teacher_problem(activation, widths, bias, seed=seed)
    c = _c("mean", start.m)
    y = np.asarray(start.y)

    def design(problem):
      hidden = _numpy_forward(problem.params, problem.x, activation,
                              bias)[1][-1]
      return np.hstack([hidden, _ones(problem.m)]) if bias else hidden

    before = identities.critical_point_identity(start)
    # Away from criticality L exceeds the best output layer for the same
    # hidden layer, so the identity below is not true by construction.
    self.assertGreater(before.gap_last, 1e-6)
    self.assertAlmostEqual(before.last_value, _lstsq_value(design(start), y, c),
                           delta=1e-14)

    problem = self.refined(start)
    out = identities.critical_point_identity(problem)
    loss = _numpy_loss(problem, activation, bias)
    self.assertLess(out.grad_norm, GRAD_TOL)
    self.assertGreater(loss, 1e-6)
    self.assertAlmostEqual(out.loss, loss, delta=1e-14)
    self.assertLess(out.gap_full, IDENTITY_RTOL * (1 + loss))
    self.assertLess(out.gap_last, IDENTITY_RTOL * (1 + loss))
    features = design(problem)
    self.assertAlmostEqual(out.last_value, _lstsq_value(features, y, c),
                           delta=1e-14)
    self.assertEqual(out.rank_last_hidden, np.linalg.matrix_rank(features))
    d = _fd_derivative(problem)
    self.assertEqual(out.rank_D, np.linalg.matrix_rank(d))
    self.assertEqual(out.rank_D, problem.n_params)
    self.assertIsNone(out.full_D_skipped)

  @parameterized.parameters("mean", "sum")
  def test_under_parameterized_critical_point_matches_numpy(self,
                                                            normalization):
    # n_params < m d_y: full rank is impossible and L > 0. Both sides of (A)
    # and the (D) residual against c ||(I - D D^+) vec Y||^2 with D from
    # finite differences and c written out.
    problem = self.refined(_teacher_problem("tanh", (3,), True, noise=0.1,
                                            normalization=normalization))
    self.assertLess(problem.n_params, problem.m * problem.d_y)
    c = _c(normalization, problem.m)
    yhat = _numpy_forward(problem.params, problem.x, "tanh", True)[0]
    y = np.asarray(problem.y)
    loss = c * np.sum((yhat - y) ** 2)
    self.assertGreater(loss, 1e-4 * c * problem.m)
    d = _fd_derivative(problem)
    np.testing.assert_allclose(problem.derivative().matrix, d, atol=1e-8)
    reference = _pinv_value(d, y.reshape(-1), c)
    self.assertAlmostEqual(reference, loss, delta=1e-6 * loss)
    rank = np.linalg.matrix_rank(d)
    self.assertEqual(rank, problem.n_params)

    check = identities.full_rank_check(problem)
    self.assertAlmostEqual(check.residual, reference, delta=1e-6 * loss)
    self.assertAlmostEqual(check.loss, loss, delta=1e-12 * loss)
    self.assertEqual(check.rank_D, rank)
    self.assertEqual(check.n_rows, problem.m * problem.d_y)
    self.assertEqual(check.n_params, problem.n_params)
    self.assertFalse(check.full_rank)
    self.assertLessEqual(check.grad_norm, GRAD_TOL)
    self.assertEqual(check.rank_tol, 80 * EPS)

    identity = identities.critical_point_identity(problem)
    self.assertAlmostEqual(identity.full_value, reference, delta=1e-6 * loss)
    self.assertAlmostEqual(identity.loss, loss, delta=1e-12 * loss)
    self.assertLess(identity.gap_full, IDENTITY_RTOL * loss)
    self.assertLess(identity.gap_last, IDENTITY_RTOL * loss)
    self.assertEqual(identity.rank_D, rank)
    hidden = np.hstack([_numpy_forward(problem.params, problem.x, "tanh",
                                       True)[1][-1], _ones(problem.m)])
    self.assertAlmostEqual(identity.last_value, _lstsq_value(hidden, y, c),
                           delta=1e-10 * loss)

  def test_custom_callable_model(self):
    # Identity (A) for a model given as plain functions, not an MLP.
    problem = self.refined(_two_layer_problem())
    self.assertLess(problem.n_params, problem.m * problem.d_y)
    params = {k: np.asarray(v) for k, v in problem.params.items()}
    x, y = np.asarray(problem.x), np.asarray(problem.y)
    hidden = np.tanh(x @ params["w1"] + params["b1"])
    yhat = hidden @ params["w2"] + params["b2"]
    c = _c("mean", problem.m)
    loss = c * np.sum((yhat - y) ** 2)
    self.assertGreater(loss, 1e-4)
    out = identities.critical_point_identity(problem)
    self.assertAlmostEqual(out.loss, loss, delta=1e-12 * loss)
    self.assertLess(out.gap_last, IDENTITY_RTOL * loss)
    self.assertLess(out.gap_full, IDENTITY_RTOL * loss)
    features = np.hstack([hidden, _ones(problem.m)])
    self.assertAlmostEqual(out.last_value, _lstsq_value(features, y, c),
                           delta=1e-10 * loss)
    self.assertEqual(out.rank_last_hidden, 4)
    d = _fd_derivative(problem)
    self.assertAlmostEqual(out.full_value, _pinv_value(d, y.reshape(-1), c),
                           delta=1e-6 * loss)
    self.assertEqual(out.rank_D, np.linalg.matrix_rank(d))
    self.assertEqual(out.rank_D, problem.n_params)
    record = quantities.theory_record(problem)
    self.assertIsNone(record["euler_residual_max"])
    self.assertIsNone(record["rf_opt"])
    self.assertEqual(record["rank_D"], problem.n_params)
    self.assertAlmostEqual(record["linear_opt"],
                           _lstsq_value(np.hstack([x, _ones(problem.m)]), y,
                                        c), delta=1e-14)

  def test_skips_full_form_over_budget(self):
    full = identities.critical_point_identity(_random_problem("tanh", True))
    cheap = identities.critical_point_identity(
        _random_problem("tanh", True, memory_budget_bytes=8))
    self.assertIsNone(cheap.full_value)
    self.assertIsNone(cheap.gap_full)
    self.assertIsNone(cheap.rank_D)
    self.assertIn("memory budget", cheap.full_D_skipped)
    self.assertEqual(cheap.last_value, full.last_value)
    self.assertEqual(cheap.rank_last_hidden, full.rank_last_hidden)
    self.assertIsNotNone(full.full_value)
    for needs_d in (euler.euler_identity, identities.subspace_bound,
                    identities.full_rank_check, identities.residuals):
      with self.subTest(needs_d.__name__), self.assertRaisesRegex(
          ValueError, "memory budget"):
        needs_d(_random_problem("tanh", True, memory_budget_bytes=8))

  def test_residuals_of_every_block(self):
    problem = _random_problem("tanh", True, normalization="sum")
    y = np.asarray(problem.y)
    c = _c("sum", problem.m)
    out = identities.residuals(problem)
    d = _fd_derivative(problem)
    slices = problem.column_slices()
    self.assertEqual(set(out), {"D", "last_layer", *slices})
    for name, columns in slices.items():
      block = d[:, columns]
      self.assertEqual(out[name].rank, np.linalg.matrix_rank(block), name)
      self.assertEqual(out[name].n_cols, columns.stop - columns.start)
      self.assertAlmostEqual(out[name].value,
                             _lstsq_value(block, y.reshape(-1), c),
                             delta=1e-6, msg=name)
    self.assertEqual(out["D"].rank, np.linalg.matrix_rank(d))
    self.assertAlmostEqual(out["D"].value, _pinv_value(d, y.reshape(-1), c),
                           delta=1e-6)
    hidden = np.hstack([_numpy_forward(problem.params, problem.x, "tanh",
                                       True)[1][-1], _ones(problem.m)])
    self.assertAlmostEqual(out["last_layer"].value,
                           _lstsq_value(hidden, y, c), delta=1e-12)
    self.assertEqual(out["last_layer"].rank, 4)
    # The output-layer blocks span F kron I: rank d_y rank F.
    self.assertEqual(
        np.linalg.matrix_rank(np.hstack([d[:, slices["layer_3/kernel"]],
                                         d[:, slices["layer_3/bias"]]])),
        problem.d_y * out["last_layer"].rank)

  def test_full_rank_forces_zero_loss(self):
    start = _teacher_problem("tanh", (8,), True, m=6, noise=0.5)
    self.assertGreater(start.n_params, start.m * start.d_y)
    self.assertGreater(start.loss, 1e-3)
    problem = self.refined(start)
    out = identities.full_rank_check(problem)
    self.assertTrue(out.full_rank)
    self.assertEqual(out.n_rows, 12)
    self.assertEqual(out.rank_D, 12)
    self.assertEqual(np.linalg.matrix_rank(_fd_derivative(problem)), 12)
    self.assertLess(_numpy_loss(problem, "tanh", True), 1e-20)
    self.assertLess(out.loss, 1e-20)
    self.assertLess(out.residual, 1e-20)

  def test_bad_inputs(self):
    problem = _random_problem("tanh", True)
    with self.assertRaisesRegex(ValueError, "rank_tol must be positive"):
      identities.full_rank_check(problem, rank_tol=0.0)
    with self.assertRaisesRegex(ValueError, "features must have shape"):
      identities.subspace_bound(problem, np.asarray(problem.x)[:-1])
    no_features = lminima.Problem(problem.apply_fn, problem.params,
                                  problem.x, problem.y)
    with self.assertRaisesRegex(ValueError, "no features_fn"):
      identities.critical_point_identity(no_features)


# ---------------------------------------------------------------------------
# Rank tolerances: a D with one singular value between the default cut-off
# (max(rows, cols) * eps ~ 4e-15) and 1e-8, where the answer depends on it.


def _designed_matrix(singular_values, m=16):
  """(M, U): M = U[:, :p] diag(s), U = H / sqrt(m) for a Hadamard matrix H.

  Every entry of M is exact in float64 (+-s_j / 4 for m = 16) and its columns
  are exactly orthogonal, so the singular values and vectors of the stored M
  are exactly the designed ones. (Mixing the columns by a generic V would
  round the entries by ~eps, which turns the left singular vector of a
  1e-11 singular value by ~1e-5.)
  """
  u = scipy.linalg.hadamard(m).astype(np.float64) / np.sqrt(m)
  return u[:, :len(singular_values)] * np.asarray(singular_values), u


def _linear(params, x):
  return x @ params["w"]


def _linear_features(params, x):
  del params
  return x


class RankToleranceTest(_TestCase):
  """Ranks and values against numpy at the default and a larger tolerance.

  x = U diag(1, 0.5, 1e-11) (16 x 3) and Y = U a with known a, so
  c ||P_N[x] Y||^2 = c sum_{j >= r} a_j^2 for rank r: 3 at numpy's default
  tolerance 16 eps, 2 at rank_tol = 1e-8 (larger by c a_2^2). A tolerance
  a million times the default would already drop the small direction.
  """

  SINGULAR_VALUES = (1.0, 0.5, 1e-11)
  LARGE_TOL = 1e-8

  def setUp(self):
    super().setUp()
    self.x, u = _designed_matrix(self.SINGULAR_VALUES)
    self.a = np.linspace(-1.0, 1.2, 16)
    self.a[2] = 2.0
    self.y = (u @ self.a)[:, None]
    self.c = _c("mean", 16)
    self.value = {3: self.c * np.sum(self.a[3:] ** 2),
                  2: self.c * np.sum(self.a[2:] ** 2)}
    # The construction is what numpy sees.
    np.testing.assert_allclose(np.linalg.svd(self.x, compute_uv=False),
                               self.SINGULAR_VALUES, rtol=1e-15)
    self.assertEqual(np.linalg.matrix_rank(self.x), 3)
    self.assertEqual(np.linalg.matrix_rank(self.x, rtol=1e6 * 16 * EPS), 2)
    self.assertEqual(np.linalg.matrix_rank(self.x, rtol=self.LARGE_TOL), 2)
    for rcond, rank in ((None, 3), (self.LARGE_TOL, 2)):
      coef = np.linalg.lstsq(self.x, self.y, rcond=rcond)[0]
      self.assertAlmostEqual(self.c * np.sum((self.y - self.x @ coef) ** 2),
                             self.value[rank], delta=1e-12)

  def mlp_problem(self):
    model = MLP(3, (), 1, "relu", bias=False)
    w = np.random.default_rng(8).standard_normal((3, 1))
    return lminima.Problem.for_module(
        model, {"params": {"layer_1": {"kernel": w}}}, self.x, self.y)

  def assert_ranks(self, problem, rank_tol, rank):
    """Every rank and projection of theory at one tolerance."""
    kwargs = {} if rank_tol is None else {"rank_tol": rank_tol}
    value = self.value[rank]
    np.testing.assert_array_equal(problem.derivative().matrix, self.x)
    identity = identities.critical_point_identity(problem, **kwargs)
    self.assertEqual(identity.rank_D, rank)
    self.assertAlmostEqual(identity.full_value, value, delta=1e-13)
    self.assertEqual(identity.rank_last_hidden, rank)
    self.assertAlmostEqual(identity.last_value, value, delta=1e-13)
    check = identities.full_rank_check(problem, **kwargs)
    self.assertEqual(check.rank_D, rank)
    self.assertAlmostEqual(check.residual, value, delta=1e-13)
    out = identities.residuals(problem, **kwargs)
    for key in ("D", "layer_1/kernel", "last_layer"):
      self.assertEqual(out[key].rank, rank, key)
      self.assertAlmostEqual(out[key].value, value, delta=1e-13, msg=key)
    bound = identities.subspace_bound(problem, **kwargs)
    self.assertEqual(bound.rank_features, rank)
    self.assertAlmostEqual(bound.bound, value, delta=1e-13)
    (layer,) = euler.euler_identity(problem, **kwargs).layers
    self.assertEqual(layer.rank, rank)
    self.assertAlmostEqual(layer.projection_value, value, delta=1e-13)
    record = quantities.theory_record(problem, **kwargs)
    self.assertEqual(record["rank_D"], rank)
    self.assertEqual(record["rank_last_hidden"], rank)
    # The second, looser tolerance (1e-8, or rank_tol if larger) always sees
    # rank 2: the direction with singular value 1e-11 is below it.
    self.assertEqual(record["rank_tol_loose"],
                     max(identity.rank_tol, quantities.LOOSE_RANK_TOL))
    self.assertEqual(record["rank_D_loose"], 2)
    self.assertEqual(identities.rank_of_d(problem, 1e-12), 3)
    # The linear optimum (x has no intercept here) at the same tolerance.
    self.assertAlmostEqual(record["linear_opt"], value, delta=1e-13)
    return identity.rank_tol

  def test_default_tolerance_is_numpys(self):
    tol = self.assert_ranks(self.mlp_problem(), None, 3)
    self.assertEqual(tol, 16 * EPS)  # max(m d_y, n_params) * eps
    self.assertEqual(identities.resolve_rank_tol(self.mlp_problem(), None),
                     16 * EPS)

  def test_larger_tolerance_drops_the_small_direction(self):
    tol = self.assert_ranks(self.mlp_problem(), self.LARGE_TOL, 2)
    self.assertEqual(tol, self.LARGE_TOL)
    self.assertAlmostEqual(self.value[2] - self.value[3], self.c * 4.0,
                           delta=1e-14)

  @parameterized.parameters((None, 6), (1e-8, 4))
  def test_custom_callable_with_two_outputs(self, rank_tol, rank):
    # D = x kron I_2 (32 x 6): each singular value twice.
    w = np.random.default_rng(9).standard_normal((3, 2))
    y = np.hstack([self.y, 2 * self.y[::-1]])
    problem = lminima.Problem(_linear, {"w": w}, self.x, y,
                              features_fn=_linear_features)
    d = np.kron(self.x, np.eye(2))
    np.testing.assert_array_equal(problem.derivative().matrix, d)
    self.assertEqual(np.linalg.matrix_rank(d, rtol=rank_tol), rank)
    # Exact value: Y's component outside the kept columns of U, per output.
    u = scipy.linalg.hadamard(16) / 4.0
    coords = u.T @ y  # (16, 2): coordinates of each output column
    value = self.c * np.sum(coords[rank // 2:] ** 2)
    out = identities.critical_point_identity(problem, rank_tol=rank_tol)
    self.assertEqual(out.rank_D, rank)
    self.assertEqual(out.rank_last_hidden, rank // 2)
    self.assertAlmostEqual(out.full_value, value, delta=1e-13)
    self.assertAlmostEqual(out.last_value, value, delta=1e-13)
    self.assertEqual(out.rank_tol, 32 * EPS if rank_tol is None else rank_tol)


# ---------------------------------------------------------------------------
# (C) Subspace bound.


class SubspaceBoundTest(_TestCase):

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
    variables = {"params": {"layer_1": {"kernel": w1, "bias": b1},
                            "layer_2": {"kernel": w2, "bias": b2},
                            "layer_3": {"kernel": w3, "bias": b3}}}
    return lminima.Problem.for_module(model, variables, x, y)

  def test_shared_activation_pattern_reaches_linear_optimum(self):
    problem = self._shared_pattern_point()
    x, y = np.asarray(problem.x), np.asarray(problem.y)
    self.assertGreater(problem.min_abs_kink_input(), 0.1)
    self.assertTrue(all(np.all(h > 0) for h in _numpy_forward(
        problem.params, x, "leaky_relu", True)[1][1:]))
    c = _c("mean", problem.m)
    lstsq = _lstsq_value(np.hstack([x, _ones(problem.m)]), y, c)
    linear = classical.linear_regression_optimum(x, y, intercept=True).value
    self.assertAlmostEqual(linear, lstsq, delta=1e-14)
    self.assertGreater(lstsq, 1e-3)

    bound = identities.subspace_bound(problem)
    self.assertLess(bound.grad_norm, GRAD_TOL)
    self.assertLess(problem.grad_norm, GRAD_TOL)
    self.assertLess(bound.inclusion_residual, 1e-10)
    self.assertAlmostEqual(bound.inclusion_residual, _inclusion_residual(
        problem.derivative().matrix, np.hstack([x, _ones(problem.m)])),
                           delta=1e-8)
    self.assertTrue(bound.holds)
    self.assertAlmostEqual(bound.bound, lstsq, delta=1e-14)
    self.assertAlmostEqual(bound.loss, lstsq, delta=1e-12)
    self.assertEqual(bound.rank_features, 4)
    record = quantities.theory_record(problem)
    self.assertTrue(record["below_linear"])
    self.assertAlmostEqual(record["linear_opt"], lstsq, delta=1e-14)

  def test_shared_activation_pattern_refined_from_a_perturbation(self):
    point = self._shared_pattern_point()
    problem = self.refined(point.at(_perturbed(
        point.params, np.random.default_rng(4), 0.05)))
    self.assertTrue(all(np.all(np.asarray(z) > 0) for z in
                        _module_apply(problem.module, problem.params,
                                      problem.x, "forward")[1]))
    bound = identities.subspace_bound(problem)
    self.assertLess(bound.grad_norm, GRAD_TOL)
    x = np.asarray(problem.x)
    lstsq = _lstsq_value(np.hstack([x, _ones(problem.m)]),
                         np.asarray(problem.y), _c("mean", problem.m))
    self.assertAlmostEqual(_numpy_loss(problem, "leaky_relu", True), lstsq,
                           delta=IDENTITY_RTOL * (1 + lstsq))
    self.assertLess(bound.inclusion_residual, 1e-8)
    self.assertTrue(bound.holds)

  def test_bound_fails_when_inclusion_fails(self):
    # A width-1 linear net fits rank-1 maps only: at its critical point
    # (reduced-rank regression) L > L*_linear and col(X kron I) is not in
    # col(D), as the contrapositive of (C) requires.
    rng = np.random.default_rng(5)
    model = MLP(3, (1,), 2, "identity", True)
    x = rng.standard_normal((30, 3))
    y = x @ rng.standard_normal((3, 2)) + 0.05 * rng.standard_normal((30, 2))
    start = _random_variables(model, rng)
    problem = self.refined(lminima.Problem.for_module(model, start, x, y))
    bound = identities.subspace_bound(problem)
    c = _c("mean", 30)
    # Reduced-rank regression: the best rank-1 fit of the OLS predictions.
    design = np.hstack([x, _ones(30)])
    fitted = design @ np.linalg.lstsq(design, y, rcond=None)[0]
    centered = fitted - fitted.mean(axis=0)
    u, s, vt = np.linalg.svd(centered, full_matrices=False)
    rank_one = fitted.mean(axis=0) + s[0] * np.outer(u[:, 0], vt[0])
    self.assertAlmostEqual(bound.loss, c * np.sum((y - rank_one) ** 2),
                           delta=1e-10)
    self.assertAlmostEqual(bound.bound, _lstsq_value(design, y, c),
                           delta=1e-14)
    self.assertFalse(bound.holds)
    self.assertGreater(bound.loss, bound.bound + 1e-3)
    self.assertGreater(bound.inclusion_residual, 1e-2)
    self.assertAlmostEqual(bound.inclusion_residual, _inclusion_residual(
        problem.derivative().matrix, design), delta=1e-8)

  def test_random_feature_bound_uses_the_given_features(self):
    problem = _random_problem("tanh", True, widths=(3,), m=12)
    x, y = np.asarray(problem.x), np.asarray(problem.y)
    phi = classical.random_features(x, 5, "tanh", seed=1)
    out = identities.subspace_bound(problem, phi, intercept=False)
    self.assertAlmostEqual(out.bound, _lstsq_value(phi, y, _c("mean", 12)),
                           delta=1e-14)
    self.assertEqual(out.rank_features, 5)
    self.assertAlmostEqual(out.inclusion_residual, _inclusion_residual(
        problem.derivative().matrix, phi), delta=1e-8)
    with_ones = identities.subspace_bound(problem, phi)  # problem.intercept
    self.assertEqual(with_ones.rank_features, 6)
    self.assertAlmostEqual(with_ones.bound, _lstsq_value(
        np.hstack([phi, _ones(12)]), y, _c("mean", 12)), delta=1e-14)

  def test_linear_model_contains_its_own_design(self):
    problem = _random_problem("tanh", True, widths=())
    out = identities.subspace_bound(problem)
    self.assertLess(out.inclusion_residual, 1e-14)
    self.assertEqual(out.rank_features, 4)


# ---------------------------------------------------------------------------
# Per-row record.


class TheoryRecordTest(_TestCase):

  KEYS = {"rank_D", "rank_D_frac", "rank_last_hidden", "identity_gap_full",
          "identity_gap_last", "euler_residual_max", "yhat_norm",
          "linear_opt", "rf_opt",
          "inclusion_residual_linear", "below_linear", "rank_tol",
          "rank_D_loose", "rank_tol_loose", "full_D_skipped"}

  @parameterized.parameters(("relu", True), ("leaky_relu", False),
                            ("tanh", True))
  def test_fields_match_independent_references(self, activation, bias):
    problem = _random_problem(activation, bias, m=12, normalization="sum")
    record = quantities.theory_record(problem, seed=3)
    self.assertEqual(set(record), self.KEYS)
    json.dumps(record)
    x, y = np.asarray(problem.x), np.asarray(problem.y)
    c = _c("sum", problem.m)
    # Ranks by numpy on the autodiff D (checked against finite differences
    # in test_derivative.py): exact zero singular values from the rescaling
    # symmetries of relu would be finite-difference noise in a numerical D.
    d = problem.derivative().matrix
    self.assertEqual(record["rank_D"], np.linalg.matrix_rank(d))
    self.assertEqual(record["rank_D_loose"], np.linalg.matrix_rank(
        d, rtol=quantities.LOOSE_RANK_TOL))
    self.assertEqual(record["rank_D_frac"], record["rank_D"] / y.size)
    self.assertIsNone(record["full_D_skipped"])
    # n_params (39 with biases, 30 without) > m d_y = 24.
    self.assertEqual(record["rank_tol"], (39 if bias else 30) * EPS)

    design = np.hstack([x, _ones(problem.m)]) if bias else x
    self.assertAlmostEqual(record["linear_opt"], _lstsq_value(design, y, c),
                           delta=1e-12)
    # Random features of the last hidden width, same activation and seed.
    first = MLP(x.shape[1], (problem.module.widths[-1],), 1, activation,
                bias).init_params(jax.random.PRNGKey(3), jnp.float64)
    phi = NUMPY_ACTIVATIONS[activation](
        x @ np.asarray(first["params"]["layer_1"]["kernel"]))
    phi = np.hstack([phi, _ones(problem.m)]) if bias else phi
    self.assertAlmostEqual(record["rf_opt"], _lstsq_value(phi, y, c),
                           delta=1e-12)

    loss = _numpy_loss(problem, activation, bias)
    hidden = _numpy_forward(problem.params, x, activation, bias)[1][-1]
    hidden = np.hstack([hidden, _ones(problem.m)]) if bias else hidden
    self.assertAlmostEqual(record["identity_gap_last"],
                           abs(loss - _lstsq_value(hidden, y, c)), delta=1e-12)
    self.assertEqual(record["rank_last_hidden"],
                     np.linalg.matrix_rank(hidden))
    self.assertEqual(record["below_linear"],
                     loss <= record["linear_opt"] * (1 + 1e-8))
    np.testing.assert_allclose(
        record["yhat_norm"],
        np.linalg.norm(_numpy_forward(problem.params, x, activation,
                                      bias)[0]), rtol=1e-12)
    if activation in HOMOGENEOUS_ACTIVATIONS:
      self.assertLess(record["euler_residual_max"], 1e-12)
    else:
      self.assertIsNone(record["euler_residual_max"])
    self.assertAlmostEqual(record["inclusion_residual_linear"],
                           _inclusion_residual(d, design), delta=1e-8)

  def test_over_budget_keeps_the_cheap_fields(self):
    full = quantities.theory_record(_random_problem("relu", True, m=12))
    cheap = quantities.theory_record(_random_problem("relu", True, m=12,
                                                 memory_budget_bytes=8))
    self.assertEqual(set(cheap), self.KEYS)
    json.dumps(cheap)
    for key in ("rank_D", "rank_D_frac", "identity_gap_full",
                "inclusion_residual_linear", "euler_residual_max",
                "rank_D_loose"):
      self.assertIsNone(cheap[key], key)
      self.assertIsNotNone(full[key], key)
    self.assertIn("memory budget", cheap["full_D_skipped"])
    for key in ("rank_last_hidden", "identity_gap_last", "linear_opt",
                "rf_opt", "below_linear", "rank_tol", "yhat_norm"):
      self.assertEqual(cheap[key], full[key], key)

  def test_linear_model_has_no_random_features(self):
    problem = _random_problem("tanh", False, widths=(), m=12)
    record = quantities.theory_record(problem)
    self.assertIsNone(record["rf_opt"])
    self.assertEqual(record["rank_last_hidden"],
                     np.linalg.matrix_rank(np.asarray(problem.x)))
    self.assertEqual(record["rank_last_hidden"], 3)


if __name__ == "__main__":
  absltest.main()
