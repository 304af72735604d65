"""Tests of lminima.linalg.projections: ranks and projections against numpy and
exact SVDs.

The tolerance cases use matrices whose singular values and vectors are exact
in float64 (Hadamard columns, scaled), with one singular value at 1e-11
relative: between numpy's default cut-off max(n, p) * eps ~ 4e-15 and 1e-8,
so that the rank and the projection depend on the tolerance.
"""

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np
import scipy.linalg

from lminima.linalg import projections

EPS = np.finfo(np.float64).eps


def _hadamard_basis(m=16):
  """An orthogonal matrix with exact float64 entries (+-1/4 for m = 16)."""
  return scipy.linalg.hadamard(m).astype(np.float64) / np.sqrt(m)


def _designed(singular_values, m=16, permutation=None):
  """M = U[:, :p] diag(s) P with exactly orthogonal columns, and U."""
  u = _hadamard_basis(m)
  matrix = u[:, :len(singular_values)] * np.asarray(singular_values)
  if permutation is not None:
    matrix = matrix[:, permutation]
  return matrix, u


class DefaultToleranceTest(parameterized.TestCase):

  @parameterized.parameters((16, 3), (3, 16), (7, 7))
  def test_is_numpy_matrix_rank_default(self, n, p):
    self.assertEqual(projections.default_rank_tol((n, p)), max(n, p) * EPS)

  @parameterized.parameters(1, 3, 5)
  def test_rank_of_random_low_rank_matrices_matches_numpy(self, rank):
    rng = np.random.default_rng(rank)
    matrix = rng.standard_normal((12, rank)) @ rng.standard_normal((rank, 9))
    y = rng.standard_normal((12, 2))
    out = projections.project(matrix, y, scale=0.25)
    self.assertEqual(out.rank, np.linalg.matrix_rank(matrix))
    self.assertEqual(out.rank, rank)
    self.assertEqual(out.rank_tol, 12 * EPS)
    coef = np.linalg.lstsq(matrix, y, rcond=None)[0]
    np.testing.assert_allclose(out.fitted, matrix @ coef, atol=1e-12)
    self.assertAlmostEqual(out.value, 0.25 * np.sum((y - matrix @ coef) ** 2),
                           delta=1e-12)


class NearSingularTest(parameterized.TestCase):
  """M = U diag(1, 0.5, 1e-11), Y = U a: P_N[M] Y is known exactly."""

  SINGULAR_VALUES = (1.0, 0.5, 1e-11)

  def setUp(self):
    super().setUp()
    self.matrix, self.u = _designed(self.SINGULAR_VALUES,
                                    permutation=[2, 0, 1])
    self.a = np.linspace(-1.0, 1.2, 16)
    self.a[0] = 2.0  # the coordinate along the 1e-11 direction
    self.y = self.u[:, [2, 0, 1] + list(range(3, 16))] @ self.a
    # Coordinates of y in U: y = U b, b = a reordered.
    self.b = self.u.T @ self.y
    np.testing.assert_allclose(np.linalg.svd(self.matrix, compute_uv=False),
                               self.SINGULAR_VALUES, rtol=1e-15)

  def expected(self, rank, scale):
    """scale * ||P_N Y||^2 keeping the ``rank`` largest directions."""
    return scale * np.sum(self.b[rank:] ** 2)

  def test_default_keeps_the_tiny_direction_like_numpy(self):
    out = projections.project(self.matrix, self.y, scale=0.5)
    self.assertEqual(np.linalg.matrix_rank(self.matrix), 3)
    self.assertEqual(out.rank, 3)
    self.assertEqual(out.rank_tol, 16 * EPS)
    self.assertAlmostEqual(out.value, self.expected(3, 0.5), delta=1e-14)
    np.testing.assert_allclose(out.fitted, self.u[:, :3] @ self.b[:3],
                               atol=1e-14)
    coef = np.linalg.lstsq(self.matrix, self.y, rcond=None)[0]
    self.assertAlmostEqual(
        out.value, 0.5 * np.sum((self.y - self.matrix @ coef) ** 2),
        delta=1e-12)
    basis, tol = projections.column_basis(self.matrix)
    self.assertEqual(basis.shape, (16, 3))
    self.assertEqual(tol, 16 * EPS)
    np.testing.assert_allclose(basis @ basis.T,
                               self.u[:, :3] @ self.u[:, :3].T, atol=1e-14)

  @parameterized.parameters(1e-8, 16 * EPS * 1e6, 1e-2)
  def test_larger_tolerance_drops_it(self, rank_tol):
    # 16 eps * 1e6 ~ 3.6e-9 already exceeds 1e-11.
    out = projections.project(self.matrix, self.y, scale=0.5, rank_tol=rank_tol)
    self.assertEqual(np.linalg.matrix_rank(self.matrix, rtol=rank_tol), 2)
    self.assertEqual(out.rank, 2)
    self.assertEqual(out.rank_tol, rank_tol)
    self.assertAlmostEqual(out.value, self.expected(2, 0.5), delta=1e-14)
    # Exactly the squared coordinate along the dropped direction more.
    default = projections.project(self.matrix, self.y, scale=0.5)
    self.assertAlmostEqual(out.value - default.value, 0.5 * self.b[2] ** 2,
                           delta=1e-14)
    self.assertAlmostEqual(self.b[2], 2.0, delta=1e-14)
    coef = np.linalg.lstsq(self.matrix, self.y, rcond=rank_tol)[0]
    self.assertAlmostEqual(
        out.value, 0.5 * np.sum((self.y - self.matrix @ coef) ** 2),
        delta=1e-12)
    basis, tol = projections.column_basis(self.matrix, rank_tol)
    self.assertEqual(basis.shape, (16, 2))
    self.assertEqual(tol, rank_tol)
    np.testing.assert_allclose(basis @ basis.T,
                               self.u[:, :2] @ self.u[:, :2].T, atol=1e-14)

  def test_a_tolerance_below_the_gap_to_the_next_value(self):
    out = projections.project(self.matrix, self.y, rank_tol=0.4)
    self.assertEqual(out.rank, 2)
    out = projections.project(self.matrix, self.y, rank_tol=0.6)
    self.assertEqual(out.rank, 1)
    self.assertEqual(np.linalg.matrix_rank(self.matrix, rtol=0.6), 1)
    self.assertAlmostEqual(out.value, self.expected(1, 1.0), delta=1e-14)

  def test_matrix_targets_project_columnwise(self):
    y = np.stack([self.y, 3 * self.y[::-1]], axis=1)
    for rank_tol, rank in ((None, 3), (1e-8, 2)):
      out = projections.project(self.matrix, y, rank_tol=rank_tol)
      coords = self.u.T @ y
      self.assertEqual(out.rank, rank)
      self.assertAlmostEqual(out.value, np.sum(coords[rank:] ** 2),
                             delta=1e-13)
      self.assertEqual(out.fitted.shape, y.shape)


class EdgeCaseTest(absltest.TestCase):

  def test_zero_matrix_has_rank_zero(self):
    y = np.arange(4.0)
    out = projections.project(np.zeros((4, 2)), y, scale=0.5)
    self.assertEqual(out.rank, 0)
    self.assertEqual(out.value, 0.5 * np.sum(y ** 2))
    np.testing.assert_array_equal(out.fitted, np.zeros(4))

  def test_no_columns(self):
    basis, _ = projections.column_basis(np.zeros((4, 0)))
    self.assertEqual(basis.shape, (4, 0))

  def test_bad_inputs(self):
    with self.assertRaisesRegex(ValueError, "rows"):
      projections.project(np.eye(3), np.ones(4))
    with self.assertRaisesRegex(ValueError, "NaN or inf"):
      projections.project(np.eye(3), np.array([1.0, np.nan, 0.0]))
    with self.assertRaisesRegex(ValueError, "2-D"):
      projections.project(np.ones(3), np.ones(3))


if __name__ == "__main__":
  absltest.main()
