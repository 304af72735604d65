"""Tests for lminima.linalg.minres against numpy.linalg.solve and lstsq, and
SciPy's minres."""

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse.linalg
from absl.testing import absltest
from absl.testing import parameterized

import lminima  # noqa: F401  (enables float64)
from lminima.linalg.minres import STOPS, minres

from _helpers import dense_matvec, matrix_with_spectrum

N = 40


def _spectrum(kind, rng):
  if kind == "positive_definite":
    return rng.uniform(0.1, 10.0, N)
  if kind == "indefinite":
    return np.concatenate([rng.uniform(-5.0, -0.2, N // 2),
                           rng.uniform(0.2, 5.0, N - N // 2)])
  return np.concatenate([np.zeros(10), rng.uniform(-5.0, 5.0, N - 10)])


class MinresTest(parameterized.TestCase):

  @parameterized.parameters("positive_definite", "indefinite")
  def test_solves_nonsingular_systems(self, kind):
    rng = np.random.default_rng(1)
    a = matrix_with_spectrum(_spectrum(kind, rng), seed=2)
    b = rng.standard_normal(N)
    result = jax.jit(lambda b: minres(dense_matvec(a), b, rtol=1e-12,
                                      max_iters=200))(jnp.asarray(b))
    self.assertEqual(STOPS[int(result.stop) - 1], "solved")
    np.testing.assert_allclose(result.x, np.linalg.solve(a, b), rtol=1e-9)
    # The tracked residual norm is the true one.
    self.assertAlmostEqual(float(result.residual_norm),
                           np.linalg.norm(b - a @ np.asarray(result.x)),
                           delta=1e-12 * np.linalg.norm(b))

  def test_consistent_singular_system_gives_minimum_norm_solution(self):
    rng = np.random.default_rng(3)
    a = matrix_with_spectrum(_spectrum("singular", rng), seed=4)
    b = a @ rng.standard_normal(N)  # in the range of a
    result = minres(dense_matvec(a), jnp.asarray(b), rtol=1e-12,
                    max_iters=200)
    self.assertEqual(int(result.stop), 1)
    np.testing.assert_allclose(result.x, np.linalg.lstsq(a, b, rcond=None)[0],
                               rtol=1e-9, atol=1e-10)

  def test_incompatible_system_stops_at_a_least_squares_solution(self):
    rng = np.random.default_rng(5)
    a = matrix_with_spectrum(_spectrum("singular", rng), seed=6)
    b = rng.standard_normal(N)  # has a component outside the range
    result = minres(dense_matvec(a), jnp.asarray(b), rtol=1e-6,
                    max_iters=200)
    self.assertEqual(STOPS[int(result.stop) - 1], "least_squares")
    residual = b - a @ np.asarray(result.x)
    # ||A r|| / (||A|| ||r||): the normal equations hold to about rtol.
    self.assertLess(np.linalg.norm(a @ residual)
                    / (np.linalg.norm(a, 2) * np.linalg.norm(residual)), 1e-5)
    best = b - a @ np.linalg.lstsq(a, b, rcond=None)[0]
    np.testing.assert_allclose(np.linalg.norm(residual), np.linalg.norm(best),
                               rtol=1e-9)

  def test_vmapped_lanes_stop_on_their_own_tolerance(self):
    rng = np.random.default_rng(7)
    a = matrix_with_spectrum(_spectrum("positive_definite", rng), seed=8)
    bs = rng.standard_normal((3, N))
    rtols = jnp.asarray([1e-2, 1e-6, 1e-12])
    results = jax.vmap(lambda b, t: minres(dense_matvec(a), b, rtol=t,
                                           max_iters=200))(jnp.asarray(bs),
                                                           rtols)
    iters = np.asarray(results.iters)
    self.assertTrue(np.all(np.diff(iters) > 0), iters)
    for i in range(3):
      alone = minres(dense_matvec(a), jnp.asarray(bs[i]), rtol=rtols[i],
                     max_iters=200)
      self.assertEqual(int(alone.iters), iters[i])
      # Batched and single matvecs round differently.
      np.testing.assert_allclose(results.x[i], alone.x, rtol=1e-8)
      # Stop 1: ||r|| <= rtol ||A|| ||x||, with ||A|| estimated below ||A||_F.
      self.assertEqual(int(results.stop[i]), 1)
      x = np.asarray(results.x[i])
      self.assertLessEqual(np.linalg.norm(bs[i] - a @ x), float(rtols[i])
                           * np.linalg.norm(a) * np.linalg.norm(x))

  def test_iteration_counts_are_scipys(self):
    # Both stop at the first k with ||r_k|| <= rtol ||A|| ||x_k|| (SciPy's
    # test1), ||r_k|| = phibar_k and ||A|| = sqrt(tnorm2), the Frobenius
    # norm of T_k, accumulated by the same recurrence; SciPy's other stops
    # (cond(A) >= 0.1 / eps, eps ||A|| ||x|| >= ||b||, rtol below eps) and
    # the least-squares test 2 stay far away on these nonsingular systems.
    # The counts are equal in exact arithmetic; the two implementations
    # round differently (JAX's products and norms vs NumPy's), which may
    # move a test that lands on its threshold by one step. A test on ||b||
    # instead of ||A|| ||x|| (here 5-12 times smaller) runs longer.
    n = 100
    solve = jax.jit(lambda a, b, rtol: minres(lambda v: a @ v, b, rtol=rtol,
                                              max_iters=500))
    for kind, rtols in (("positive_definite", (1e-3, 1e-6, 1e-9)),
                        ("indefinite", (1e-3, 1e-6))):
      for seed in (0, 1):
        rng = np.random.default_rng(seed)
        spectrum = (rng.uniform(0.1, 10.0, n) if kind == "positive_definite"
                    else np.concatenate([rng.uniform(-5.0, -0.2, n // 2),
                                         rng.uniform(0.2, 5.0, n // 2)]))
        a = matrix_with_spectrum(spectrum, seed=seed + 10)
        b = rng.standard_normal(n)
        for rtol in rtols:
          result = solve(jnp.asarray(a), jnp.asarray(b), rtol)
          self.assertEqual(int(result.stop), 1)
          steps = []  # one iterate x_k a step
          _, info = scipy.sparse.linalg.minres(a, b, rtol=rtol, maxiter=500,
                                               callback=steps.append)
          self.assertEqual(info, 0)
          self.assertBetween(int(result.iters), len(steps) - 1,
                             len(steps) + 1, (kind, seed, rtol))

  def test_cap_and_zero_right_hand_side(self):
    a = matrix_with_spectrum(np.linspace(1.0, 100.0, N), seed=9)
    capped = minres(dense_matvec(a), jnp.ones(N), rtol=1e-14, max_iters=3)
    self.assertEqual((int(capped.iters), STOPS[int(capped.stop) - 1]),
                     (3, "max_iters"))
    zero = minres(dense_matvec(a), jnp.zeros(N))
    self.assertEqual((int(zero.iters), int(zero.stop)), (0, 1))
    np.testing.assert_array_equal(zero.x, np.zeros(N))


if __name__ == "__main__":
  absltest.main()
