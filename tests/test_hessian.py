"""Tests for lminima.core.hessian against independent references.

References: central finite differences of jax.grad and dense products with
the finite-difference-checked dense Hessian.
"""

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

import lminima  # noqa: F401  (enables float64)
from lminima.core import hessian

from _helpers import mlp_problem


class HessianVectorProductTest(parameterized.TestCase):

  @parameterized.parameters(("tanh", True), ("softplus", False),
                            ("sigmoid", True))
  def test_dense_hessian_matches_finite_differences(self, activation, bias):
    params, loss_fn = mlp_problem((4, 3), activation, bias)
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
    params, loss_fn = mlp_problem((5,))
    full = hessian.dense_hessian(loss_fn, params, chunk_size=1000)
    chunked = hessian.dense_hessian(loss_fn, params, chunk_size=3)
    np.testing.assert_allclose(chunked, full, rtol=1e-13, atol=1e-15)

  def test_dense_from_operator_matches_dense_hessian(self):
    params, loss_fn = mlp_problem((4,))
    matvec, dim = hessian.hvp_operator(loss_fn, params)
    np.testing.assert_array_equal(
        hessian.dense_from_operator(matvec, dim, chunk_size=5),
        hessian.dense_hessian(loss_fn, params, chunk_size=5))

  def test_hvp_and_operator_match_dense(self):
    params, loss_fn = mlp_problem((6, 5))
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
    params, _ = mlp_problem((3,))
    flat, unravel = hessian.flatten_params(params)
    self.assertEqual(flat.shape, ((3 * 3 + 3) + (3 * 2 + 2),))
    for a, b in zip(jax.tree_util.tree_leaves(unravel(flat)),
                    jax.tree_util.tree_leaves(params)):
      np.testing.assert_array_equal(a, b)

  def test_bad_inputs_raise(self):
    params, loss_fn = mlp_problem((3,))
    float32_params = jax.tree_util.tree_map(
        lambda a: a.astype(jnp.float32), params)
    with self.assertRaisesRegex(ValueError, "float64"):
      hessian.dense_hessian(loss_fn, float32_params)
    nan_params = jax.tree_util.tree_map(lambda a: a.at[0].set(jnp.nan),
                                        params)
    with self.assertRaisesRegex(ValueError, "NaN"):
      hessian.dense_hessian(loss_fn, nan_params)
    with self.assertRaisesRegex(ValueError, "no array leaves"):
      hessian.dense_hessian(loss_fn, ())
    with self.assertRaisesRegex(ValueError, "chunk_size"):
      hessian.dense_hessian(loss_fn, params, chunk_size=0)
    with self.assertRaisesRegex(ValueError, "structure"):
      hessian.hvp(loss_fn, params, params[:-1])
    with self.assertRaisesRegex(ValueError, "shape"):
      hessian.hvp(loss_fn, params,
                  jax.tree_util.tree_map(lambda a: a[..., :1], params))


class OperatorContractTest(absltest.TestCase):

  def test_as_operator_is_a_pytree_view(self):
    a = jnp.array([[2.0, 1.0], [1.0, 3.0]])
    operator = hessian.as_operator(lambda v: a @ v)
    self.assertIsInstance(operator, jax.tree_util.Partial)
    self.assertIs(hessian.as_operator(operator), operator)
    np.testing.assert_array_equal(
        jax.jit(lambda op, v: op(v))(operator, jnp.ones(2)), [3.0, 4.0])

  def test_check_operator(self):
    eye = jnp.eye(4)
    hessian.check_operator(lambda v: eye @ v, 4, jnp.float64)
    with self.assertRaisesRegex(ValueError, r"\(5,\)"):
      hessian.check_operator(lambda v: eye @ v, 5, jnp.float64)
    with self.assertRaisesRegex(ValueError, "to \\(4,\\), got"):
      hessian.check_operator(lambda v: jnp.concatenate([v, v]), 4,
                             jnp.float64)
    with self.assertRaisesRegex(ValueError, "dim must be >= 1"):
      hessian.check_operator(lambda v: v, 0, jnp.float64)


if __name__ == "__main__":
  absltest.main()
