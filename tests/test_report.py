"""report.summarize on hand-built rows: certified-minimum statistics use only
local_min members, and zero-loss minima are counted apart; every count of
members by outcome (report.md, summary.csv, claims.json, the sweep's totals)
comes from lminima.study.claims.outcome."""

import collections
import csv
import json
import os
import re
import tempfile

from absl.testing import absltest

from lminima.core.tolerances import DEFAULT, Tolerances
from lminima.study import claims
from lminima.study import records
from lminima.study import report
from lminima.study import sweep

LINEAR = 0.5


def _row(width, outcome, loss_refined, rank_frac, diverged=False, **extra):
  row = {"depth": 1, "width": width, "loss": loss_refined + 1e-3,
         "loss_refined": loss_refined, "outcome": outcome,
         "loss_reference": 1.0, "rank_D_frac": rank_frac,
         "linear_opt": LINEAR, "diverged": diverged}
  row.update(extra)
  return row


class SummarizeTest(absltest.TestCase):

  def test_fields_are_one_count_per_outcome(self):
    self.assertLen(set(report.SUMMARY_FIELDS), len(report.SUMMARY_FIELDS))
    for o in claims.OUTCOMES:
      self.assertIn(f"n_{o}", report.SUMMARY_FIELDS)
    self.assertEmpty([f for f in report.SUMMARY_FIELDS
                      if f.startswith("frac_") and f != "frac_below_linear"])
    self.assertNotIn("n_not_critical", report.SUMMARY_FIELDS)

  def test_minimum_statistics_ignore_members_that_did_not_certify(self):
    rows = [
        # Above the linear optimum, whatever its stale below_linear says.
        _row(4, "local_min", 0.7, 0.25, below_linear=True),
        _row(4, "local_min", 1e-30, 1.0),         # interpolating minimum
        _row(4, "local_min", 0.3, 0.5, below_linear=False),
        _row(4, "undecided", 0.1, 0.9),           # below, but not a minimum
        _row(4, "saddle", 0.2, 0.9),
        _row(4, "escaping", 1e-30, 0.9),          # L -> 0 at infinity
        # The analysis raised after the outcome was decided: failed.
        _row(4, "local_min", 0.05, 0.9, error="ValueError: boom"),
        {"depth": 1, "width": 4, "loss": None, "diverged": True},
    ]
    (entry,) = report.summarize(rows)
    self.assertEqual(set(entry), set(report.SUMMARY_FIELDS))
    self.assertEqual(entry["n_members"], 8)
    self.assertEqual({o: entry[f"n_{o}"] for o in claims.OUTCOMES
                      if entry[f"n_{o}"]},
                     {"local_min": 3, "undecided": 1, "saddle": 1,
                      "escaping": 1, "failed": 1, "diverged": 1})
    self.assertEqual(sum(entry[f"n_{o}"] for o in claims.OUTCOMES), 8)
    self.assertEqual(entry["n_local_min_zero_loss"], 1)
    self.assertEqual(entry["frac_below_linear"], 2 / 3)
    self.assertEqual(entry["median_rank_D_frac"], 0.5)
    self.assertEqual((entry["local_min_loss_min"],
                      entry["local_min_loss_median"],
                      entry["local_min_loss_max"]), (1e-30, 0.3, 0.7))
    self.assertTrue(entry["too_few_minima"])

  def test_zero_loss_and_the_bound_use_the_rows_tolerances(self):
    rows = [_row(2, "local_min", 1e-12, 0.5),
            _row(2, "local_min", LINEAR * (1 + 1e-6), 0.5)]
    (entry,) = report.summarize(rows)
    self.assertEqual(entry["n_local_min_zero_loss"], 0)  # 1e-12 > 1e-28
    self.assertEqual(entry["frac_below_linear"], 1 / 2)  # 1e-6 > bound_rtol
    loose = Tolerances(zero_loss_rtol=1e-10, bound_rtol=1e-5).to_dict()
    (entry,) = report.summarize([dict(r, tolerances=loose) for r in rows])
    self.assertEqual(entry["n_local_min_zero_loss"], 1)
    self.assertEqual(entry["frac_below_linear"], 1.0)

  def test_a_cell_without_minima_has_no_minimum_statistics(self):
    (entry,) = report.summarize([_row(2, "undecided", 0.1, 0.9),
                                 _row(2, "saddle", 0.1, 0.9)])
    self.assertEqual(entry["n_local_min"], 0)
    self.assertEqual((entry["n_undecided"], entry["n_saddle"]), (1, 1))
    self.assertEqual(entry["n_local_min_zero_loss"], 0)
    self.assertIsNone(entry["frac_below_linear"])
    self.assertIsNone(entry["median_rank_D_frac"])
    self.assertIsNone(entry["local_min_loss_median"])
    self.assertTrue(entry["too_few_minima"])


class CellLineTest(absltest.TestCase):

  def test_counts_and_no_median_below_min_points(self):
    rows = [_row(4, "local_min", 0.2, 0.5),
            _row(4, "local_min", 0.4, 0.5),
            _row(4, "local_min", 0.9, 0.5),
            _row(4, "saddle", 0.1, 0.5),
            {"depth": 1, "width": 4, "outcome": "escaping"},
            {"depth": 1, "width": 4, "diverged": True},
            {"depth": 1, "width": 4, "error": "ValueError: boom"},
            {"depth": 1, "width": 4, "loss": 0.3}]  # certification off
    self.assertEqual(report.cell_line(1, 4, rows),
                     "depth 1 width 4: 8 members (3 local_min, 1 saddle, "
                     "1 escaping, 1 diverged, 1 failed, 1 uncertified); "
                     "fewer than 5 certified minima, no median")

  def test_median_of_the_certified_minima_only(self):
    rows = [_row(4, "local_min", v, 0.5) for v in (0.2, 0.4, 0.9, 0.5, 0.6)]
    rows += [_row(4, "saddle", 0.01, 0.5),
             _row(4, "non_differentiable", 0.01, 0.5),
             _row(4, "local_min", 0.01, 0.5, error="ValueError: boom")]
    self.assertEqual(report.cell_line(1, 4, rows),
                     "depth 1 width 4: 8 members (5 local_min, 1 saddle, "
                     "1 non_differentiable, 1 failed); median certified "
                     "loss 5.000e-01")


def _every_outcome_rows():
  """Two cells of 10 members each, every outcome present (claims.OUTCOMES)."""
  dataset = {"name": "synthetic", "label": "synthetic", "m": 24}
  cells = {
      2: [("local_min", 0.3), ("local_min", 0.25), ("local_min", 1e-30),
          ("local_min", 0.35), ("local_min", 0.4), ("saddle", 0.1),
          ("non_differentiable", 0.2), ("escaping", 1e-30),
          ("undecided", 0.15), ("diverged", None)],
      4: [("local_min", 0.2), ("local_min", 0.22), ("local_min", 0.24),
          ("saddle", 0.05), ("saddle", 0.3), ("escaping", 0.01),
          ("kink_min", 0.02), ("failed", 0.1), ("uncertified", None),
          ("diverged", None)]}
  rows = []
  for width, members in cells.items():
    for seed, (outcome, loss) in enumerate(members):
      row = {"depth": 1, "width": width, "seed": seed, "dataset": dataset,
             "activation": "tanh", "loss": 0.5 if loss is None else loss + 1e-3,
             "diverged": outcome == "diverged"}
      if outcome == "diverged":
        row["loss"] = None
        rows.append(row)
        continue
      row.update(tolerances=DEFAULT.to_dict(), loss_reference=1.0,
                 linear_opt=LINEAR, rf_opt=0.45)
      if outcome == "uncertified":  # certify off: no outcome, no refinement
        rows.append(row)
        continue
      row.update(outcome="local_min" if outcome == "failed" else outcome,
                 outcome_reason="by hand", loss_refined=loss,
                 identity_gap_last=1e-18, identity_gap_full=1e-18,
                 inclusion_residual_linear=0.3, rank_D_frac=0.5, rank_D=12,
                 rank_D_loose=12)
      if row["outcome"] in ("local_min", "saddle", "non_differentiable"):
        row.update(verdict=row["outcome"], lambda_min=0.1, lambda_max=3.0)
      if outcome == "failed":  # its theory raised after the outcome
        row["error"] = "FloatingPointError: boom"
      rows.append(row)
  return rows


class EveryOutcomeReportTest(absltest.TestCase):

  def test_one_source_of_counts(self):
    workdir = tempfile.mkdtemp()
    path = records.results_path(workdir)
    for row in _every_outcome_rows():
      records.append_row(path, row)
    report.write_report(workdir)
    rows = records.read_workdir_rows(workdir)
    self.assertLen(rows, 20)
    expected = collections.Counter((r["width"], claims.outcome(r))
                                   for r in rows)
    totals = collections.Counter(map(claims.outcome, rows))
    # The fixture has every outcome, in these numbers.
    self.assertEqual(dict(totals), {
        "local_min": 8, "kink_min": 1, "saddle": 3, "non_differentiable": 1,
        "escaping": 2, "undecided": 1, "diverged": 2, "failed": 1,
        "uncertified": 1})
    self.assertEqual(set(totals), set(claims.OUTCOMES))

    # report.md: the members-by-outcome table, one line per cell.
    with open(os.path.join(workdir, report.REPORT_FILE)) as f:
      text = f.read()
    section = text.split("## Members by outcome\n\n", 1)[1].split("\n\n")[0]
    header, _, *lines = section.splitlines()
    self.assertEqual(header, "| " + " | ".join(
        ["depth", "width", *claims.OUTCOMES]) + " |")
    self.assertLen(lines, 2)
    for line in lines:
      depth, width, *counts = [int(c) for c in line.strip("|").split("|")]
      self.assertEqual(depth, 1)
      self.assertEqual(counts, [expected[(width, o)]
                                for o in claims.OUTCOMES], line)
    self.assertIn(
        "Tested on the 8 certified local minima (1 of them with zero loss, "
        "counted apart) of 8 local_min, 1 kink_min, 3 saddle, "
        "1 non_differentiable, 2 escaping, 1 undecided, 2 diverged, 1 failed, 1 uncertified "
        "members.", text)

    # summary.csv: n_<outcome> per cell, summing to the cell's members.
    with open(os.path.join(workdir, records.SUMMARY_FILE)) as f:
      table = list(csv.DictReader(f))
    self.assertEqual([int(e["width"]) for e in table], [2, 4])
    for entry in table:
      width = int(entry["width"])
      for o in claims.OUTCOMES:
        self.assertEqual(int(entry[f"n_{o}"]), expected[(width, o)], o)
      self.assertEqual(int(entry["n_members"]), 10)
      # The escaping member at L = 1e-30 is no zero-loss minimum.
      self.assertEqual(int(entry["n_local_min_zero_loss"]),
                       1 if width == 2 else 0)
    self.assertEqual(table[0]["local_min_loss_median"], "0.3")
    self.assertEqual(table[1]["local_min_loss_median"], "0.22")
    self.assertEqual((table[0]["too_few_minima"], table[1]["too_few_minima"]),
                     ("False", "True"))

    # claims.json: (A) tests exactly the local_min members (zero loss apart).
    with open(os.path.join(workdir, report.CLAIMS_FILE)) as f:
      table = json.load(f)
    self.assertEqual(table, report.study_claims(rows))
    identities = [e for e in table if e["claim"] == "A"]
    self.assertLen(identities, 2)
    for entry in identities:
      self.assertEqual((entry["tested"], entry["zero_loss_apart"]),
                       (totals["local_min"] - 1, 1), entry["test"])
      self.assertEqual(entry["holds"], entry["tested"])
    self.assertLen(claims.certified(rows), totals["local_min"])

    # The sweep's totals line and each cell's line.
    config = sweep.get_config()
    config.depths, config.widths, config.num_seeds = (1,), (2, 4), 10
    log = []
    sweep._totals(config, rows, log.append)
    self.assertEqual(log[0], (
        "grid: 20 of 20 members recorded: 8 local_min, 1 kink_min, 3 saddle, "
        "1 non_differentiable, 2 escaping, 1 undecided, 2 diverged, "
        "1 failed, 1 uncertified"))
    counted = dict(
        (o, int(n)) for n, o in re.findall(r"(\d+) (\w+)",
                                           log[0].split("recorded: ", 1)[1]))
    self.assertEqual(counted, dict(totals))
    self.assertIn("warning: 2 of 20 members diverged", log)
    for width in (2, 4):
      line = report.cell_line(1, width, [r for r in rows
                                         if r["width"] == width])
      counts = dict((o, int(n)) for n, o in re.findall(
          r"(\d+) (\w+)", line.split("(", 1)[1].split(")")[0]))
      self.assertEqual(counts, {o: expected[(width, o)]
                                for o in claims.OUTCOMES
                                if expected[(width, o)]})


if __name__ == "__main__":
  absltest.main()
