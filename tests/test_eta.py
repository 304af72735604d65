"""lminima.study.eta: the remaining-time model, and its error on a small
study."""

import tempfile
import time

from absl.testing import absltest
import jax
import numpy as np

from lminima import data as data_lib
from lminima.core import models
from lminima.core.problem import Problem
from lminima.study import eta
from lminima.study import sweep


class EtaModelTest(absltest.TestCase):

  def test_calibrates_iterations_and_training(self):
    todo = [(1, 2), (1, 2), (2, 2)]
    estimate = eta.Eta({(1, 2): 0.01, (2, 2): 0.04}, todo, k0=50.0)
    # Priors: 3 members to train at 0.5 s; a = 0.1 s and k = 50 each.
    self.assertAlmostEqual(estimate.remaining_s(), eta.REPORT_S + 1.5
                           + 3 * 0.1 + 50 * 0.06)
    # Members that follow seconds = 0.2 + 100 t_iter exactly pull (a, k)
    # from the priors toward (0.2, 100), and the fit is least squares.
    estimate.trained(1, n_members=2, seconds=1.0)
    for cell in todo:
      estimate.analysed(cell, 0.2 + 100 * {(1, 2): 0.01,
                                           (2, 2): 0.04}[cell])
    a, k = estimate.member_model()
    # The same fit by numpy's lstsq on the data and the ridge rows.
    w, t = eta.PRIOR_MEMBERS, np.mean([0.01, 0.01, 0.04])
    design = np.array([[1, 0.01], [1, 0.01], [1, 0.04],
                       [np.sqrt(w), 0], [0, np.sqrt(w) * t]])
    target = np.array([1.2, 1.2, 4.2, np.sqrt(w) * 0.1,
                       np.sqrt(w) * t * 50.0])
    np.testing.assert_allclose((a, k), np.linalg.lstsq(
        design, target, rcond=None)[0], rtol=1e-10)
    self.assertEqual(estimate.remaining_s(), 0.0)

  def test_training_follows_the_planner_scaled_by_what_it_measured(self):
    estimate = eta.Eta({(1, 2): 0.01, (2, 2): 0.01}, [(1, 2), (2, 2)],
                       training_s={1: 1.0, 2: 3.0}, k0=10.0)
    self.assertAlmostEqual(estimate.remaining_s(),
                           eta.REPORT_S + 4.0 + 2 * (eta.OVERHEAD_PRIOR_S
                                                     + 10.0 * 0.01))
    estimate.trained(1, n_members=1, seconds=2.0)  # twice the prediction
    self.assertAlmostEqual(estimate.remaining_s(),
                           eta.REPORT_S + 2 * 3.0 + 2 * (
                               eta.OVERHEAD_PRIOR_S + 10.0 * 0.01))

  def test_iteration_seconds_times_a_hessian_and_its_eigh(self):
    ds = data_lib.synthetic(m=50, d_x=3, d_y=1)
    model = models.MLP(3, (8, 8), 1)
    problem = Problem.for_module(model, model.init_params(
        jax.random.PRNGKey(0)), ds.x, ds.y)
    seconds = eta.iteration_seconds(problem)
    problem.dense_hessian_at(problem.flat)  # compiled by the call above
    start = time.perf_counter()
    np.linalg.eigh(problem.dense_hessian_at(problem.flat))
    reference = time.perf_counter() - start
    self.assertGreater(seconds, 0.0)
    self.assertLess(seconds, 20 * reference + 0.05)


class StudyEtaTest(absltest.TestCase):

  def test_estimates_are_within_2x_of_the_time_left(self):
    config = sweep.get_config()
    config.depths, config.widths, config.num_seeds = (1, 2), (2, 6), 2
    config.steps, config.progress = 400, False
    config.workdir = tempfile.mkdtemp()
    seen = []
    sweep.run(config, log=lambda _: None,
              on_member=lambda done, left: seen.append(
                  (done, left, time.perf_counter())))
    end = time.perf_counter()
    self.assertLen(seen, 8)
    self.assertEqual(seen[-1][:2], (8, 0.0))
    # Each estimate against the time the rest took: their median within
    # 2x, none off by more than 4x.
    ratios = [left / (end - at) for _, left, at in seen[:-1]]
    self.assertBetween(float(np.median(ratios)), 0.5, 2.0, ratios)
    for ratio in ratios:
      self.assertBetween(ratio, 0.25, 4.0, ratios)


if __name__ == "__main__":
  absltest.main()
