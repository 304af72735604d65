"""Tests of lminima.critical.batched (refine, certificates, lanes) against
the sequential path.

The reference is ``refinement.refine(method="lm")`` and
``certify.certificate`` member by member (themselves tested against closed
forms in test_refinement.py and test_certify.py): the batched program must
reach the same stop reasons and refined losses (float64 roundoff apart) and
the same certificates.
"""

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

import lminima
from lminima.core.models import MLP
from lminima.critical.batched import certificates as batched_certificates
from lminima.critical.batched import refine as batched_refine
from lminima.critical.batched import lanes

from _helpers import gaussian_data


def _population(depth, width, seeds, activation="tanh", scale=1.0):
  """Problems of one shape at the initial points of ``seeds``.

  The targets are a tanh teacher of the same shape plus noise, so that
  members end in the mix the sweep sees: converged (at different
  iterations), at max_iters, escaping.
  """
  x = gaussian_data(m=12, d_x=3, d_y=2, seed=7)[0]
  teacher = MLP(d_in=3, widths=(width,) * depth, d_out=2, activation="tanh")
  y = np.asarray(teacher.apply(teacher.init_params(jax.random.PRNGKey(99)),
                               x))
  y = y + 0.05 * np.random.default_rng(0).standard_normal(y.shape)
  model = MLP(d_in=3, widths=(width,) * depth, d_out=2,
              activation=activation)
  return [lminima.Problem.for_module(model, jax.tree_util.tree_map(
      lambda a: scale * jnp.asarray(a, jnp.float64),
      model.init_params(jax.random.PRNGKey(seed))), x, y) for seed in seeds]


def _assert_close_loss(test, batched, sequential):
  # Interpolating minima have L ~ 1e-25: there only an absolute bound means
  # anything; elsewhere the relative 1e-9 of the task.
  test.assertLessEqual(abs(batched - sequential),
                       1e-9 * abs(sequential) + 1e-20)


class AgreementTest(parameterized.TestCase):

  @parameterized.parameters((1, 2), (1, 8), (2, 3))
  def test_refine_and_certify_agree_with_sequential(self, depth, width):
    problems = _population(depth, width, seeds=range(5))
    results, certs = batched_refine.refine_and_certify_many(problems,
                                                          max_iters=60)
    alone = batched_certificates.certify_many([p.at(r.params) for p, r in
                                       zip(problems, results)])
    for problem, result, cert, cert_alone in zip(problems, results, certs,
                                                 alone):
      reference = lminima.refine(problem, method="lm", max_iters=60)
      self.assertEqual(result.stop_reason, reference.stop_reason)
      self.assertLen(result.grad_norm_history, result.iters + 1)
      self.assertLen(result.param_norm_history, result.iters + 1)
      self.assertEqual(result.loss_history[-1], result.loss)
      self.assertAlmostEqual(result.param_norm_start,
                             reference.param_norm_start, places=12)
      if reference.converged:
        self.assertEqual(result.iters, reference.iters)
        _assert_close_loss(self, result.loss, reference.loss)
        np.testing.assert_allclose(result.grad_norm_history[:3],
                                   reference.grad_norm_history[:3],
                                   rtol=1e-8)
      expected = lminima.certificate(problem.at(reference.params))
      for got in (cert, cert_alone):
        self.assertEqual((got.verdict, got.method, got.n_params),
                         (expected.verdict, expected.method,
                          expected.n_params))
        # grad_tol carries ||H|| from the batched eigh: equal to roundoff.
        np.testing.assert_allclose(got.grad_tol, expected.grad_tol,
                                   rtol=1e-5)
        if reference.converged:
          self.assertEqual((got.index, got.n_flat),
                           (expected.index, expected.n_flat))
          scale = max(abs(expected.lambda_max), 1.0)
          self.assertAlmostEqual(got.lambda_min / scale,
                                 expected.lambda_min / scale, places=8)
          self.assertAlmostEqual(got.lambda_max / scale,
                                 expected.lambda_max / scale, places=8)

  def test_certify_many_equals_certificate_at_any_points(self):
    problems = _population(1, 3, seeds=range(3))
    for got, problem in zip(batched_certificates.certify_many(problems),
                            problems):
      expected = lminima.certificate(problem)
      self.assertEqual(got.verdict, expected.verdict)
      self.assertEqual(got.loss, expected.loss)  # the problem's own values
      self.assertEqual(got.grad_norm, expected.grad_norm)
      self.assertEqual((got.index, got.n_flat),
                       (expected.index, expected.n_flat))
      np.testing.assert_allclose(
          [got.lambda_min, got.lambda_max, got.eig_tol],
          [expected.lambda_min, expected.lambda_max, expected.eig_tol],
          rtol=1e-9, atol=1e-13)


class ProgramTest(parameterized.TestCase):

  def test_one_compilation_per_shape(self):
    problems = _population(1, 5, seeds=range(5))
    before = batched_refine._lm_population._cache_size()
    batched_refine.refine_many(problems[:3], max_iters=7)
    self.assertEqual(batched_refine._lm_population._cache_size(), before + 1)
    # Other points, same shapes and size: nothing recompiles.
    batched_refine.refine_many(problems[2:], max_iters=7)
    self.assertEqual(batched_refine._lm_population._cache_size(), before + 1)
    spectra = batched_certificates._dense_spectra._cache_size()
    batched_certificates.certify_many(problems[:3])
    batched_certificates.certify_many(problems[1:4])
    self.assertEqual(batched_certificates._dense_spectra._cache_size(),
                     spectra + 1)

  @parameterized.parameters(1, 2, 5)
  def test_members_stopping_at_different_iterations(self, lanes):
    # Member 0 starts at a converged point (0 iterations); the others run
    # for different numbers of iterations. With fewer lanes than members a
    # lane that finishes takes the next member; results must not depend on
    # the number of lanes.
    problems = _population(1, 8, seeds=range(4))
    start = lminima.refine(problems[0], max_iters=100)
    self.assertTrue(start.converged)
    problems[0] = problems[0].at(start.params)
    results = batched_refine.refine_many(problems, max_iters=100, lanes=lanes)
    self.assertEqual(results[0].iters, 0)
    self.assertEqual(results[0].stop_reason, "grad_tol")
    self.assertGreater(len({r.iters for r in results}), 2)
    for problem, result in zip(problems, results):
      reference = lminima.refine(problem, max_iters=100)
      self.assertEqual((result.stop_reason, result.iters),
                       (reference.stop_reason, reference.iters))
      _assert_close_loss(self, result.loss, reference.loss)

  def test_non_finite_and_escaping_members_stay_apart(self):
    # A linear net scaled by 1e160 overflows (L = inf): non_finite at once,
    # its NaN Hessian must not leak into the other lanes. A tight
    # escape_ratio makes the far-from-minimum members escape.
    problems = _population(1, 2, seeds=range(3), activation="identity")
    problems[1] = _population(1, 2, seeds=[1], activation="identity",
                              scale=1e160)[0]
    for escape_ratio in (5.0, 1.05):
      results, certs = batched_refine.refine_and_certify_many(
          problems, max_iters=40, escape_ratio=escape_ratio)
      self.assertEqual(results[1].stop_reason, "non_finite")
      self.assertEqual(certs[1].verdict, "not_critical")
      self.assertTrue(np.isnan(certs[1].lambda_min))
      for problem, result in zip(problems, results):
        reference = lminima.refine(problem, max_iters=40,
                                   escape_ratio=escape_ratio)
        self.assertEqual(result.stop_reason, reference.stop_reason)
        if reference.converged:
          _assert_close_loss(self, result.loss, reference.loss)
      if escape_ratio < 2:
        self.assertIn("escaping", [r.stop_reason for r in results])

  def test_mixed_shapes_are_refused_in_one_line(self):
    problems = _population(1, 2, seeds=[0]) + _population(1, 3, seeds=[0])
    for call in (batched_refine.refine_many, batched_certificates.certify_many):
      with self.assertRaisesRegex(ValueError, "differs from problem 0") as cm:
        call(problems)
      self.assertNotIn("\n", str(cm.exception))
    self.assertEqual(lanes.group_by_shape(problems), [[0], [1]])
    with self.assertRaisesRegex(ValueError, "no problems"):
      batched_refine.refine_many([])


if __name__ == "__main__":
  absltest.main()
