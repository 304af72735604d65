"""lminima.study.claims on hand-built rows whose answers are known, including
rows where a claim fails and where its test is uninformative."""

import re

from absl.testing import absltest
from absl.testing import parameterized

from lminima.core.tolerances import DEFAULT, Tolerances
from lminima.critical import outcomes
from lminima.study import claims

LINEAR = 0.5
REFERENCE = 1.0  # the zero predictor's loss: zero loss is L <= 1e-28 here


def _minimum(depth=1, width=2, loss=0.3, *, end=None, inclusion=0.2,
             rank_frac=0.5, rank=10, rank_loose=10, gap=1e-15, euler=None,
             yhat_norm=10.0, outcome="local_min", **extra):
  row = {"depth": depth, "width": width, "seed": 0, "outcome": outcome,
         "loss": loss + 1e-3 if end is None else end, "loss_refined": loss,
         "loss_reference": REFERENCE, "linear_opt": LINEAR,
         "identity_gap_last": gap, "identity_gap_full": gap,
         "inclusion_residual_linear": inclusion, "rank_D_frac": rank_frac,
         "rank_D": rank, "rank_D_loose": rank_loose,
         "euler_residual_max": euler, "yhat_norm": yhat_norm}
  if outcome is None:  # certification was off
    del row["outcome"]
  row.update(extra)
  return row


def _by_test(table, claim, fragment):
  (entry,) = [e for e in table if e["claim"] == claim
              and fragment in e["test"]]
  return entry


class OutcomeTest(parameterized.TestCase):

  @parameterized.parameters(
      ({"diverged": True, "outcome": "local_min"}, "diverged"),
      ({"error": "ValueError: x", "outcome": "local_min"}, "failed"),
      ({"outcome": "local_min"}, "local_min"),
      ({"outcome": "saddle", "verdict": "saddle"}, "saddle"),
      ({"outcome": "non_differentiable"}, "non_differentiable"),
      ({"outcome": "escaping", "refine_stop_reason": "escaping"},
       "escaping"),
      ({"outcome": "undecided", "refine_stop_reason": "max_iters"},
       "undecided"),
      # The outcome field alone decides: the old fields are not read.
      ({"verdict": "local_min", "fate": "critical"}, "uncertified"),
      ({"refine_stop_reason": "escaping"}, "uncertified"),
      ({}, "uncertified"))
  def test_every_member_has_one_outcome(self, row, expected):
    self.assertEqual(claims.outcome(row), expected)
    self.assertIn(expected, claims.OUTCOMES)

  def test_outcomes_are_the_members_and_uncertified(self):
    self.assertEqual(claims.OUTCOMES, outcomes.OUTCOMES + ("uncertified",))
    self.assertLen(set(claims.OUTCOMES), len(claims.OUTCOMES))
    self.assertNotIn("not_critical", claims.OUTCOMES)

  def test_certified_means_local_min_with_a_finite_loss(self):
    rows = [_minimum(loss=0.3),
            _minimum(loss=None, end=0.3),                 # no refined loss
            _minimum(loss=float("nan")),
            _minimum(outcome="saddle", verdict="local_min"),
            _minimum(diverged=True),
            _minimum(error="ValueError: x"),
            _minimum(outcome=None, verdict="local_min")]  # uncertified
    self.assertEqual(claims.certified(rows), rows[:1])


class ToleranceTest(absltest.TestCase):

  def test_rows_carry_their_tolerances(self):
    self.assertIs(claims.tolerances([{}, {"outcome": "saddle"}]), DEFAULT)
    tol = Tolerances(identity_rtol=1e-3, zero_loss_rtol=1e-20)
    rows = [{"outcome": "saddle"}, {"tolerances": tol.to_dict()},
            {"tolerances": DEFAULT.to_dict()}]
    self.assertEqual(claims.tolerances(rows), tol)

  def test_zero_loss_is_relative_to_the_zero_predictors_loss(self):
    self.assertTrue(claims.is_zero_loss({"loss_refined": 1e-30,
                                         "loss_reference": 1.0}))
    self.assertFalse(claims.is_zero_loss({"loss_refined": 1e-27,
                                          "loss_reference": 1.0}))
    # The same loss on targets 100 times larger is at their rounding.
    self.assertTrue(claims.is_zero_loss({"loss_refined": 1e-27,
                                         "loss_reference": 100.0}))
    # A small loss is not zero because L*_linear is large (the old test).
    self.assertFalse(claims.is_zero_loss({"loss_refined": 1e-13,
                                          "linear_opt": 0.5,
                                          "loss_reference": 1.0}))
    self.assertTrue(claims.is_zero_loss(
        {"loss_refined": 1e-13, "loss_reference": 1.0},
        Tolerances(zero_loss_rtol=1e-12)))
    # Without the reference only an exact zero is zero loss.
    self.assertTrue(claims.is_zero_loss({"loss_refined": 0.0}))
    self.assertFalse(claims.is_zero_loss({"loss_refined": 1e-300}))
    self.assertFalse(claims.is_zero_loss({"loss_refined": None,
                                          "loss_reference": 1.0}))

  def test_below_linear_is_relative_to_the_linear_optimum(self):
    rtol = DEFAULT.bound_rtol
    row = lambda loss, **kw: {"loss_refined": loss, "linear_opt": LINEAR,
                              "loss_reference": REFERENCE, **kw}
    self.assertTrue(claims.below_linear(row(LINEAR * (1 + rtol / 10))))
    self.assertFalse(claims.below_linear(row(LINEAR * (1 + 10 * rtol))))
    self.assertTrue(claims.below_linear(row(LINEAR * (1 + 10 * rtol)),
                                        Tolerances(bound_rtol=100 * rtol)))
    # The row's own below_linear field (written by the theory) is not read.
    self.assertFalse(claims.below_linear(row(0.7, below_linear=True)))
    self.assertTrue(claims.below_linear(row(0.3, below_linear=False)))
    # At zero loss the zero floor makes L*_linear = 0 a bound that holds.
    self.assertTrue(claims.below_linear({"loss_refined": 1e-30,
                                         "linear_opt": 0.0,
                                         "loss_reference": 1.0}))
    self.assertFalse(claims.below_linear({"loss_refined": 1e-20,
                                          "linear_opt": 0.0,
                                          "loss_reference": 1.0}))
    self.assertFalse(claims.below_linear({"loss_refined": 0.3}))


class ClaimsTableTest(absltest.TestCase):

  def test_fields_and_counts_of_identities(self):
    rows = [_minimum(loss=0.3), _minimum(loss=0.2, gap=1e-3),
            _minimum(loss=1e-30, rank_frac=1.0),
            _minimum(outcome="saddle", loss=0.1, gap=1.0),    # never tested
            _minimum(outcome="undecided", loss=0.1, gap=1.0),
            _minimum(outcome=None, loss=0.1, gap=1.0, verdict="local_min")]
    table = claims.claims_table(rows)
    for entry in table:
      self.assertEqual(tuple(entry), claims.CLAIM_FIELDS)
    last = _by_test(table, "A", "output layer")
    # The zero-loss minimum is counted apart; 1 of 2 fails the identity.
    self.assertEqual((last["tested"], last["holds"],
                      last["zero_loss_apart"]), (2, 1, 1))
    self.assertTrue(last["informative"].startswith("no: holds at every"))
    self.assertEqual(last["tolerance"], "gap <= 1e-08 max(L, 1e-08 L_ref)")
    euler = _by_test(table, "B", "Euler")
    self.assertEqual(euler["tested"], 0)
    self.assertIn("not applicable", euler["informative"])

  def test_identity_gap_is_relative_to_the_loss(self):
    rows = [_minimum(loss=0.3, gap=2e-9),     # <= 1e-8 * 0.3: holds
            _minimum(loss=0.3, gap=4e-9),     # > 3e-9: fails
            # Targets of scale 1e-6: the floor 1e-8 L_ref is below L.
            _minimum(loss=1e-12, gap=1e-21,   # holds at its own scale
                     loss_reference=1e-6),
            _minimum(loss=1e-12, gap=1e-19,   # an absolute 1e-8 would pass
                     loss_reference=1e-6),
            # L = 1e-20 of L_ref = 1: the gap is held to the rounding of a
            # projection of Y, 1e-8 * 1e-8 L_ref.
            _minimum(loss=1e-20, gap=1e-20),
            _minimum(loss=1e-20, gap=1e-15),
            # At rounding (L <= 1e-28 L_ref): counted apart.
            _minimum(loss=1e-30, gap=1.0)]
    for fragment in ("output layer", "full D"):
      entry = _by_test(claims.claims_table(rows), "A", fragment)
      self.assertEqual((entry["tested"], entry["holds"],
                        entry["zero_loss_apart"]), (6, 3, 1), fragment)

  def test_the_rows_tolerances_decide(self):
    rows = [_minimum(loss=0.2, gap=1e-3), _minimum(loss=0.3, gap=1e-15)]
    last = _by_test(claims.claims_table(rows), "A", "output layer")
    self.assertEqual((last["tested"], last["holds"]), (2, 1))
    loose = Tolerances(identity_rtol=1e-2).to_dict()
    rows = [dict(r, tolerances=loose) for r in rows]
    last = _by_test(claims.claims_table(rows), "A", "output layer")
    self.assertEqual((last["tested"], last["holds"]), (2, 2))
    self.assertEqual(last["tolerance"], "gap <= 0.01 max(L, 1e-08 L_ref)")

  def test_euler_residual_is_relative_to_the_outputs(self):
    rows = [_minimum(euler=5e-8, yhat_norm=10.0),   # <= 1e-8 * 10: holds
            _minimum(euler=5e-7, yhat_norm=10.0),   # fails
            _minimum(euler=5e-7, yhat_norm=100.0),  # holds on larger outputs
            _minimum(euler=1e-12, yhat_norm=1e-6),  # an absolute 1e-8 passes
            _minimum(loss=1e-30, euler=1.0)]        # zero loss, apart
    euler = _by_test(claims.claims_table(rows), "B", "Euler")
    self.assertEqual((euler["tested"], euler["holds"],
                      euler["zero_loss_apart"]), (4, 2, 1))
    self.assertEqual(euler["tolerance"], "residual <= 1e-08 ||vec Yhat||")
    self.assertTrue(euler["informative"].startswith("no: exact"))

  def test_rank_disagreement_is_counted(self):
    rows = [_minimum(rank=10, rank_loose=8), _minimum(loss=0.25)]
    full = _by_test(claims.claims_table(rows), "A", "full D")
    self.assertIn("at 1 of them", full["informative"])
    self.assertTrue(claims.ranks_disagree(rows[0]))
    self.assertFalse(claims.ranks_disagree(rows[1]))

  def test_bound_that_fails_despite_the_inclusion_is_reported(self):
    rows = [_minimum(loss=0.3, inclusion=1e-12),
            # Above L*_lin: a failure, whatever a stale field says.
            _minimum(loss=0.7, inclusion=1e-12, below_linear=True),
            # Above by more than bound_rtol: a failure too.
            _minimum(loss=LINEAR * (1 + 1e-6), inclusion=1e-12),
            # Within bound_rtol of L*_lin: holds.
            _minimum(loss=LINEAR * (1 + 1e-10), inclusion=1e-12),
            _minimum(loss=0.6, inclusion=0.3),     # control, bound fails
            _minimum(loss=0.1, inclusion=0.3, below_linear=False)]  # holds
    table = claims.claims_table(rows)
    must = _by_test(table, "C", "=> L <= L*_linear")
    self.assertEqual((must["tested"], must["holds"]), (4, 2))
    self.assertTrue(must["informative"].startswith("yes"))
    self.assertEqual(must["tolerance"],
                     "residual <= 1e-06; L <= L*_lin (1 + 1e-08)")
    control = _by_test(table, "C", "control")
    self.assertEqual((control["tested"], control["holds"]), (2, 1))

  def test_bound_through_a_linear_skip_checks_the_instrument(self):
    # Members above L*_lin, tested points without full row rank: informative
    # for a plain net, not where a linear skip makes the bound follow from
    # criticality.
    rows = [_minimum(loss=0.3, inclusion=1e-12, rank_frac=0.4),
            _minimum(outcome="escaping", loss=0.9)]
    must = _by_test(claims.claims_table(rows), "C", "=> L <= L*_linear")
    self.assertTrue(must["informative"].startswith("yes"))
    for row in rows:
      row["skip"] = True
    must = _by_test(claims.claims_table(rows), "C", "=> L <= L*_linear")
    self.assertEqual((must["tested"], must["holds"]), (1, 1))
    self.assertTrue(must["informative"].startswith(
        "no: with a linear skip, criticality alone gives it"),
                    must["informative"])

  def test_bound_is_trivial_when_every_member_is_below_linear(self):
    rows = [_minimum(loss=0.3, inclusion=1e-12, rank_frac=0.4),
            _minimum(loss=0.2, inclusion=0.4),
            _minimum(outcome="undecided", loss=0.1),
            # A diverged member's huge loss does not count.
            _minimum(outcome=None, loss=None, end=1e9, diverged=True)]
    must = _by_test(claims.claims_table(rows), "C", "=> L <= L*_linear")
    self.assertEqual((must["tested"], must["holds"]), (1, 1))
    self.assertIn("trivially met", must["informative"])
    # One member above L*_lin at the end of training makes it informative.
    rows.append(_minimum(outcome="saddle", loss=0.4, end=0.9))
    must = _by_test(claims.claims_table(rows), "C", "=> L <= L*_linear")
    self.assertTrue(must["informative"].startswith("yes"),
                    must["informative"])
    self.assertIn("1 of 4 members", must["informative"])

  def test_inclusion_only_at_full_row_rank_is_uninformative(self):
    rows = [_minimum(loss=0.3, inclusion=1e-12, rank_frac=1.0),
            _minimum(loss=0.6, inclusion=0.3)]
    must = _by_test(claims.claims_table(rows), "C", "=> L <= L*_linear")
    self.assertIn("full row rank", must["informative"])

  def test_full_rank_with_positive_loss_is_a_counterexample(self):
    rows = [_minimum(loss=1e-30, rank_frac=1.0),
            _minimum(loss=0.2, rank_frac=1.0),    # would contradict (D)
            _minimum(loss=1e-20, rank_frac=1.0),  # small, yet above rounding
            _minimum(loss=0.3, rank_frac=0.5)]
    rank = _by_test(claims.claims_table(rows), "D", "rank D")
    self.assertEqual((rank["tested"], rank["holds"],
                      rank["zero_loss_apart"]), (3, 1, 1))
    self.assertEqual(rank["tolerance"], "L <= 1e-28 L_ref")

  def test_trend_compares_only_cells_with_enough_points(self):
    n = claims.MIN_POINTS
    rows = ([_minimum(width=2, loss=0.4) for _ in range(n)]
            + [_minimum(width=4, loss=0.3) for _ in range(n)]
            + [_minimum(width=8, loss=0.35) for _ in range(n)]  # 0.35 > 0.315
            + [_minimum(width=16, loss=0.01) for _ in range(n - 1)]
            # Not certified: they do not make width 16 a cell of n points.
            + [_minimum(width=16, loss=0.01, outcome=o)
               for o in ("saddle", "escaping", "undecided")]
            + [_minimum(depth=2, width=2, loss=0.4) for _ in range(n)]
            + [_minimum(depth=3, width=2, outcome="saddle")])
    comparisons, too_few = claims.trend_comparisons(
        claims.certified(rows), "loss_refined",
        lambda a, b: b > (1 + claims.TREND_RTOL) * a, cells=[(3, 2)])
    self.assertEqual(too_few, [(1, 16), (3, 2)])  # (3, 2): no minimum
    self.assertEqual([(a, b, ok) for a, b, *_, ok in comparisons],
                     [((1, 2), (1, 4), True), ((1, 4), (1, 8), False),
                      ((1, 2), (2, 2), True)])
    # The values themselves are tested as statistics (lminima.study.trend); the
    # table keeps only (E)'s rank row.
    (entry,) = [e for e in claims.claims_table(rows) if e["claim"] == "E"]
    self.assertIn("rank D", entry["test"])

  def test_markdown_has_one_line_per_test(self):
    table = claims.claims_table([_minimum()])
    text = claims.claims_markdown(table)
    self.assertEqual(len(text.splitlines()), len(table) + 2)
    # Every row has the header's 7 cells: a norm's "|" in the test or the
    # tolerance text (the Euler row's ||vec Yhat||) is escaped.
    for line in text.splitlines():
      self.assertLen(re.split(r"(?<!\\)\|", line), 9, line)


if __name__ == "__main__":
  absltest.main()
