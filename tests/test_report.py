"""report.summarize on hand-built rows: certified-minimum statistics use only
local_min members, and zero-loss minima are counted apart."""

from absl.testing import absltest

from lminima import report


def _row(width, verdict, loss_refined, below, rank_frac, diverged=False):
  return {"depth": 1, "width": width, "loss": loss_refined + 1e-3,
          "loss_refined": loss_refined, "verdict": verdict,
          "below_linear": below, "rank_D_frac": rank_frac,
          "linear_opt": 0.5, "diverged": diverged}


class SummarizeTest(absltest.TestCase):

  def test_minimum_statistics_ignore_members_that_did_not_certify(self):
    rows = [
        _row(4, "local_min", 0.7, False, 0.25),   # above the linear optimum
        _row(4, "local_min", 1e-20, True, 1.0),   # interpolating minimum
        _row(4, "local_min", 0.3, True, 0.5),
        _row(4, "not_critical", 0.1, True, 0.9),  # below, but not a minimum
        _row(4, "saddle", 0.2, True, 0.9),
        {"depth": 1, "width": 4, "loss": None, "diverged": True},
    ]
    (entry,) = report.summarize(rows)
    self.assertEqual(entry["n_members"], 6)
    self.assertEqual(entry["n_diverged"], 1)
    self.assertEqual(entry["n_local_min"], 3)
    self.assertEqual(entry["n_local_min_zero_loss"], 1)
    self.assertEqual(entry["frac_below_linear"], 2 / 3)
    self.assertEqual(entry["median_rank_D_frac"], 0.5)
    self.assertEqual(entry["local_min_loss_median"], 0.3)
    self.assertEqual(entry["frac_local_min"], 3 / 5)
    self.assertEqual(entry["frac_not_critical"], 1 / 5)

  def test_a_cell_without_minima_has_no_minimum_statistics(self):
    (entry,) = report.summarize([_row(2, "not_critical", 0.1, True, 0.9)])
    self.assertEqual(entry["n_local_min"], 0)
    self.assertEqual(entry["n_local_min_zero_loss"], 0)
    self.assertIsNone(entry["frac_below_linear"])
    self.assertIsNone(entry["median_rank_D_frac"])
    self.assertIsNone(entry["local_min_loss_median"])



class CellLineTest(absltest.TestCase):

  def test_counts_and_median(self):
    rows = [_row(4, "local_min", 0.2, True, 0.5),
            _row(4, "local_min", 0.4, True, 0.5),
            _row(4, "local_min", 0.9, True, 0.5),
            _row(4, "saddle", 0.1, True, 0.5),
            {"depth": 1, "width": 4, "verdict": "not_critical",
             "fate": "escaping"},
            {"depth": 1, "width": 4, "diverged": True},
            {"depth": 1, "width": 4, "error": "ValueError: boom"}]
    self.assertEqual(report.cell_line(1, 4, rows),
                     "depth 1 width 4: 7 members (3 local_min, 1 saddle, "
                     "1 escaping, 1 diverged, 1 failed); median certified "
                     "loss 4.000e-01")


if __name__ == "__main__":
  absltest.main()
