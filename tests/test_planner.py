"""Tests for lminima.train.planner (program groups and their cost model)."""

import dataclasses
import itertools
import subprocess
import sys
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from lminima.core import models
from lminima.train import planner
from lminima.train.population import Member, TrainConfig, training_flops


class PlanGroupsTest(parameterized.TestCase):

  @parameterized.parameters(
      (planner.CostModel(compile_s=100.0, step_s=0.0, flops_per_s=1e12),),
      (planner.CostModel(compile_s=0.0, step_s=0.0, flops_per_s=1e9),),
      (planner.CostModel(compile_s=0.3, step_s=1e-5, flops_per_s=3e10),),
      (planner.CostModel(compile_s=0.4, step_s=2e-5, flops_per_s=2e11,
                         unit_s=3e-9),),
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
      padded = lambda b: models.MLP(10, (widths[b - 1],) * 3, 2)
      cost = sum(cost_model.predict(
          3 * (b - a), training_flops(padded(b), 1000), 500,
          unit_samples_per_member_step=1000 * 3 * widths[b - 1])
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

  def test_member_blocks(self):
    members = [Member(d, w, s) for d in (1, 2) for w in (2, 4, 8)
               for s in range(5)] + [Member(3, 2, 0)]
    groups = planner.plan_groups(members, 3, 1, TrainConfig(),
                                 width_strategy="masked", batch=10)
    for workers in (1, 2, 3, 20):
      blocks = planner.member_blocks(groups, members, workers)
      own = [i for b in blocks for i in b.member_indices[:b.n_members]]
      self.assertCountEqual(own, range(len(members)))  # each member once
      for group in groups:
        mine = [b for b in blocks if b.member_indices[0] in
                group.member_indices]
        self.assertLen(mine, min(workers, len(group.member_indices)))
        self.assertLen({len(b.member_indices) for b in mine}, 1)  # one shape
        for b in mine:
          self.assertEqual(b.padded_model, group.padded_model)
          self.assertTrue(set(b.member_indices) <= set(group.member_indices))
      work = [len(b.member_indices) * b.padded_model.n_params for b in blocks]
      self.assertEqual(work, sorted(work, reverse=True))
    # A grid group splits into blocks of the same widths: one compile.
    blocks = planner.member_blocks(groups[:1], members, 5)
    self.assertLen({tuple(members[i].width for i in b.member_indices)
                    for b in blocks}, 1)

  def test_start_groups(self):
    members = [Member(d, w, s) for d in (1, 3) for w in (2, 8, 32)
               for s in range(2)]
    groups = planner.plan_groups(members, 3, 1, TrainConfig(),
                                 width_strategy="per_width", batch=10)
    for bound, starts_per_depth in ((planner.START_TOGETHER_BYTES, 1), (0, 3)):
      with mock.patch.object(planner, "START_TOGETHER_BYTES", bound):
        starts = planner.start_groups(groups)
      self.assertLen(starts, 2 * starts_per_depth)
      started = [g for _, part in starts for g in part]
      self.assertCountEqual([g.member_indices for g in started],
                            [g.member_indices for g in groups])
      for model, part in starts:
        self.assertEqual(model, max((g.padded_model for g in part),
                                    key=lambda m: m.n_params))
        self.assertLen({g.padded_model.depth for g in part}, 1)

  def test_prediction_with_workers(self):
    model = planner.CostModel(compile_s=1.0, step_s=1e-3, flops_per_s=1e9)
    one = model.predict(7, 1e6, 100)
    self.assertAlmostEqual(one, 1.0 + 100 * (1e-3 + 7e-3))
    elementwise = dataclasses.replace(model, unit_s=1e-9)
    self.assertAlmostEqual(
        elementwise.predict(7, 1e6, 100, unit_samples_per_member_step=2e6),
        1.0 + 100 * (1e-3 + 7 * (1e-3 + 2e-3)))
    # Blocks of ceil(7 / 3) = 3 members run side by side.
    self.assertAlmostEqual(model.predict(7, 1e6, 100, workers=3),
                           1.0 + 100 * (1e-3 + 3e-3))
    self.assertAlmostEqual(model.predict(7, 1e6, 100, workers=50),
                           1.0 + 100 * (1e-3 + 1e-3))

  def test_elementwise_work_keeps_narrow_widths_apart(self):
    """Counting FLOPs only, padding width 4 to 16 looks nearly free; with
    the elementwise term (per sample and hidden unit) it costs more than a
    compile, and the widths get programs of their own."""
    members = [Member(3, w, s) for w in (4, 16) for s in range(8)]
    plan = lambda model: [g.padded_model.widths[0] for g in planner.plan_groups(
        members, 10, 2, TrainConfig(steps=500), width_strategy="auto",
        batch=1000, cost_model=model)]
    flops_only = planner.CostModel(compile_s=0.4, step_s=2e-5,
                                   flops_per_s=2e11)
    self.assertEqual(plan(flops_only), [16])
    self.assertEqual(plan(dataclasses.replace(flops_only, unit_s=3e-9)),
                     [4, 16])

  def test_planner_does_not_import_the_program(self):
    """The planner predicts from a CostModel; it never runs programs."""
    code = ("import sys, lminima.train.planner; "
            "print('lminima.train.compiled' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], check=True,
                         capture_output=True, text=True).stdout
    self.assertEqual(out.strip(), "False")


if __name__ == "__main__":
  absltest.main()
