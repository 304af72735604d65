"""Tests for lminima.hessian against independent references.

References: central finite differences of jax.grad, dense numpy.linalg.eigh /
eigvalsh, synthetic matrices with prescribed spectra, and closed-form
variances of the randomized trace estimators.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import absltest
from absl.testing import parameterized

import lminima  # noqa: F401  (enables float64)
from lminima import hessian
from lminima.losses import squared_loss
from lminima.models import MLP


def _mlp_problem(widths, activation="tanh", bias=True, m=40, d_in=3, d_out=2,
                 seed=0):
  model = MLP(d_in, widths, d_out, activation, bias)
  init_key, x_key, y_key = jax.random.split(jax.random.PRNGKey(seed), 3)
  params = model.init(init_key, jnp.float64)
  x = jax.random.normal(x_key, (m, d_in), jnp.float64)
  y = jax.random.normal(y_key, (m, d_out), jnp.float64)
  loss_fn = lambda p: squared_loss(model.apply(p, x), y, "mean")
  return model, params, loss_fn


def _matrix_with_spectrum(eigenvalues, seed=0):
  n = len(eigenvalues)
  q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, n)))
  return (q * np.asarray(eigenvalues)) @ q.T


def _dense_matvec(a):
  a = jnp.asarray(a)
  return lambda v: a @ v


def _rademacher_form_std(a, num_probes, scale=1.0):
  """Standard error of mean_p scale * z_p^T A z_p for Rademacher z_p."""
  variance = 2.0 * (np.sum(a * a) - np.sum(np.diag(a) ** 2))
  return scale * np.sqrt(variance / num_probes)


class HessianVectorProductTest(parameterized.TestCase):

  @parameterized.parameters(("tanh", True), ("softplus", False),
                            ("sigmoid", True))
  def test_dense_hessian_matches_finite_differences(self, activation, bias):
    _, params, loss_fn = _mlp_problem((4, 3), activation, bias)
    flat, unravel = hessian.flatten_params(params)
    flat_grad = jax.jit(jax.grad(lambda t: loss_fn(unravel(t))))
    step = 1e-5
    identity = np.eye(flat.size)
    columns = [(flat_grad(flat + step * e) - flat_grad(flat - step * e))
               / (2 * step) for e in identity]
    finite_diff = np.stack(columns, axis=1)
    dense = np.asarray(hessian.dense_hessian(loss_fn, params, chunk_size=7))
    self.assertEqual(dense.dtype, np.float64)
    np.testing.assert_allclose(dense, dense.T, rtol=0, atol=0)
    # Central differences: O(step^2) truncation plus eps/step roundoff.
    np.testing.assert_allclose(dense, finite_diff, rtol=0,
                               atol=1e-7 * np.abs(finite_diff).max())

  def test_dense_hessian_chunk_size_does_not_matter(self):
    _, params, loss_fn = _mlp_problem((5,))
    full = hessian.dense_hessian(loss_fn, params, chunk_size=1000)
    chunked = hessian.dense_hessian(loss_fn, params, chunk_size=3)
    np.testing.assert_allclose(chunked, full, rtol=1e-13, atol=1e-15)

  def test_hvp_and_operator_match_dense(self):
    _, params, loss_fn = _mlp_problem((6, 5))
    dense = np.asarray(hessian.dense_hessian(loss_fn, params))
    flat, unravel = hessian.flatten_params(params)
    v = np.random.default_rng(1).standard_normal(flat.size)
    expected = dense @ v
    pytree_product = hessian.hvp(loss_fn, params, unravel(jnp.asarray(v)))
    np.testing.assert_allclose(hessian.flatten_params(pytree_product)[0],
                               expected, rtol=1e-10, atol=1e-13)
    matvec, dim = hessian.hvp_operator(loss_fn, params)
    self.assertEqual(dim, flat.size)
    np.testing.assert_allclose(matvec(jnp.asarray(v)), expected, rtol=1e-10,
                               atol=1e-13)

  def test_flatten_params_round_trip(self):
    model, params, _ = _mlp_problem((3,))
    flat, unravel = hessian.flatten_params(params)
    self.assertEqual(flat.shape, (model.n_params,))
    for a, b in zip(jax.tree_util.tree_leaves(unravel(flat)),
                    jax.tree_util.tree_leaves(params)):
      np.testing.assert_array_equal(a, b)

  def test_bad_inputs_raise(self):
    model, params, loss_fn = _mlp_problem((3,))
    with self.assertRaisesRegex(ValueError, "float64"):
      hessian.dense_hessian(loss_fn, model.init(jax.random.PRNGKey(0)))
    nan_params = jax.tree_util.tree_map(lambda a: a.at[0].set(jnp.nan),
                                        params)
    with self.assertRaisesRegex(ValueError, "NaN"):
      hessian.dense_hessian(loss_fn, nan_params)
    with self.assertRaisesRegex(ValueError, "chunk_size"):
      hessian.dense_hessian(loss_fn, params, chunk_size=0)
    with self.assertRaisesRegex(ValueError, "structure"):
      hessian.hvp(loss_fn, params, params[:-1])
    with self.assertRaisesRegex(ValueError, "shape"):
      hessian.hvp(loss_fn, params,
                  jax.tree_util.tree_map(lambda a: a[..., :1], params))
    a = _dense_matvec(np.eye(4))
    with self.assertRaisesRegex(ValueError, r"\(5,\)"):
      hessian.lanczos_extreme_eigs(a, 5, key=jax.random.PRNGKey(0))
    wrong_shape = lambda v: jnp.concatenate([v, v])
    with self.assertRaisesRegex(ValueError, "to \\(4,\\), got"):
      hessian.slq_density(wrong_shape, 4, key=jax.random.PRNGKey(0))
    with self.assertRaisesRegex(ValueError, "vector"):
      hessian.lanczos_tridiagonal(a, jnp.ones((4, 1)), 2)
    with self.assertRaisesRegex(ValueError, "nonzero"):
      hessian.lanczos_tridiagonal(a, jnp.zeros(4), 2)
    with self.assertRaisesRegex(ValueError, "num_matvecs"):
      hessian.hutchpp_trace(a, 4, key=jax.random.PRNGKey(0), num_matvecs=2)


class LanczosTest(parameterized.TestCase):

  def test_tridiagonal_relations(self):
    a = _matrix_with_spectrum(np.linspace(-2.0, 5.0, 30), seed=3)
    v0 = np.random.default_rng(0).standard_normal(30)
    alphas, betas, basis = hessian.lanczos_tridiagonal(
        _dense_matvec(a), jnp.asarray(v0), 12)
    basis = np.asarray(basis)
    np.testing.assert_allclose(basis @ basis.T, np.eye(12), atol=1e-13)
    np.testing.assert_allclose(basis[0], v0 / np.linalg.norm(v0), atol=1e-15)
    tridiagonal = (np.diag(alphas) + np.diag(betas[:-1], 1)
                   + np.diag(betas[:-1], -1))
    np.testing.assert_allclose(basis @ a @ basis.T, tridiagonal, atol=1e-12)
    # The part of A V^T outside the basis has norm betas[-1].
    outside = a @ basis.T - basis.T @ tridiagonal
    self.assertAlmostEqual(np.linalg.norm(outside), float(betas[-1]),
                           places=10)

  @parameterized.named_parameters(
      ("indefinite", np.concatenate([np.linspace(-3.0, -0.5, 20),
                                     np.linspace(0.1, 8.0, 180)])),
      ("clustered", np.concatenate([np.full(60, 1e-3), [-1.0, -0.999],
                                    np.linspace(0.5, 1.0, 130),
                                    [1.001, 1.0015, 1.002, 1.0025]])),
      ("psd_with_null_space", np.concatenate([np.zeros(150),
                                              np.geomspace(1e-4, 10.0, 50)])))
  def test_known_spectrum(self, eigenvalues):
    a = _matrix_with_spectrum(eigenvalues, seed=len(eigenvalues))
    dim = a.shape[0]
    eigs = hessian.lanczos_extreme_eigs(_dense_matvec(a), dim,
                                        key=jax.random.PRNGKey(0))
    scale = np.abs(eigenvalues).max()
    self.assertTrue(eigs.converged)
    self.assertLessEqual(abs(eigs.lambda_min - eigenvalues.min()),
                         1e-8 * scale)
    self.assertLessEqual(abs(eigs.lambda_max - eigenvalues.max()),
                         1e-8 * scale)
    # Independent residuals with the dense matrix.
    for value, vector, residual in (
        (eigs.lambda_min, eigs.v_min, eigs.residual_min),
        (eigs.lambda_max, eigs.v_max, eigs.residual_max)):
      self.assertAlmostEqual(np.linalg.norm(vector), 1.0, places=12)
      true_residual = np.linalg.norm(a @ vector - value * vector)
      self.assertAlmostEqual(residual, true_residual, delta=1e-12 * scale)
      self.assertLessEqual(true_residual, 1e-7 * scale)
    np.testing.assert_array_equal(eigs.ritz_values,
                                  np.sort(eigs.ritz_values))
    self.assertEqual(eigs.num_matvecs, eigs.ritz_values.size + 2)

  def test_invariant_subspace_stops_early_and_exact(self):
    # Three distinct eigenvalues: the Krylov space is invariant after 3 steps.
    eigenvalues = np.repeat([-1.0, 2.0, 5.0], 20)
    a = _matrix_with_spectrum(eigenvalues, seed=7)
    eigs = hessian.lanczos_extreme_eigs(_dense_matvec(a), 60,
                                        key=jax.random.PRNGKey(2))
    self.assertTrue(eigs.converged)
    self.assertEqual(eigs.num_matvecs, 3 + 2)
    np.testing.assert_allclose(eigs.ritz_values, [-1.0, 2.0, 5.0], atol=1e-12)

  def test_max_iters_reports_not_converged(self):
    a = _matrix_with_spectrum(np.linspace(0.0, 1.0, 300), seed=1)
    eigs = hessian.lanczos_extreme_eigs(_dense_matvec(a), 300,
                                        key=jax.random.PRNGKey(0),
                                        max_iters=5, tol=1e-12)
    self.assertFalse(eigs.converged)
    self.assertEqual(eigs.num_matvecs, 7)

  @parameterized.parameters(((8, 8), 0), ((12, 10), 1))
  def test_mlp_hessian_matches_eigvalsh(self, widths, seed):
    _, params, loss_fn = _mlp_problem(widths, seed=seed, d_in=5)
    eigenvalues = np.linalg.eigvalsh(hessian.dense_hessian(loss_fn, params))
    matvec, dim = hessian.hvp_operator(loss_fn, params)
    eigs = hessian.lanczos_extreme_eigs(matvec, dim,
                                        key=jax.random.PRNGKey(seed))
    self.assertTrue(eigs.converged)
    self.assertLessEqual(abs(eigs.lambda_min - eigenvalues[0]),
                         1e-8 * abs(eigenvalues[0]))
    self.assertLessEqual(abs(eigs.lambda_max - eigenvalues[-1]),
                         1e-8 * abs(eigenvalues[-1]))

  @pytest.mark.slow
  def test_large_mlp_hessian_matches_eigvalsh(self):
    _, params, loss_fn = _mlp_problem((40, 40), m=200, d_in=20, d_out=3)
    eigenvalues = np.linalg.eigvalsh(hessian.dense_hessian(loss_fn, params))
    self.assertGreater(eigenvalues.size, 2500)
    matvec, dim = hessian.hvp_operator(loss_fn, params)
    eigs = hessian.lanczos_extreme_eigs(matvec, dim,
                                        key=jax.random.PRNGKey(0))
    self.assertTrue(eigs.converged)
    self.assertLessEqual(abs(eigs.lambda_min - eigenvalues[0]),
                         1e-8 * abs(eigenvalues[0]))
    self.assertLessEqual(abs(eigs.lambda_max - eigenvalues[-1]),
                         1e-8 * abs(eigenvalues[-1]))

  def test_one_compile_per_loss_function(self):
    _, params, loss_fn = _mlp_problem((5,))
    moved = jax.tree_util.tree_map(lambda a: a + 0.1, params)
    values = []
    for point, seed in ((params, 0), (moved, 1), (params, 2)):
      matvec, dim = hessian.hvp_operator(loss_fn, point)
      values.append(hessian.lanczos_extreme_eigs(
          matvec, dim, key=jax.random.PRNGKey(seed)).lambda_max)
      if seed == 0:
        compiled = hessian._extreme_loop_jit._cache_size()
    self.assertEqual(hessian._extreme_loop_jit._cache_size(), compiled)
    # The cached operator really is evaluated at each new point.
    self.assertNotAlmostEqual(values[0], values[1], places=6)
    self.assertAlmostEqual(values[0], values[2], places=10)


class SpectralDensityTest(parameterized.TestCase):

  def test_weights_are_squared_first_components(self):
    # For diagonal A and num_iters = n the Ritz pairs are the eigenpairs, and
    # the Gauss weights are (e_i . v)^2 = 1/n for a normalized Rademacher v;
    # last components (the wrong rule) would differ from 1/n.
    diagonal = np.array([-2.0, -0.5, 0.0, 0.3, 1.0, 2.5, 4.0, 9.0])
    density = hessian.slq_density(_dense_matvec(np.diag(diagonal)), 8,
                                  key=jax.random.PRNGKey(0), num_probes=3,
                                  num_iters=8)
    np.testing.assert_allclose(density.nodes,
                               np.tile(np.sort(diagonal), (3, 1)), atol=1e-12)
    np.testing.assert_allclose(density.weights, np.full((3, 8), 1 / 8),
                               atol=1e-12)

  def test_moments_match_traces(self):
    _, params, loss_fn = _mlp_problem((8, 6), d_in=4)
    dense = np.asarray(hessian.dense_hessian(loss_fn, params))
    dim = dense.shape[0]
    matvec, _ = hessian.hvp_operator(loss_fn, params)
    num_probes = 40
    density = hessian.slq_density(matvec, dim, key=jax.random.PRNGKey(3),
                                  num_probes=num_probes, num_iters=20)
    np.testing.assert_allclose(density.weights.sum(axis=1), 1.0, atol=1e-12)
    power = np.eye(dim)
    for k in (1, 2):
      power = power @ dense
      estimate = np.mean(np.sum(density.weights * density.nodes ** k, axis=1))
      # Gauss quadrature is exact for degree < 2 * num_iters, so the only
      # error is the Rademacher probe variance of v^T H^k v / n.
      std = _rademacher_form_std(power, num_probes, scale=1.0 / dim)
      self.assertLessEqual(abs(estimate - np.trace(power) / dim), 5 * std)
    # The smoothed density integrates to the quadrature moments (+ sigma^2).
    grid, values = density.grid, density.density
    mean = np.mean(np.sum(density.weights * density.nodes, axis=1))
    second = np.mean(np.sum(density.weights * density.nodes ** 2, axis=1))
    self.assertAlmostEqual(np.trapezoid(values, grid), 1.0, places=6)
    self.assertAlmostEqual(np.trapezoid(grid * values, grid), mean, places=6)
    self.assertAlmostEqual(np.trapezoid(grid ** 2 * values, grid),
                           second + density.sigma ** 2, places=6)

  def test_user_grid_and_sigma(self):
    a = np.diag([1.0, 3.0])
    grid = np.linspace(0.0, 4.0, 5)
    density = hessian.slq_density(_dense_matvec(a), 2,
                                  key=jax.random.PRNGKey(0), num_probes=1,
                                  num_iters=2, grid=grid, sigma=0.5)
    expected = 0.5 * sum(
        np.exp(-0.5 * ((grid - c) / 0.5) ** 2) / (0.5 * np.sqrt(2 * np.pi))
        for c in (1.0, 3.0))
    np.testing.assert_allclose(density.density, expected, rtol=1e-10)


class TraceTest(parameterized.TestCase):

  def test_hutchinson_within_statistical_error(self):
    a = _matrix_with_spectrum(np.linspace(-1.0, 3.0, 120), seed=5)
    num_probes = 400
    estimate, standard_error = hessian.hutchinson_trace(
        _dense_matvec(a), 120, key=jax.random.PRNGKey(4),
        num_probes=num_probes)
    std = _rademacher_form_std(a, num_probes)
    self.assertLessEqual(abs(estimate - np.trace(a)), 5 * std)
    # The sample standard error estimates the true one (400 probes: ~5%).
    self.assertBetween(standard_error / std, 0.75, 1.25)

  def test_hutchpp_exact_on_low_rank(self):
    eigenvalues = np.concatenate([[9.0, 4.0, -2.0, 1.0], np.zeros(96)])
    a = _matrix_with_spectrum(eigenvalues, seed=2)
    estimate = hessian.hutchpp_trace(_dense_matvec(a), 100,
                                     key=jax.random.PRNGKey(0), num_matvecs=15)
    self.assertAlmostEqual(estimate, np.trace(a), places=10)

  def test_hutchpp_within_statistical_error(self):
    eigenvalues = 1.0 / np.arange(1, 201) ** 1.5
    a = _matrix_with_spectrum(eigenvalues, seed=4)
    k = 20
    estimate = hessian.hutchpp_trace(_dense_matvec(a), 200,
                                     key=jax.random.PRNGKey(1),
                                     num_matvecs=3 * k)
    # Remainder term = Hutchinson with k probes on P A P, variance
    # <= 2 ||P A||_F^2 / k; the range finder with k = 2r sketch vectors keeps
    # E||P A||_F <= sqrt(2) ||A - A_r||_F (Halko et al. 2011, Thm 10.5),
    # taken here at 2x for the probability.
    tail = np.sqrt(np.sum(np.sort(eigenvalues)[::-1][k // 2:] ** 2))
    std = np.sqrt(2.0 / k) * 2 * np.sqrt(2) * tail
    self.assertLessEqual(abs(estimate - np.trace(a)), 5 * std)


if __name__ == "__main__":
  absltest.main()
