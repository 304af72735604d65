"""lminima.claims on hand-built rows whose answers are known, including rows
where a claim fails and where its test is uninformative."""

from absl.testing import absltest
from absl.testing import parameterized

from lminima import claims

LINEAR = 0.5


def _minimum(depth=1, width=2, loss=0.3, *, end=None, inclusion=0.2,
             below=None, rank_frac=0.5, rank=10, rank_loose=10, gap=1e-15,
             euler=None, verdict="local_min", **extra):
  row = {"depth": depth, "width": width, "seed": 0, "verdict": verdict,
         "loss": loss + 1e-3 if end is None else end, "loss_refined": loss,
         "linear_opt": LINEAR, "identity_gap_last": gap,
         "identity_gap_full": gap, "inclusion_residual_linear": inclusion,
         "below_linear": loss <= LINEAR if below is None else below,
         "rank_D_frac": rank_frac, "rank_D": rank, "rank_D_loose": rank_loose,
         "euler_residual_max": euler}
  row.update(extra)
  return row


def _by_test(table, claim, fragment):
  (entry,) = [e for e in table if e["claim"] == claim
              and fragment in e["test"]]
  return entry


class OutcomeTest(parameterized.TestCase):

  @parameterized.parameters(
      ({"diverged": True, "verdict": "local_min"}, "diverged"),
      ({"error": "ValueError: x", "verdict": "local_min"}, "failed"),
      ({"verdict": "saddle"}, "saddle"),
      ({"verdict": "non_differentiable"}, "non_differentiable"),
      ({"verdict": "not_critical", "fate": "escaping"}, "escaping"),
      ({"verdict": "not_critical", "fate": "undecided"}, "undecided"),
      ({"verdict": "not_critical", "refine_stop_reason": "escaping"},
       "escaping"),
      ({"verdict": "not_critical", "refine_stop_reason": "max_iters"},
       "not_critical"),
      ({}, "uncertified"))
  def test_every_member_has_one_outcome(self, row, expected):
    self.assertEqual(claims.outcome(row), expected)
    self.assertIn(expected, claims.OUTCOMES)


class ClaimsTableTest(absltest.TestCase):

  def test_fields_and_counts_of_identities(self):
    rows = [_minimum(loss=0.3), _minimum(loss=0.2, gap=1e-3),
            _minimum(loss=0.0, rank_frac=1.0),
            _minimum(verdict="saddle", loss=0.1)]  # never tested
    table = claims.claims_table(rows)
    for entry in table:
      self.assertEqual(tuple(entry), claims.CLAIM_FIELDS)
    last = _by_test(table, "A", "output layer")
    # The zero-loss minimum is counted apart; 1 of 2 fails the identity.
    self.assertEqual((last["tested"], last["holds"],
                      last["zero_loss_apart"]), (2, 1, 1))
    self.assertTrue(last["informative"].startswith("no: holds at every"))
    euler = _by_test(table, "B", "Euler")
    self.assertEqual(euler["tested"], 0)
    self.assertIn("not applicable", euler["informative"])

  def test_rank_disagreement_is_counted(self):
    rows = [_minimum(rank=10, rank_loose=8), _minimum(loss=0.25)]
    full = _by_test(claims.claims_table(rows), "A", "full D")
    self.assertIn("at 1 of them", full["informative"])
    self.assertTrue(claims.ranks_disagree(rows[0]))
    self.assertFalse(claims.ranks_disagree(rows[1]))

  def test_bound_that_fails_despite_the_inclusion_is_reported(self):
    rows = [_minimum(loss=0.3, inclusion=1e-12),
            _minimum(loss=0.7, inclusion=1e-12),   # above L*_lin: a failure
            _minimum(loss=0.6, inclusion=0.3),     # control, bound fails
            _minimum(loss=0.1, inclusion=0.3)]     # control, bound holds
    table = claims.claims_table(rows)
    must = _by_test(table, "C", "=> L <= L*_linear")
    self.assertEqual((must["tested"], must["holds"]), (2, 1))
    self.assertTrue(must["informative"].startswith("yes"))
    control = _by_test(table, "C", "control")
    self.assertEqual((control["tested"], control["holds"]), (2, 1))

  def test_bound_is_trivial_when_every_member_is_below_linear(self):
    rows = [_minimum(loss=0.3, inclusion=1e-12, rank_frac=0.4),
            _minimum(loss=0.2, inclusion=0.4),
            _minimum(verdict="not_critical", loss=0.1)]
    must = _by_test(claims.claims_table(rows), "C", "=> L <= L*_linear")
    self.assertEqual((must["tested"], must["holds"]), (1, 1))
    self.assertIn("trivially met", must["informative"])
    # One member above L*_lin at the end of training makes it informative.
    rows.append(_minimum(verdict="saddle", loss=0.4, end=0.9))
    must = _by_test(claims.claims_table(rows), "C", "=> L <= L*_linear")
    self.assertTrue(must["informative"].startswith("yes"),
                    must["informative"])

  def test_inclusion_only_at_full_row_rank_is_uninformative(self):
    rows = [_minimum(loss=0.3, inclusion=1e-12, rank_frac=1.0),
            _minimum(loss=0.6, inclusion=0.3)]
    must = _by_test(claims.claims_table(rows), "C", "=> L <= L*_linear")
    self.assertIn("full row rank", must["informative"])

  def test_full_rank_with_positive_loss_is_a_counterexample(self):
    rows = [_minimum(loss=0.0, rank_frac=1.0),
            _minimum(loss=0.2, rank_frac=1.0),   # would contradict (D)
            _minimum(loss=0.3, rank_frac=0.5)]
    rank = _by_test(claims.claims_table(rows), "D", "rank D")
    self.assertEqual((rank["tested"], rank["holds"],
                      rank["zero_loss_apart"]), (2, 1, 1))

  def test_trend_compares_only_cells_with_enough_points(self):
    n = claims.MIN_POINTS
    rows = ([_minimum(width=2, loss=0.4) for _ in range(n)]
            + [_minimum(width=4, loss=0.3) for _ in range(n)]
            + [_minimum(width=8, loss=0.35) for _ in range(n)]  # 0.35 > 0.315
            + [_minimum(width=16, loss=0.01) for _ in range(n - 1)]
            + [_minimum(depth=2, width=2, loss=0.4) for _ in range(n)]
            + [_minimum(depth=3, width=2, verdict="saddle")])
    comparisons, too_few = claims.trend_comparisons(
        claims.certified(rows), "loss_refined",
        lambda a, b: b > (1 + claims.TREND_RTOL) * a, cells=[(3, 2)])
    self.assertEqual(too_few, [(1, 16), (3, 2)])  # (3, 2): no minimum
    self.assertEqual([(a, b, ok) for a, b, *_, ok in comparisons],
                     [((1, 2), (1, 4), True), ((1, 4), (1, 8), False),
                      ((1, 2), (2, 2), True)])
    trend = _by_test(claims.claims_table(rows), "E", "median certified L")
    self.assertEqual((trend["tested"], trend["holds"]), (3, 2))
    self.assertIn("2 cells with < 5", trend["informative"])

  def test_zero_loss_is_relative_to_the_linear_optimum(self):
    self.assertTrue(claims.is_zero_loss({"loss_refined": 1e-13,
                                         "linear_opt": 0.5}))
    self.assertFalse(claims.is_zero_loss({"loss_refined": 1e-9,
                                          "linear_opt": 0.5}))
    self.assertFalse(claims.is_zero_loss({"loss_refined": None}))

  def test_markdown_has_one_line_per_test(self):
    table = claims.claims_table([_minimum()])
    text = claims.claims_markdown(table)
    self.assertEqual(len(text.splitlines()), len(table) + 2)


if __name__ == "__main__":
  absltest.main()
