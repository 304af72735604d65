"""lminima.critical.outcomes.decide_member and the certificate's descent probe:
no false minimum at any loss scale, and genuine minima still certified.

Every "not a minimum" below is confirmed by an independent reference that
goes lower (the model's loss written again in jax.numpy, minimized by
SciPy's L-BFGS-B); every "minimum" by one that cannot (the same L-BFGS-B
lowers it by less than the stated tolerance), or by a closed form.
"""

import dataclasses
from unittest import mock

from absl.testing import absltest
import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize

import lminima
from lminima.core.models import MLP
from lminima.core.tolerances import DEFAULT, Tolerances
from lminima.critical import certify
from lminima.critical import escape
from lminima.critical import outcomes as outcomes_lib
from lminima.critical import refinement
from lminima.study import claims

from _helpers import flax_variables, gaussian_data


def _saturating_problem(w=1.0):
  """One tanh unit fitting sign(x): L decreases forever as w grows (inf 0)."""
  x = np.linspace(-1, 1, 8)[:, None]
  return lminima.Problem(lambda p, x: jnp.tanh(x @ p["w"]),
                         {"w": np.full((1, 1), w)}, x, np.sign(x))


def _far_minimum_problem():
  """Least squares whose unique minimum w* = 100 is far from the start 1."""
  x = np.linspace(0.1, 1.0, 6)[:, None]
  return lminima.Problem(lambda p, x: x @ p["w"], {"w": np.ones((1, 1))},
                         x, 100.0 * x + 0.01 * np.cos(7 * x))


def _reference_lowest(loss_fn, flat, iters=300):
  """The lowest loss independent L-BFGS-B reaches from ``flat``."""
  value_and_grad = jax.jit(jax.value_and_grad(loss_fn))

  def fun(v):
    value, grad = value_and_grad(jnp.asarray(v))
    return float(value), np.asarray(grad, np.float64)
  result = scipy.optimize.minimize(
      fun, np.asarray(flat, np.float64), jac=True, method="L-BFGS-B",
      options={"maxiter": iters, "gtol": 0.0, "ftol": 0.0})
  return float(result.fun)


def _mlp_loss(x, y, widths):
  """c ||f(theta; X) - Y||^2 of a tanh MLP with biases, flat theta in
  lminima's ravel order (layer_1 bias, kernel, layer_2 bias, kernel, ...),
  written without lminima."""
  dims = [x.shape[1], *widths, y.shape[1]]

  def loss(flat):
    h, at = jnp.asarray(x), 0
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
      bias = flat[at:at + b]
      kernel = flat[at + b:at + b + a * b].reshape(a, b)
      at += a * b + b
      h = h @ kernel + bias
      if i < len(dims) - 2:
        h = jnp.tanh(h)
    return jnp.sum((h - y) ** 2) / (2 * x.shape[0])
  return loss


class FalseMinimaTest(absltest.TestCase):
  """Points that an absolute gradient test certified, which are not minima."""

  def test_saturating_unit_with_tiny_gradient_does_not_certify(self):
    # w = 60: L ~ 6e-16 and ||g|| ~ 4e-16, far below the old absolute
    # threshold 1e-8, yet L keeps falling as w grows.
    problem = _saturating_problem(60.0)
    self.assertLess(problem.grad_norm, 1e-10)
    self.assertGreater(problem.loss, 0.0)
    cert = lminima.certificate(problem)
    self.assertNotEqual(cert.verdict, "local_min")
    # The reference: L at a larger w is lower.
    self.assertLess(problem.at({"w": np.full((1, 1), 61.0)}).loss,
                    problem.loss)
    decision = outcomes_lib.decide_member(problem, max_iters=20, fate_iters=60)
    self.assertEqual(decision.outcome, "escaping", decision.reason)
    self.assertLess(decision.loss_end, problem.loss)
    self.assertIn("L_inf <=", decision.reason)

  def test_relatively_critical_escaping_point_is_refuted_by_the_probe(self):
    # A 2-3-1 tanh net refined without the escape stop reaches a (lenient)
    # relative gradient test at finite loss while ||theta|| grows: the
    # probe goes lower, and so does independent L-BFGS-B.
    rng = np.random.default_rng(0)
    x = rng.standard_normal((30, 2))
    y = np.sin(2 * x[:, :1]) + 0.3 * rng.standard_normal((30, 1))
    model = MLP(d_in=2, widths=(3,), d_out=1)
    problem = lminima.Problem.for_module(
        model, model.init_params(jax.random.PRNGKey(0)), x, y)
    lenient = Tolerances(grad_rtol=1e-7)
    refined = lminima.refine(problem, tol=lenient, max_iters=300,
                             escape_ratio=None)
    self.assertTrue(refined.converged)
    point = problem.at(refined.params)
    cert = lminima.certificate(point, tol=lenient)
    self.assertEqual(cert.verdict, "not_minimum")
    self.assertGreater(cert.probe.decrease, DEFAULT.descent_rtol)
    lowest = _reference_lowest(_mlp_loss(x, y, (3,)), point.flat)
    self.assertGreater((point.loss - lowest) / point.loss,
                       DEFAULT.descent_rtol)
    decision = outcomes_lib.decide_member(problem)
    self.assertNotEqual(decision.outcome, "local_min", decision.reason)

  def test_undecided_member_is_never_local_min(self):
    problem = _saturating_problem()
    decision = outcomes_lib.decide_member(problem, max_iters=2, fate_iters=0)
    self.assertEqual(decision.outcome, "undecided")
    self.assertIn("fate_iters=0", decision.reason)
    row = decision.to_row()
    self.assertNotIn("verdict", row)
    self.assertEqual(claims.outcome(row), "undecided")
    self.assertEqual(claims.certified([dict(row, loss_refined=0.1)]), [])

  def test_too_few_iterations_is_undecided_with_the_reason(self):
    decision = outcomes_lib.decide_member(_saturating_problem(), max_iters=1,
                                      fate_iters=1)
    self.assertEqual(decision.outcome, "undecided")
    self.assertIn("grew only", decision.reason)
    self.assertEqual(decision.iters, 2)  # one of refinement, one more


def _plateau_problem(w):
  """_saturating_problem with one more sample at x = 0, target 1, which no w
  fits: L falls toward 1/18 as w grows."""
  x = np.concatenate([np.linspace(-1, 1, 8), [0.0]])[:, None]
  y = np.concatenate([np.sign(x[:8]), [[1.0]]])
  return lminima.Problem(lambda p, x: jnp.tanh(x @ p["w"]),
                         {"w": np.full((1, 1), w)}, x, y)


class SlowEscapeTest(absltest.TestCase):
  """decide_member with the slow-escape test (lminima.critical.escape)."""

  def test_lm_converging_to_a_quartic_minimum_is_not_an_escape(self):
    # L = ((w - 3)^4 + 1) / 4, a degenerate minimum at w = 3 approached
    # from w = 1.4, so ||theta|| grows 2.1x while L falls to 1/4.
    x, y = np.array([[1.0], [0.0]]), np.array([[0.0], [1.0]])
    problem = lminima.Problem(lambda p, x: x * (p["w"] - 3.0) ** 2,
                              {"w": np.full((1, 1), 1.4)}, x, y)
    run = lminima.refine(problem, max_iters=200, escape_ratio=None,
                         stop_on_grad=False)
    self.assertGreater(len(run.loss_history), 40)
    self.assertIsNone(escape.gap_tracking(
        run.loss_history, run.grad_norm_history, run.param_norm_history,
        DEFAULT))
    decision = outcomes_lib.decide_member(problem)
    self.assertEqual(decision.outcome, "local_min", decision.reason)
    self.assertAlmostEqual(decision.loss_end, 0.25, delta=1e-12)

  def test_decides_the_escape_the_growth_rule_cannot(self):
    # Newton-like steps grow w from 20 to about 69 in 30 iterations; with
    # growth=100 only the slow-escape test can call that an escape.
    tol = Tolerances(growth=100.0)
    decision = outcomes_lib.decide_member(_saturating_problem(20.0), tol=tol,
                                          max_iters=5, fate_iters=25)
    self.assertEqual(decision.outcome, "escaping", decision.reason)
    self.assertIn("a slow escape", decision.reason)
    self.assertLess(decision.param_norm_end, 100 * decision.param_norm_start)
    self.assertLess(decision.asymptotic_loss, decision.loss_end / 10)
    # The reference: L falls further at a larger w.
    end_w = decision.param_norm_end
    self.assertLess(_saturating_problem(end_w + 1.0).loss, decision.loss_end)
    # Asking for a fall no path can show leaves it undecided.
    decision = outcomes_lib.decide_member(
        _saturating_problem(20.0), max_iters=5, fate_iters=25,
        tol=dataclasses.replace(tol, escape_fall=1e30))
    self.assertEqual(decision.outcome, "undecided", decision.reason)

  def test_the_path_stops_where_the_escape_is_seen(self):
    # The continuation's budget would take w past 300; the slow-escape test,
    # run every refinement.STOP_WHEN_EVERY iterations, stops it early.
    decision = outcomes_lib.decide_member(
        _saturating_problem(20.0), tol=Tolerances(growth=100.0),
        max_iters=5, fate_iters=200)
    self.assertEqual(decision.outcome, "escaping", decision.reason)
    self.assertIn("a slow escape", decision.reason)
    self.assertLess(decision.iters, 60)
    self.assertEqual((decision.iters - decision.refined.iters)
                     % refinement.STOP_WHEN_EVERY, 0)

  def test_a_minimum_only_the_probe_found_on_an_escape_is_an_escape(self):
    # A lenient gradient test lets refinement stop on the plateau's slope
    # (L - 1/18 about 8e-6, after 9 Newton-like steps); a certificate that
    # calls it local_min by its probe alone (mocked: in 1-D the second-order
    # proof would decide) gives way to the path, which tracks the approach
    # to 1/18. The path is short, so the test asks for a shorter window and
    # a smaller fall than the defaults.
    tol = Tolerances(grad_rtol=1e-2, escape_points=3, escape_fall=30.0)
    real = certify.certificate

    def probe_only(point, **options):
      cert = real(point, **options)
      if cert.verdict == "not_minimum":
        cert = dataclasses.replace(cert, verdict="local_min", proof=False)
      return dataclasses.replace(cert, proof=False)
    problem = _plateau_problem(4.0)
    with mock.patch.object(outcomes_lib.certify, "certificate", probe_only):
      decision = outcomes_lib.decide_member(problem, tol=tol, max_iters=60,
                                            fate_iters=6)
    self.assertTrue(decision.refined.converged)
    # Continued from the probe's lowest point, it escapes (w grows past 70).
    self.assertEqual(decision.outcome, "escaping", decision.reason)
    # The reference: the point the probe passed is not a minimum.
    stopped = float(decision.refined.params["w"][0, 0])
    self.assertLess(_plateau_problem(stopped + 1.0).loss,
                    _plateau_problem(stopped).loss)


class GenuineMinimaTest(absltest.TestCase):
  """Known minima still certify, each checked against a reference."""

  def test_nondegenerate_minimum_at_positive_loss_is_proven(self):
    # Least squares far from the start: refinement stops it as escaping,
    # the continuation reaches the lstsq solution, proven there.
    problem = _far_minimum_problem()
    decision = outcomes_lib.decide_member(problem)
    self.assertEqual(decision.outcome, "local_min", decision.reason)
    x, y = np.asarray(problem.x), np.asarray(problem.y)
    w = np.linalg.lstsq(x, y, rcond=None)[0]
    np.testing.assert_allclose(decision.params["w"], w, rtol=1e-10)
    self.assertTrue(decision.certificate.proof)
    self.assertIsNone(decision.certificate.probe)

  def test_tanh_minimum_at_positive_loss_survives_independent_lbfgs(self):
    x, y = gaussian_data(m=40, d_x=2, d_y=1, seed=3)
    y = np.tanh(x[:, :1] - x[:, 1:]) + 0.5 * np.cos(3 * x[:, :1])
    model = MLP(d_in=2, widths=(1,), d_out=1)
    problem = lminima.Problem.for_module(
        model, model.init_params(jax.random.PRNGKey(1)), x, y)
    decision = outcomes_lib.decide_member(problem)
    self.assertEqual(decision.outcome, "local_min", decision.reason)
    point = problem.at(decision.params)
    self.assertGreater(point.loss, 1e-3)
    lowest = _reference_lowest(_mlp_loss(x, y, (1,)), point.flat)
    self.assertLessEqual((point.loss - lowest) / point.loss,
                         DEFAULT.descent_rtol)
    self.assertGreater(np.linalg.eigvalsh(point.dense_hessian())[0], 0)

  def test_degenerate_minimum_with_a_continuous_symmetry_certifies(self):
    # Deep linear net X W1 W2 at W1 = W*, W2 = I: the global minimum
    # L*_linear > 0, with the GL(2) symmetry W1 A, A^-1 W2 (4 flat
    # directions). No proof (lambda_min = 0): the probe decides, and moving
    # along the symmetry does not lower L.
    x, y = gaussian_data(m=12, d_x=3, d_y=2, seed=5)
    w_star = np.linalg.lstsq(x, y, rcond=None)[0]
    model = MLP(d_in=3, widths=(2,), d_out=2, activation="identity",
                bias=False)
    problem = lminima.Problem.for_module(
        model, flax_variables({"kernel": w_star}, {"kernel": np.eye(2)}),
        x, y)
    optimum = np.sum((x @ w_star - y) ** 2) / 24
    np.testing.assert_allclose(problem.loss, optimum, rtol=1e-12)
    cert = lminima.certificate(problem)
    self.assertEqual(cert.verdict, "local_min")
    self.assertFalse(cert.proof)
    self.assertEqual(cert.n_flat, 4)
    self.assertLessEqual(cert.probe.decrease, DEFAULT.descent_rtol)

  def test_interpolating_minimum_at_finite_norm_certifies(self):
    # A 1-4-1 tanh net on 3 points (13 parameters): LM interpolates at a
    # finite point; zero loss at rounding is the global minimum value.
    x = np.array([[-1.0], [0.2], [0.9]])
    y = np.array([[0.3], [-0.4], [0.8]])
    model = MLP(d_in=1, widths=(4,), d_out=1)
    problem = lminima.Problem.for_module(
        model, model.init_params(jax.random.PRNGKey(2)), x, y)
    decision = outcomes_lib.decide_member(problem)
    self.assertEqual(decision.outcome, "local_min", decision.reason)
    self.assertIn("zero loss", decision.reason)
    point = problem.at(decision.params)
    self.assertLessEqual(point.loss, DEFAULT.zero_floor(
        problem.reference_loss))
    self.assertLess(np.linalg.norm(point.flat),
                    5 * max(1.0, np.linalg.norm(problem.flat)))

  def test_to_row_fields(self):
    decision = outcomes_lib.decide_member(_far_minimum_problem())
    row = decision.to_row()
    self.assertEqual(row["outcome"], "local_min")
    self.assertEqual(row["verdict"], "local_min")
    self.assertEqual(row["tolerances"], DEFAULT.to_dict())
    self.assertIn("fate_iters", row)  # it was continued
    from lminima.study import records
    self.assertLessEqual(set(row), records.ROW_FIELDS)

  def test_bad_arguments(self):
    with self.assertRaisesRegex(ValueError, "fate_iters >= 0"):
      outcomes_lib.decide_member(_far_minimum_problem(), fate_iters=-1)


if __name__ == "__main__":
  absltest.main()
