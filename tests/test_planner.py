"""Tests for lminima.planner (program groups and their cost model)."""

import itertools
import subprocess
import sys

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from lminima import models
from lminima import planner
from lminima.population import Member, TrainConfig, training_flops


class PlanGroupsTest(parameterized.TestCase):

  @parameterized.parameters(
      (planner.CostModel(compile_s=100.0, step_s=0.0, flops_per_s=1e12),),
      (planner.CostModel(compile_s=0.0, step_s=0.0, flops_per_s=1e9),),
      (planner.CostModel(compile_s=0.3, step_s=1e-5, flops_per_s=3e10),),
  )
  def test_auto_is_the_cheapest_contiguous_split(self, cost_model):
    config = TrainConfig(steps=500)
    widths = (4, 8, 16, 32, 64)
    members = [Member(3, w, s) for w in widths for s in range(3)]
    plan = planner.plan_groups(members, 10, 2, config, width_strategy="auto",
                               batch=1000, cost_model=cost_model)
    best = np.inf
    for mask in itertools.product((False, True), repeat=len(widths) - 1):
      cuts = [0] + [i + 1 for i, cut in enumerate(mask) if cut] + [5]
      cost = sum(cost_model.predict(
          3 * (b - a), training_flops(
              models.MLP(10, (widths[b - 1],) * 3, 2), 1000), 500)
                 for a, b in zip(cuts[:-1], cuts[1:]))
      best = min(best, cost)
    self.assertAlmostEqual(sum(g.predicted_s for g in plan) / best, 1.0)
    covered = sorted(i for g in plan for i in g.member_indices)
    self.assertEqual(covered, list(range(len(members))))

  def test_extremes(self):
    config = TrainConfig(steps=10)
    members = [Member(d, w, 0) for d in (1, 2) for w in (2, 5)]
    members.append(Member(0, 7, 0))
    per_width = planner.plan_groups(members, 3, 1, config,
                                    width_strategy="per_width", batch=10)
    self.assertEqual([g.padded_model.widths for g in per_width],
                     [(), (2,), (5,), (2, 2), (5, 5)])
    masked = planner.plan_groups(members, 3, 1, config,
                                 width_strategy="masked", batch=10)
    self.assertEqual([g.padded_model.widths for g in masked],
                     [(), (5,), (5, 5)])
    self.assertEqual(masked[1].member_indices, (0, 1))

  def test_bad_plans_raise(self):
    config = TrainConfig(steps=10)
    with self.assertRaisesRegex(ValueError, "cost_model"):
      planner.plan_groups([Member(1, 2, 0)], 3, 1, config, batch=10)
    with self.assertRaisesRegex(ValueError, "width_strategy"):
      planner.plan_groups([Member(1, 2, 0)], 3, 1, config, batch=10,
                          width_strategy="padded")
    with self.assertRaisesRegex(ValueError, "empty"):
      planner.plan_groups([], 3, 1, config, batch=10,
                          width_strategy="masked")

  def test_cheapest_cuts_brute_force(self):
    rng = np.random.default_rng(0)
    for k in range(1, 6):
      costs = rng.uniform(0.1, 2.0, k * (k + 1) // 2)
      table = {}
      it = iter(costs)
      for j in range(1, k + 1):
        for i in range(j):
          table[i, j] = next(it)
      best = min(
          (sum(table[a, b] for a, b in zip(cuts[:-1], cuts[1:])), cuts)
          for mask in itertools.product((False, True), repeat=k - 1)
          for cuts in [[0] + [i + 1 for i, cut in enumerate(mask) if cut]
                       + [k]])
      self.assertEqual(planner.cheapest_cuts(list(costs), k), best[1])

  def test_planner_does_not_import_the_program(self):
    """The planner predicts from a CostModel; it never runs programs."""
    code = ("import sys, lminima.planner; "
            "print('lminima.program' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], check=True,
                         capture_output=True, text=True).stdout
    self.assertEqual(out.strip(), "False")


if __name__ == "__main__":
  absltest.main()
