"""Tests of lminima.critical.batched.newton_mr and the batched Lanczos
certificates.

References: ``refinement.refine(method="newton_mr")`` and
``certify.certificate`` member by member (tested against closed forms and
dense ``eigh`` in test_refinement.py and test_certify.py), and dense
``numpy.linalg.eigvalsh`` of each member's Hessian.
"""

from absl.testing import absltest
import jax
import jax.numpy as jnp
import numpy as np

import lminima
from lminima.core.models import MLP
from lminima.critical import certify
from lminima.critical.batched import certificates as batched_certificates
from lminima.critical.batched import refine as batched_refine
from lminima.critical.batched import newton_mr as batched_newton_mr
from lminima.linalg import lanczos

from _helpers import gaussian_data
from test_batched_refine import _assert_close_loss


# Seeds whose width-2 members LM refines to grad_tol (the others escape).
CONVERGING = (0, 3, 8, 9)


def _population(width, seeds):
  """Under-parameterised members (P = 6 width + 2 < m d_y = 80) at their
  initial points."""
  x, _ = gaussian_data(m=40, d_x=3, d_y=2, seed=5)
  y = np.sin(2.0 * x[:, :2]) * np.cos(x[:, 2:])
  model = MLP(d_in=3, widths=(width,), d_out=2, activation="tanh")
  return [lminima.Problem.for_module(model, jax.tree_util.tree_map(
      lambda a: jnp.asarray(a, jnp.float64),
      model.init_params(jax.random.PRNGKey(seed))), x, y) for seed in seeds]


def _near_critical(width, seeds, offset=1e-3):
  """Members a small random offset away from their LM end points: Newton-MR
  converges there, so stop reasons and end points are deterministic, not a
  wandering path."""
  problems = _population(width, seeds)
  moved = []
  for seed, (problem, result) in enumerate(zip(
      problems, batched_refine.refine_many(problems, max_iters=200))):
    assert result.converged, (seed, result.stop_reason)
    flat = np.asarray(problem.at(result.params).flat)
    flat = flat + offset * np.random.default_rng(seed).standard_normal(
        flat.shape)
    moved.append(problem.at(problem.unravel(jnp.asarray(flat))))
  return moved


class NewtonMrPopulationTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.problems = _near_critical(2, CONVERGING)

  def test_refine_many_dispatches_on_method(self):
    # One entry for both programs: method="newton_mr" is this program, with
    # max_trials as its Armijo halvings; certificates as certify_many's.
    direct = batched_newton_mr.refine_newton_mr_many(
        self.problems, max_backtracks=7, lanes=2)
    via = batched_refine.refine_many(self.problems, method="newton_mr",
                                     max_trials=7, lanes=2)
    for a, b in zip(direct, via):
      self.assertEqual((a.method, a.stop_reason, a.iters),
                       (b.method, b.stop_reason, b.iters))
      self.assertEqual(a.loss, b.loss)
    results, certs = batched_refine.refine_and_certify_many(
        self.problems, method="newton_mr", lanes=2)
    self.assertEqual(
        [(r.method, r.loss) for r in results],
        [(r.method, r.loss) for r in batched_newton_mr.refine_newton_mr_many(
            self.problems, lanes=2)])
    self.assertEqual(
        [c.verdict for c in certs],
        [c.verdict for c in batched_certificates.certify_many(
            [p.at(r.params) for p, r in zip(self.problems, results)])])
    for call in (batched_refine.refine_many,
                 batched_refine.refine_and_certify_many):
      with self.assertRaisesRegex(ValueError, "method must be one of"):
        call(self.problems, method="newton")

  def test_agrees_with_sequential_newton_mr(self):
    results = batched_newton_mr.refine_newton_mr_many(self.problems, lanes=2)
    for problem, result in zip(self.problems, results):
      reference = lminima.refine(problem, method="newton_mr")
      self.assertEqual(result.method, "newton_mr")
      self.assertEqual(result.stop_reason, reference.stop_reason)
      self.assertEqual(result.stop_reason, "grad_tol")
      self.assertLessEqual(result.grad_norm, 1e-10)
      _assert_close_loss(self, result.loss, reference.loss)
      np.testing.assert_allclose(problem.at(result.params).flat,
                                 problem.at(reference.params).flat,
                                 atol=1e-7)
      self.assertLen(result.grad_norm_history, result.iters + 1)
      self.assertEqual(result.grad_norm_history[0], problem.grad_norm)
      # The reported gradient norm is the refined point's own.
      self.assertAlmostEqual(problem.at(result.params).grad_norm,
                             result.grad_norm, delta=1e-12)

  def test_lanes_do_not_change_converged_results(self):
    one = batched_newton_mr.refine_newton_mr_many(self.problems, lanes=1)
    many = batched_newton_mr.refine_newton_mr_many(self.problems, lanes=4)
    for a, b in zip(one, many):
      self.assertEqual(a.stop_reason, b.stop_reason)
      _assert_close_loss(self, a.loss, b.loss)

  def test_shared_stop_rules(self):
    results = batched_newton_mr.refine_newton_mr_many(
        self.problems[:2], max_iters=1, escape_ratio=None)
    self.assertEqual([r.stop_reason for r in results],
                     ["max_iters", "max_iters"])
    self.assertEqual([r.iters for r in results], [1, 1])

  def test_rejects_bad_input(self):
    with self.assertRaisesRegex(ValueError, "minres_max_iters >= 1"):
      batched_newton_mr.refine_newton_mr_many(self.problems,
                                            minres_max_iters=0)
    other = _population(3, [0])
    with self.assertRaisesRegex(ValueError, "differs from problem 0"):
      batched_newton_mr.refine_newton_mr_many(self.problems[:1] + other)


class LanczosCertificatesTest(absltest.TestCase):

  def test_batched_lanczos_certificates_match_dense_and_sequential(self):
    problems = _near_critical(2, CONVERGING[:3])
    results, certs = batched_newton_mr.refine_and_certify_newton_mr_many(
        problems, dense_max_params=10)
    for problem, result, cert in zip(problems, results, certs):
      end = problem.at(result.params)
      alone = certify.certificate(end, dense_max_params=10)
      truth = np.linalg.eigvalsh(end.dense_hessian())
      self.assertEqual(cert.method, "lanczos")
      self.assertEqual(cert.verdict, alone.verdict)
      scale = np.abs(truth).max()
      for got, want in ((cert.lambda_min, truth[0]),
                        (cert.lambda_max, truth[-1])):
        self.assertAlmostEqual(got, want, delta=1e-10 * scale)
      self.assertAlmostEqual(cert.lambda_min, alone.lambda_min,
                             delta=1e-12 * scale)
      self.assertLessEqual(cert.residual_min, 1e-6 * scale)

  def test_lanes_split_the_population_without_changing_results(self):
    problems = _population(2, range(3))
    split = batched_certificates.extreme_eigs_many(problems, lanes=2)
    whole = batched_certificates.extreme_eigs_many(problems, lanes=3)
    self.assertLen(split, 3)
    for a, b, problem in zip(split, whole, problems):
      truth = np.linalg.eigvalsh(problem.dense_hessian())
      self.assertAlmostEqual(a.lambda_min, b.lambda_min, delta=1e-12)
      self.assertAlmostEqual(a.lambda_min, truth[0],
                             delta=1e-8 * np.abs(truth).max())
    with self.assertRaisesRegex(ValueError, "lanes >= 1"):
      batched_certificates.extreme_eigs_many(problems, lanes=0)

  def test_population_lanczos_equals_single_runs(self):
    rng = np.random.default_rng(0)
    spectra = [np.linspace(-2.0, 5.0, 30), np.linspace(0.5, 1.0, 30),
               np.repeat([1.0, 3.0], 15)]  # the last breaks down at step 2
    mats = []
    for i, spectrum in enumerate(spectra):
      q, _ = np.linalg.qr(rng.standard_normal((30, 30)))
      mats.append((q * spectrum) @ q.T)
    stacked = jnp.asarray(np.stack(mats))
    operator = jax.tree_util.Partial(
        lambda a, v: jnp.einsum("bij,bj->bi", a, v), stacked)
    v0 = jax.random.normal(jax.random.PRNGKey(3), (30,), jnp.float64)
    found = lanczos.extreme_eigs_of_population(
        operator, jnp.tile(v0, (3, 1)), tol=1e-10)
    for a, spectrum, eigs in zip(mats, spectra, found):
      single = lanczos.lanczos_extreme_eigs(
          lambda v, a=jnp.asarray(a): a @ v, 30, key=jax.random.PRNGKey(3),
          tol=1e-10)
      self.assertTrue(eigs.converged)
      self.assertAlmostEqual(eigs.lambda_min, spectrum.min(), places=9)
      self.assertAlmostEqual(eigs.lambda_max, spectrum.max(), places=9)
      self.assertEqual(eigs.num_matvecs, single.num_matvecs)
      self.assertAlmostEqual(eigs.lambda_min, single.lambda_min, places=12)
    self.assertEqual(found[2].num_matvecs, 4)  # two steps, two residuals


if __name__ == "__main__":
  absltest.main()
