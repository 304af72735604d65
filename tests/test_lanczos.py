"""Tests for lminima.linalg.lanczos against independent references.

References: dense numpy.linalg.eigh / eigvalsh, synthetic matrices with
prescribed spectra, and the Lanczos relations checked with the dense matrix.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import absltest
from absl.testing import parameterized

import lminima  # noqa: F401  (enables float64)
from lminima.core import hessian
from lminima.linalg import lanczos

from _helpers import dense_matvec, matrix_with_spectrum, mlp_problem


class LanczosTest(parameterized.TestCase):

  def test_tridiagonal_relations(self):
    a = matrix_with_spectrum(np.linspace(-2.0, 5.0, 30), seed=3)
    v0 = np.random.default_rng(0).standard_normal(30)
    alphas, betas, basis = lanczos.lanczos_tridiagonal(
        dense_matvec(a), jnp.asarray(v0), 12)
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
    a = matrix_with_spectrum(eigenvalues, seed=len(eigenvalues))
    dim = a.shape[0]
    eigs = lanczos.lanczos_extreme_eigs(dense_matvec(a), dim,
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
    a = matrix_with_spectrum(eigenvalues, seed=7)
    eigs = lanczos.lanczos_extreme_eigs(dense_matvec(a), 60,
                                        key=jax.random.PRNGKey(2))
    self.assertTrue(eigs.converged)
    self.assertEqual(eigs.num_matvecs, 3 + 2)
    np.testing.assert_allclose(eigs.ritz_values, [-1.0, 2.0, 5.0], atol=1e-12)

  def test_max_iters_reports_not_converged(self):
    a = matrix_with_spectrum(np.linspace(0.0, 1.0, 300), seed=1)
    eigs = lanczos.lanczos_extreme_eigs(dense_matvec(a), 300,
                                        key=jax.random.PRNGKey(0),
                                        max_iters=5, tol=1e-12)
    self.assertFalse(eigs.converged)
    self.assertEqual(eigs.num_matvecs, 7)

  @parameterized.parameters(((8, 8), 0), ((12, 10), 1))
  def test_mlp_hessian_matches_eigvalsh(self, widths, seed):
    params, loss_fn = mlp_problem(widths, seed=seed, d_in=5)
    eigenvalues = np.linalg.eigvalsh(hessian.dense_hessian(loss_fn, params))
    matvec, dim = hessian.hvp_operator(loss_fn, params)
    eigs = lanczos.lanczos_extreme_eigs(matvec, dim,
                                        key=jax.random.PRNGKey(seed))
    self.assertTrue(eigs.converged)
    self.assertLessEqual(abs(eigs.lambda_min - eigenvalues[0]),
                         1e-8 * abs(eigenvalues[0]))
    self.assertLessEqual(abs(eigs.lambda_max - eigenvalues[-1]),
                         1e-8 * abs(eigenvalues[-1]))

  @pytest.mark.slow
  def test_large_mlp_hessian_matches_eigvalsh(self):
    params, loss_fn = mlp_problem((40, 40), m=200, d_in=20, d_out=3)
    eigenvalues = np.linalg.eigvalsh(hessian.dense_hessian(loss_fn, params))
    self.assertGreater(eigenvalues.size, 2500)
    matvec, dim = hessian.hvp_operator(loss_fn, params)
    eigs = lanczos.lanczos_extreme_eigs(matvec, dim,
                                        key=jax.random.PRNGKey(0))
    self.assertTrue(eigs.converged)
    self.assertLessEqual(abs(eigs.lambda_min - eigenvalues[0]),
                         1e-8 * abs(eigenvalues[0]))
    self.assertLessEqual(abs(eigs.lambda_max - eigenvalues[-1]),
                         1e-8 * abs(eigenvalues[-1]))

  def test_one_compile_per_loss_function(self):
    params, loss_fn = mlp_problem((5,))
    moved = jax.tree_util.tree_map(lambda a: a + 0.1, params)
    values = []
    for point, seed in ((params, 0), (moved, 1), (params, 2)):
      matvec, dim = hessian.hvp_operator(loss_fn, point)
      values.append(lanczos.lanczos_extreme_eigs(
          matvec, dim, key=jax.random.PRNGKey(seed)).lambda_max)
      if seed == 0:
        compiled = lanczos._extreme_loop_jit._cache_size()
    self.assertEqual(lanczos._extreme_loop_jit._cache_size(), compiled)
    # The cached operator really is evaluated at each new point.
    self.assertNotAlmostEqual(values[0], values[1], places=6)
    self.assertAlmostEqual(values[0], values[2], places=10)

  def test_long_run_keeps_orthogonality_and_counts(self):
    # Plain Lanczos (no full reorthogonalization) loses orthogonality once a
    # Ritz value converges (Paige) and then grows spurious copies of it. An
    # isolated lambda_min = -1 converges within ~15 steps; lambda_max = 1.1,
    # 10% above the bulk [0, 1], takes ~50, so the stopping rule of
    # lanczos_extreme_eigs runs long after lambda_min has converged.
    dim, lam_min, lam_max = 400, -1.0, 1.1
    eigenvalues = np.concatenate([[lam_min], np.linspace(0.0, 1.0, dim - 2),
                                  [lam_max]])
    a = matrix_with_spectrum(eigenvalues, seed=11)
    matvec = dense_matvec(a)
    threshold = 0.5 * lam_min  # between lambda_min and the bulk

    def near(ritz_values, value):
      return int(np.sum(np.abs(ritz_values - value) <= 1e-6 * abs(value)))

    num_iters = 200
    v0 = np.random.default_rng(0).standard_normal(dim)
    alphas, betas, basis = lanczos.lanczos_tridiagonal(
        matvec, jnp.asarray(v0), num_iters)
    basis = np.asarray(basis)
    self.assertLess(np.linalg.norm(basis @ basis.T - np.eye(num_iters)),
                    1e-8, "Lanczos basis lost orthogonality")
    ritz = np.linalg.eigvalsh(np.diag(alphas) + np.diag(betas[:-1], 1)
                              + np.diag(betas[:-1], -1))
    self.assertEqual(near(ritz, lam_max), 1, "copies of lambda_max")
    self.assertEqual(near(ritz, lam_min), 1, "copies of lambda_min")
    self.assertEqual(int(np.sum(ritz < threshold)), 1, "index")

    eigs = lanczos.lanczos_extreme_eigs(matvec, dim, key=jax.random.PRNGKey(0),
                                        tol=1e-12, max_iters=dim)
    self.assertTrue(eigs.converged)
    self.assertGreater(eigs.num_matvecs, 30)  # ran long past lambda_min
    self.assertLessEqual(abs(eigs.lambda_min - lam_min), 1e-10)
    self.assertLessEqual(abs(eigs.lambda_max - lam_max), 1e-10)
    self.assertEqual(near(eigs.ritz_values, lam_max), 1, "copies of lambda_max")
    self.assertEqual(near(eigs.ritz_values, lam_min), 1, "copies of lambda_min")
    self.assertEqual(int(np.sum(eigs.ritz_values < threshold)), 1, "index")

  def test_partial_reorthogonalization_runs_only_when_needed(self):
    # Paige: after a Ritz pair with residual r converges, the new Lanczos
    # vectors regain components ~ eps ||A|| / r along it. Stopped at a
    # relative residual of 1e-4 >> sqrt(eps) on a spectrum without isolated
    # ends (uniform on [-1, 1]: ~80 steps), no estimate reaches sqrt(eps),
    # so no step may run the full pass.
    dim = 400
    uniform = matrix_with_spectrum(np.linspace(-1.0, 1.0, dim), seed=11)
    for seed in (0, 1):
      eigs = lanczos.lanczos_extreme_eigs(
          dense_matvec(uniform), dim, key=jax.random.PRNGKey(seed), tol=1e-4,
          max_iters=dim)
      self.assertTrue(eigs.converged)
      self.assertGreater(eigs.num_matvecs, 60)
      self.assertEqual(eigs.num_reorthogonalizations, 0, seed)
    # An isolated lambda_min = -1 converges within ~15 steps, long before
    # the stop at 1e-12 (~50 steps, lambda_max = 1.1 10% above the bulk):
    # orthogonality must be restored, by a pass and the forced one after
    # it each time the estimates regrow from eps to sqrt(eps), which takes
    # many steps: a few pairs, never most of the steps.
    eigenvalues = np.concatenate([[-1.0], np.linspace(0.0, 1.0, dim - 2),
                                  [1.1]])
    isolated = matrix_with_spectrum(eigenvalues, seed=11)
    for seed in (0, 1):
      eigs = lanczos.lanczos_extreme_eigs(
          dense_matvec(isolated), dim, key=jax.random.PRNGKey(seed),
          tol=1e-12, max_iters=dim)
      steps = eigs.num_matvecs - 2
      self.assertTrue(eigs.converged)
      self.assertBetween(steps, 40, 60)
      self.assertBetween(eigs.num_reorthogonalizations, 2, steps // 4)
      self.assertEqual(int(np.sum(eigs.ritz_values < -0.5)), 1, "ghosts")

  def test_unchecked_core_matches_under_jit(self):
    a = matrix_with_spectrum(np.linspace(-1.0, 2.0, 20), seed=2)
    v0 = jnp.asarray(np.random.default_rng(1).standard_normal(20))
    checked = lanczos.lanczos_tridiagonal(dense_matvec(a), v0, 8)
    traced = jax.jit(lambda v: lanczos.lanczos_tridiagonal_unchecked(
        dense_matvec(a), v, 8))(v0)
    for x, y in zip(checked, traced):
      np.testing.assert_allclose(x, y, rtol=0, atol=1e-13)

  def test_bad_inputs_raise(self):
    a = dense_matvec(np.eye(4))
    with self.assertRaisesRegex(ValueError, r"\(5,\)"):
      lanczos.lanczos_extreme_eigs(a, 5, key=jax.random.PRNGKey(0))
    with self.assertRaisesRegex(ValueError, "max_iters"):
      lanczos.lanczos_extreme_eigs(a, 4, key=jax.random.PRNGKey(0),
                                   max_iters=0)
    with self.assertRaisesRegex(ValueError, "tol"):
      lanczos.lanczos_extreme_eigs(a, 4, key=jax.random.PRNGKey(0), tol=0.0)
    with self.assertRaisesRegex(ValueError, "vector"):
      lanczos.lanczos_tridiagonal(a, jnp.ones((4, 1)), 2)
    with self.assertRaisesRegex(ValueError, "nonzero"):
      lanczos.lanczos_tridiagonal(a, jnp.zeros(4), 2)
    with self.assertRaisesRegex(ValueError, "num_iters"):
      lanczos.lanczos_tridiagonal(a, jnp.ones(4), 0)


if __name__ == "__main__":
  absltest.main()
