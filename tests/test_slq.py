"""Tests for lminima.linalg.slq against independent references.

References: dense traces and matrix powers, synthetic matrices with
prescribed spectra, and closed-form variances of the randomized estimators.
"""

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

import lminima  # noqa: F401  (enables float64)
from lminima.core import hessian
from lminima.linalg import slq

from _helpers import dense_matvec, matrix_with_spectrum, mlp_problem


def _rademacher_form_std(a, num_probes, scale=1.0):
  """Standard error of mean_p scale * z_p^T A z_p for Rademacher z_p."""
  variance = 2.0 * (np.sum(a * a) - np.sum(np.diag(a) ** 2))
  return scale * np.sqrt(variance / num_probes)


class SpectralDensityTest(parameterized.TestCase):

  def test_weights_are_squared_first_components(self):
    # For diagonal A and num_iters = n the Ritz pairs are the eigenpairs, and
    # the Gauss weights are (e_i . v)^2 = 1/n for a normalized Rademacher v;
    # last components (the wrong rule) would differ from 1/n.
    diagonal = np.array([-2.0, -0.5, 0.0, 0.3, 1.0, 2.5, 4.0, 9.0])
    density = slq.slq_density(dense_matvec(np.diag(diagonal)), 8,
                                  key=jax.random.PRNGKey(0), num_probes=3,
                                  num_iters=8)
    np.testing.assert_allclose(density.nodes,
                               np.tile(np.sort(diagonal), (3, 1)), atol=1e-12)
    np.testing.assert_allclose(density.weights, np.full((3, 8), 1 / 8),
                               atol=1e-12)

  def test_moments_match_traces(self):
    params, loss_fn = mlp_problem((8, 6), d_in=4)
    dense = np.asarray(hessian.dense_hessian(loss_fn, params))
    dim = dense.shape[0]
    matvec, _ = hessian.hvp_operator(loss_fn, params)
    num_probes = 40
    density = slq.slq_density(matvec, dim, key=jax.random.PRNGKey(3),
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
    density = slq.slq_density(dense_matvec(a), 2,
                                  key=jax.random.PRNGKey(0), num_probes=1,
                                  num_iters=2, grid=grid, sigma=0.5)
    expected = 0.5 * sum(
        np.exp(-0.5 * ((grid - c) / 0.5) ** 2) / (0.5 * np.sqrt(2 * np.pi))
        for c in (1.0, 3.0))
    np.testing.assert_allclose(density.density, expected, rtol=1e-10)


class TraceTest(parameterized.TestCase):

  def test_hutchinson_within_statistical_error(self):
    a = matrix_with_spectrum(np.linspace(-1.0, 3.0, 120), seed=5)
    num_probes = 400
    estimate, standard_error = slq.hutchinson_trace(
        dense_matvec(a), 120, key=jax.random.PRNGKey(4),
        num_probes=num_probes)
    std = _rademacher_form_std(a, num_probes)
    self.assertLessEqual(abs(estimate - np.trace(a)), 5 * std)
    # The sample standard error estimates the true one (400 probes: ~5%).
    self.assertBetween(standard_error / std, 0.75, 1.25)

  def test_hutchpp_exact_on_low_rank(self):
    eigenvalues = np.concatenate([[9.0, 4.0, -2.0, 1.0], np.zeros(96)])
    a = matrix_with_spectrum(eigenvalues, seed=2)
    estimate = slq.hutchpp_trace(dense_matvec(a), 100,
                                     key=jax.random.PRNGKey(0), num_matvecs=15)
    self.assertAlmostEqual(estimate, np.trace(a), places=10)

  def test_hutchpp_within_statistical_error(self):
    eigenvalues = 1.0 / np.arange(1, 201) ** 1.5
    a = matrix_with_spectrum(eigenvalues, seed=4)
    k = 20
    estimate = slq.hutchpp_trace(dense_matvec(a), 200,
                                     key=jax.random.PRNGKey(1),
                                     num_matvecs=3 * k)
    # Remainder term = Hutchinson with k probes on P A P, variance
    # <= 2 ||P A||_F^2 / k; the range finder with k = 2r sketch vectors keeps
    # E||P A||_F <= sqrt(2) ||A - A_r||_F (Halko et al. 2011, Thm 10.5),
    # taken here at 2x for the probability.
    tail = np.sqrt(np.sum(np.sort(eigenvalues)[::-1][k // 2:] ** 2))
    std = np.sqrt(2.0 / k) * 2 * np.sqrt(2) * tail
    self.assertLessEqual(abs(estimate - np.trace(a)), 5 * std)


class BadInputTest(absltest.TestCase):

  def test_bad_inputs_raise(self):
    a = dense_matvec(np.eye(4))
    wrong_shape = lambda v: jnp.concatenate([v, v])
    with self.assertRaisesRegex(ValueError, "to \\(4,\\), got"):
      slq.slq_density(wrong_shape, 4, key=jax.random.PRNGKey(0))
    with self.assertRaisesRegex(ValueError, "num_probes and num_iters"):
      slq.slq_density(a, 4, key=jax.random.PRNGKey(0), num_probes=0)
    with self.assertRaisesRegex(ValueError, "sigma"):
      slq.slq_density(a, 4, key=jax.random.PRNGKey(0), sigma=0.0)
    with self.assertRaisesRegex(ValueError, "1-D"):
      slq.slq_density(a, 4, key=jax.random.PRNGKey(0),
                             grid=np.zeros((2, 2)))
    with self.assertRaisesRegex(ValueError, "num_probes"):
      slq.hutchinson_trace(a, 4, key=jax.random.PRNGKey(0),
                                  num_probes=0)
    with self.assertRaisesRegex(ValueError, "num_matvecs"):
      slq.hutchpp_trace(a, 4, key=jax.random.PRNGKey(0), num_matvecs=2)


if __name__ == "__main__":
  absltest.main()
