"""lminima.study.trend: (E1)-(E3) as statistics, each piece against an
independent reference (scipy.stats, exact enumeration, closed forms)."""

import itertools
import math

from absl.testing import absltest
import numpy as np
import scipy.stats

from lminima.study import trend


def _rows(values_by_width, depth=1, outcome="local_min", linear=1.0):
  return [{"depth": depth, "width": w, "seed": s, "outcome": outcome,
           "loss_refined": v, "loss_reference": 10.0, "linear_opt": linear}
          for w, values in values_by_width.items()
          for s, v in enumerate(values)]


class StatisticsTest(absltest.TestCase):

  def test_rho_is_scipys_spearman_with_ties(self):
    x = np.array([2, 2, 2, 4, 4, 4, 8, 8, 8], float)
    y = np.array([3.0, 1.0, 3.0, 2.0, 2.0, 0.5, 1.0, 0.2, 0.2])
    rho, (low, high), _ = trend.spearman_trend(x, y)
    self.assertAlmostEqual(rho, scipy.stats.spearmanr(x, y).statistic,
                           places=12)
    self.assertLessEqual(low, rho)
    self.assertLessEqual(rho, high)

  def test_permutation_p_matches_exact_enumeration(self):
    x = np.array([1, 1, 2, 2, 3, 3], float)
    y = np.array([0.9, 1.1, 0.7, 0.95, 0.4, 0.8])
    rho, _, p = trend.spearman_trend(x, y)
    ranks = scipy.stats.rankdata(y)
    rx = scipy.stats.rankdata(x)
    null = [np.corrcoef(rx, np.array(perm))[0, 1]
            for perm in itertools.permutations(ranks)]
    exact = np.mean(np.array(null) <= rho + 1e-12)
    self.assertAlmostEqual(p, exact, delta=0.02)

  def test_holm_against_hand_computation(self):
    # Sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 -> 0.06.
    np.testing.assert_allclose(trend.holm([0.01, 0.04, 0.03, 0.005]),
                               [0.03, 0.06, 0.06, 0.02])
    self.assertEqual(trend.holm([0.6, 0.9]), [1.0, 1.0])

  def test_resolved_rho_is_fishers_z(self):
    z = scipy.stats.norm.isf(0.05) + scipy.stats.norm.isf(0.2)
    self.assertAlmostEqual(trend.resolved_rho(28, 0.05),
                           math.tanh(z / 5.0), places=12)
    self.assertEqual(trend.resolved_rho(3, 0.05), 1.0)
    self.assertLess(trend.resolved_rho(100, 0.05),
                    trend.resolved_rho(20, 0.05))

  def test_wilson_closed_form(self):
    k, n, z = 3, 10, scipy.stats.norm.isf(0.025)
    p = k / n
    center = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    np.testing.assert_allclose(trend.wilson(k, n),
                               (center - half, center + half), rtol=1e-10)
    self.assertIsNone(trend.wilson(0, 0))

  def test_bootstrap_median_interval(self):
    values = [1.0, 2.0, 3.0, 4.0, 100.0]
    low, high = trend.bootstrap_median(values)
    self.assertLessEqual(low, 3.0)
    self.assertGreaterEqual(high, 3.0)
    self.assertEqual(trend.bootstrap_median(values), (low, high))  # seeded
    self.assertIsNone(trend.bootstrap_median([1.0, 2.0]))


class TrendTestsTest(absltest.TestCase):

  def test_falling_values_improve_and_noise_does_not(self):
    rng = np.random.default_rng(0)
    falling = _rows({w: list(1.0 / w + 0.01 * rng.random(5))
                     for w in (2, 4, 8, 16)})
    test = trend.trend_tests(falling)[0]
    self.assertEqual((test.question, test.axis, test.fixed, test.n),
                     ("E1", "width", 1, 20))
    self.assertLess(test.rho, -0.8)
    self.assertTrue(test.improves)
    noise = _rows({w: list(rng.random(5)) for w in (2, 4, 8, 16)})
    self.assertFalse(trend.trend_tests(noise)[0].improves)
    rising = _rows({w: list(w + 0.01 * rng.random(5)) for w in (2, 4, 8)})
    test = trend.trend_tests(rising)[0]
    self.assertGreater(test.rho_ci[0], 0)
    self.assertFalse(test.improves)

  def test_not_testable_says_why(self):
    few = _rows({2: [0.3, 0.2], 4: [0.1]})
    tests = trend.trend_tests(few)
    self.assertIn("3 points", tests[0].reason)
    one_level = _rows({2: [0.3, 0.2, 0.1, 0.4, 0.5, 0.6]})
    self.assertIn("1 width", trend.trend_tests(one_level)[0].reason)
    flat = _rows({2: [0.3] * 3, 4: [0.3] * 3})
    self.assertIn("same", trend.trend_tests(flat)[0].reason)

  def test_zero_loss_is_apart_in_e1_and_never_bad_in_e2(self):
    rows = _rows({2: [0.5, 0.2, 1e-30], 4: [0.1, 0.3, 1e-31]})
    self.assertEqual(len(trend.e1_points(rows)), 4)
    bad = {(r["width"], r["loss_refined"]): b for r, b in trend.e2_points(rows)}
    # The cell's best is the zero-loss minimum: every L > 0 minimum is bad,
    # the zero-loss one is not.
    self.assertEqual(bad[(2, 1e-30)], 0.0)
    self.assertEqual(bad[(2, 0.5)], 1.0)
    self.assertEqual(bad[(4, 1e-31)], 0.0)

  def test_e2_counts_bad_minima_among_every_member(self):
    rows = (_rows({2: [1.0, 1.005, 1.5]})
            + _rows({2: [0.9]}, outcome="escaping")
            + _rows({2: [2.0]}, outcome="saddle"))
    points = trend.e2_points(rows)
    self.assertLen(points, 5)
    # Best 0.9 (escaping): 1.0, 1.005 and 1.5 exceed 1.01 * 0.9 = 0.909.
    self.assertEqual(sum(b for _, b in points), 3.0)
    cell = trend.cell_table(rows)[0]
    self.assertEqual((cell["e2_bad"], cell["e2_n"]), (3, 5))
    np.testing.assert_allclose(cell["e2_ci"], trend.wilson(3, 5))
    self.assertEqual(cell["e3_n"], 5)
    self.assertAlmostEqual(cell["e1_ratio_linear"], 1.005)

  def test_minima_on_kinks_count_in_e1_and_e2_saddles_do_not(self):
    rows = (_rows({2: [1.0, 1.5]}) + _rows({2: [2.0]}, outcome="kink_min")
            + _rows({2: [0.5]}, outcome="saddle"))
    self.assertEqual(sorted(v for _, v in trend.e1_points(rows)),
                     [1.0, 1.5, 2.0])
    bad = {r["loss_refined"]: b for r, b in trend.e2_points(rows)}
    self.assertEqual(bad, {1.0: 1.0, 1.5: 1.0, 2.0: 1.0, 0.5: 0.0})

  def test_diverged_and_failed_are_not_values(self):
    rows = _rows({2: [1.0]}) + [
        {"depth": 1, "width": 2, "seed": 9, "diverged": True,
         "loss_refined": 0.1},
        {"depth": 1, "width": 2, "seed": 8, "error": "x",
         "outcome": "local_min", "loss_refined": 0.1}]
    self.assertLen(trend.e3_points(rows), 1)

  def test_claim_entry_and_markdown(self):
    rng = np.random.default_rng(1)
    rows = _rows({w: list(1.0 / w + 0.01 * rng.random(4)) for w in (2, 4, 8)})
    tests = trend.trend_tests(rows)
    entry = trend.claim_entry(rows, tests)
    self.assertEqual((entry["claim"], entry["tested"], entry["holds"]),
                     ("E", 1, 1))
    self.assertTrue(entry["informative"].startswith("yes"))
    text = trend.markdown(rows, tests)
    self.assertIn("(E1) values of certified local minima", text)
    self.assertIn("improves", text)
    findings = trend.findings(tests)
    self.assertLen(findings, 3)
    self.assertIn("1 of 1 trend tests find a significant improvement",
                  findings[0])


if __name__ == "__main__":
  absltest.main()
