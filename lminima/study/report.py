"""The study's report, from result records (results.jsonl rows) only.

``summarize`` groups rows by (depth, width) and reports min / median / max of
the end-of-training ``loss`` over the members that did not diverge, the same
statistics of ``loss_refined`` over the members certified ``local_min`` only
(a refined point that is not a certified minimum says nothing about minima),
the count of members per outcome (``lminima.study.claims.outcome``, the one
source of counts of every output), and, again over the certified minima only,
the median ``rank_D_frac``, the share below the linear-model optimum and the
number of zero-loss (interpolating) minima, which every claim counts apart
(docs/theory.md#which-tests-are-informative).

``write_report(workdir)`` writes ``report.md`` (the claims table of
``lminima.study.claims``, members by outcome, certified minima per cell), the
figures (i)-(v) of ``lminima.study.figures``, ``summary.csv`` and
``claims.json``.
"""

from __future__ import annotations

import collections
import csv
import json
import math
import os
from typing import Any, Iterable, Sequence

import numpy as np

from lminima.core import files
from lminima.critical import kinks
from lminima.study import claims
from lminima.study import figures
from lminima.study import records
from lminima.study import trend

SUMMARY_FIELDS = (
    "depth", "width", "n_members", *(f"n_{o}" for o in claims.OUTCOMES),
    "loss_min", "loss_median", "loss_max",
    "n_local_min_zero_loss", "local_min_loss_min",
    "local_min_loss_median", "local_min_loss_max", "too_few_minima",
    "median_rank_D_frac", "n_rank_disagree", "frac_below_linear",
    "linear_opt", "rf_opt_median",
)

REPORT_FILE = "report.md"
CLAIMS_FILE = "claims.json"
FIGURE_FILES = {
    "loss": records.FIGURE_FILE, "rank": "rank_vs_width.png",
    "outcomes": "outcomes.png", "linear_bound": "linear_bound.png",
    "saddles": "minima_and_saddles.png"}
"""The report's figures (i)-(v), written beside report.md."""


def _finite(values: Iterable[Any]) -> list[float]:
  return [float(v) for v in values
          if v is not None and math.isfinite(float(v))]


def _stats(values: Sequence[float]) -> tuple[Any, Any, Any]:
  if not values:
    return None, None, None
  return min(values), float(np.median(values)), max(values)


def summarize(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
  """One summary dict per (depth, width), sorted; keys are SUMMARY_FIELDS."""
  groups = collections.defaultdict(list)
  for row in rows:
    groups[(row["depth"], row["width"])].append(row)
  tol = claims.tolerances(rows)
  summary = []
  for (depth, width), members in sorted(groups.items()):
    sane = [r for r in members if not r.get("diverged")]
    entry = {"depth": depth, "width": width, "n_members": len(members)}
    outcomes = collections.Counter(map(claims.outcome, members))
    for o in claims.OUTCOMES:
      entry[f"n_{o}"] = outcomes[o]
    entry["loss_min"], entry["loss_median"], entry["loss_max"] = _stats(
        _finite(r.get("loss") for r in sane))
    certified = claims.certified(members)
    minima = _finite(r.get("loss_refined") for r in certified)
    entry["n_local_min_zero_loss"] = sum(claims.is_zero_loss(r, tol)
                                         for r in certified)
    (entry["local_min_loss_min"], entry["local_min_loss_median"],
     entry["local_min_loss_max"]) = _stats(minima)
    entry["too_few_minima"] = len(minima) < claims.MIN_POINTS
    ranks = _finite(r.get("rank_D_frac") for r in certified)
    entry["median_rank_D_frac"] = float(np.median(ranks)) if ranks else None
    entry["n_rank_disagree"] = sum(map(claims.ranks_disagree, certified))
    below = [claims.below_linear(r, tol) for r in certified
             if r.get("linear_opt") is not None]
    entry["frac_below_linear"] = sum(below) / len(below) if below else None
    linear = _finite(r.get("linear_opt") for r in members)
    entry["linear_opt"] = linear[0] if linear else None
    rf = _finite(r.get("rf_opt") for r in members)
    entry["rf_opt_median"] = float(np.median(rf)) if rf else None
    summary.append(entry)
  return summary


def cell_line(depth: int, width: int, rows: Sequence[dict[str, Any]]) -> str:
  """One line for a finished (depth, width) cell: members, their counts by
  outcome (``lminima.study.claims.outcome``), median certified loss."""
  counts = collections.Counter(map(claims.outcome, rows))
  parts = [f"{counts[o]} {o}" for o in claims.OUTCOMES if counts[o]]
  minima = [r["loss_refined"] for r in claims.certified(rows)]
  median = (f"median certified loss {np.median(minima):.3e}"
            if len(minima) >= claims.MIN_POINTS else
            f"fewer than {claims.MIN_POINTS} certified minima, no median")
  return (f"depth {depth} width {width}: {len(rows)} members "
          f"({', '.join(parts) or 'none certified'}); {median}")


def write_summary_csv(summary: Sequence[dict[str, Any]], path: str) -> None:
  """Writes ``summarize`` output as CSV (empty cells for missing values)."""
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=SUMMARY_FIELDS)
    writer.writeheader()
    for entry in summary:
      writer.writerow({k: ("" if entry.get(k) is None else entry[k])
                       for k in SUMMARY_FIELDS})


def _fmt(value: Any) -> str:
  if value is None:
    return "-"
  if isinstance(value, bool):
    return "yes" if value else "no"
  if isinstance(value, float):
    return f"{value:.3g}"
  return str(value)


def _markdown_table(header: Sequence[str], lines: Iterable[Sequence[Any]]
                    ) -> str:
  out = ["| " + " | ".join(header) + " |",
         "|" + "---|" * len(header)]
  out += ["| " + " | ".join(map(_fmt, line)) + " |" for line in lines]
  return "\n".join(out)


def _describe(rows: Sequence[dict[str, Any]]) -> list[str]:
  """The study in a few lines: data, model, grid, versions (from the rows)."""
  first = rows[0]
  data = first.get("dataset") or {}
  label = data.get("label") or data.get("name")
  per_cell = collections.Counter((r["depth"], r["width"]) for r in rows)
  fewest, most = min(per_cell.values()), max(per_cell.values())
  grid = (sorted({r["depth"] for r in rows}), sorted({r["width"] for r in rows}),
          str(most) if fewest == most else f"{fewest} to {most}")
  optimizer = first.get("optimizer") or {}
  versions = first.get("versions") or {}
  return [
      f"- data: {label} ({', '.join(f'{k}={v}' for k, v in sorted(data.items()) if k not in ('name', 'label'))})",
      f"- model: MLP, activation {first.get('activation')}, bias "
      f"{first.get('bias')}, linear skip {bool(first.get('skip'))}, "
      f"normalization {first.get('normalization')}",
      f"- training: {optimizer.get('name')}, learning rate "
      f"{optimizer.get('learning_rate')}, {optimizer.get('steps')} steps, "
      f"batch {optimizer.get('batch_size') or 'full'}",
      f"- grid: depths {grid[0]}, widths {grid[1]}, {grid[2]} seeds a cell: "
      f"{len(rows)} members recorded",
      f"- library versions: {', '.join(f'{k} {v}' for k, v in sorted(versions.items()))}",
  ]


def study_claims(rows: Sequence[dict[str, Any]],
                 tests: Sequence[trend.TrendTest] | None = None
                 ) -> list[dict[str, Any]]:
  """The claims table of the report and claims.json: ``claims.
  claims_table`` and (E)'s trend row (``trend.claim_entry``)."""
  tests = trend.trend_tests(rows) if tests is None else tests
  return [*claims.claims_table(rows), trend.claim_entry(rows, tests)]


def findings(table: Sequence[dict[str, Any]],
             tests: Sequence[trend.TrendTest]) -> list[str]:
  """The report's first lines: a sentence per informative claim test and
  per trend question, then what could not be tested."""
  lines = []
  for e in table:
    if e["informative"].startswith("yes") and e["claim"] != "E":
      lines.append(f"({e['claim']}) {e['test']}: holds at {e['holds']} of "
                   f"{e['tested']} certified minima.")
  lines += trend.findings(tests)
  informative = {e["claim"] for e in table
                 if e["informative"].startswith("yes")}
  untested = sorted({f"({e['claim']})" for e in table
                     if e["claim"] not in informative})
  if untested:
    lines.append("Not informative here (reasons in the claims table): "
                 + ", ".join(untested) + ".")
  return lines


def coverage_markdown(summary: Sequence[dict[str, Any]], min_certified: int,
                      max_members: int) -> str:
  """The coverage section: per cell, the members tried and certified, and
  whether the cell reached ``min_certified`` certified minima or stopped at
  ``max_members`` members (with what its members became).

  Example:
    >>> cell = {"depth": 1, "width": 2, "n_members": 4, "n_local_min": 1,
    ...         **{f"n_{o}": 0 for o in claims.OUTCOMES}}
    >>> cell["n_local_min"], cell["n_escaping"] = 1, 3
    >>> print(coverage_markdown([cell], 2, 4).splitlines()[-1])
    | 1 | 2 | 4 | 1 | stopped at 4 members: 1 local_min, 3 escaping |
  """
  lines = []
  for e in summary:
    if e["n_local_min"] >= min_certified:
      status = f"reached {min_certified}"
    elif e["n_members"] >= max_members:
      status = f"stopped at {max_members} members: " + ", ".join(
          f"{e[f'n_{o}']} {o}" for o in claims.OUTCOMES if e[f"n_{o}"])
    else:
      status = "incomplete: rerun to resume"
    lines.append([e["depth"], e["width"], e["n_members"], e["n_local_min"],
                  status])
  return _markdown_table(["depth", "width", "members", "certified", "status"],
                         lines)


def kinks_markdown(rows: Sequence[dict[str, Any]]) -> list[str]:
  """The kinks section: how the members whose continuation ended with a
  kink decision ended (none without one).

  Example:
    >>> rows = [{"outcome": "kink_min", "kink_verdict": "kink_min",
    ...          "kink_n": 30, "kink_sides": 2 ** 30, "kink_all_sides": True},
    ...         {"outcome": "undecided", "kink_verdict": "undecided",
    ...          "kink_n": 12, "kink_sides": 256, "kink_all_sides": False}]
    >>> print(kinks_markdown(rows)[2])
    2 members ended with a kink decision: 1 kink_min (1 with more sides than were enumerated, bounded at once), 1 undecided (1 on a sample of the sides). Kinks per member: 12 to 30.
  """
  decided = [r for r in rows if r.get("kink_verdict")]
  if not decided:
    return []
  by = collections.Counter(r["kink_verdict"] for r in decided)
  at_once = sum(r["kink_verdict"] == "kink_min"
                and r["kink_sides"] > kinks.MAX_SIDES for r in decided)
  sampled = sum(not r["kink_all_sides"] for r in decided)
  counts = [f"{by['kink_min']} kink_min" + (
      f" ({at_once} with more sides than were enumerated, bounded at once)"
      if at_once else "")] if by["kink_min"] else []
  if by["undecided"]:
    counts.append(f"{by['undecided']} undecided" + (
        f" ({sampled} on a sample of the sides)" if sampled else ""))
  n_kinks = [r["kink_n"] for r in decided]
  return ["## Kinks", "",
          f"{len(decided)} members ended with a kink decision: "
          + ", ".join(counts) + f". Kinks per member: {min(n_kinks)} to "
          f"{max(n_kinks)}.", "",
          "On a kink the loss is not differentiable: a kink_min is a "
          "nonsmooth local minimum, decided side by side "
          "(docs/theory.md#kinks). The identities (A)-(D) are tested on "
          "differentiable local_min points only; (E) counts both.", ""]


def report_markdown(rows: Sequence[dict[str, Any]], title: str = "",
                    figure_files: dict[str, str] | None = None, *,
                    summary: Sequence[dict[str, Any]] | None = None,
                    table: Sequence[dict[str, Any]] | None = None,
                    tests: Sequence[trend.TrendTest] | None = None,
                    coverage: tuple[int, int] | None = None) -> str:
  """report.md's text for one study's rows (figures linked by file name);
  ``summary``, ``table`` and ``tests``, when the caller has them, are
  ``summarize(rows)``, ``study_claims(rows)`` and ``trend.trend_tests(rows)``;
  ``coverage`` is the study's ``(min_certified, max_members)`` when it added
  seeds to cells short of certified minima.
  """
  summary = summarize(rows) if summary is None else summary
  tests = trend.trend_tests(rows) if tests is None else tests
  table = study_claims(rows, tests) if table is None else table
  outcomes = collections.Counter(map(claims.outcome, rows))
  minima = claims.certified(rows)
  tol = claims.tolerances(rows)
  text = [f"# {title or 'Depth x width study'}", "", "## Findings", "",
          *[f"- {line}" for line in findings(table, tests)], "",
          *_describe(rows), "", "## Claims", "",
          f"Tested on the {len(minima)} certified local minima "
          f"({sum(claims.is_zero_loss(r, tol) for r in minima)} of them with "
          "zero loss, "
          "counted apart) of " + ", ".join(
              f"{outcomes[o]} {o}" for o in claims.OUTCOMES if outcomes[o])
          + " members. Mathematics and why a test is or is not informative: "
          "docs/theory.md (\"Identities at a critical point\", \"Which tests "
          "are informative\").", "", claims.claims_markdown(table), "",
          "A member is a certified local minimum when its gradient is "
          "critical relative to its loss and either second-order "
          "sufficiency holds or a descent probe found no lower value "
          "(docs/theory.md#certificates). Tolerances "
          "(lminima/core/tolerances.py): "
          + ", ".join(f"{k} {v:g}" for k, v in tol.to_dict().items()) + ".",
          ""]
  text += [trend.markdown(rows, tests), ""]
  few = [f"{e['depth']}x{e['width']}" for e in summary if e["too_few_minima"]]
  if few:
    text += [f"Cells with fewer than {claims.MIN_POINTS} certified minima "
             f"(no median is drawn or compared for them): {', '.join(few)}.",
             ""]
  if coverage:
    text += ["## Coverage", "",
             f"Cells with fewer than {coverage[0]} certified local minima got "
             f"more seeds, up to {coverage[1]} members per cell "
             "(lminima.study.coverage).", "",
             coverage_markdown(summary, *coverage), ""]
  text += kinks_markdown(rows)
  text += ["## Members by outcome", "", _markdown_table(
      ["depth", "width", *claims.OUTCOMES],
      [[e["depth"], e["width"], *(e[f"n_{o}"] for o in claims.OUTCOMES)]
       for e in summary]), "",
           "## Certified local minima per cell", "", _markdown_table(
      ["depth", "width", "members", "certified", "zero loss", "min L",
       "median L", "max L", "median L end of training", "L* linear",
       "L* random features", "median rank D / (m d_y)",
       "rank tolerance-dependent"],
      [[e["depth"], e["width"], e["n_members"], e["n_local_min"],
        e["n_local_min_zero_loss"], e["local_min_loss_min"],
        None if e["too_few_minima"] else e["local_min_loss_median"],
        e["local_min_loss_max"], e["loss_median"], e["linear_opt"],
        e["rf_opt_median"], e["median_rank_D_frac"], e["n_rank_disagree"]]
       for e in summary]), "",
           f"Medians over fewer than {claims.MIN_POINTS} points are left "
           "out (-).", ""]
  captions = {
      "loss": "(i) certified local-minimum loss vs width",
      "rank": "(ii) rank of D at certified minima",
      "outcomes": "(iii) every member's outcome per cell",
      "linear_bound": "(iv) certified loss vs the linear optimum and the "
                      "inclusion of (C)",
      "saddles": "(v) certified minima and saddles per cell"}
  for key, name in (figure_files or {}).items():
    text += [f"![{captions[key]}]({name})", ""]
  return "\n".join(text)


def write_report(workdir: str, title: str = "") -> list[str]:
  """Writes report.md, claims.json, summary.csv and the figures of a workdir.

  Args:
    workdir: a sweep's work directory (its results files are read and merged,
      shards included, by ``lminima.study.records.read_workdir_rows``).
    title: the report's heading (default: the data set's label).

  Returns:
    The paths written.

  Raises:
    lminima.study.records.WorkdirError: when the workdir holds no result rows.
  """
  rows = records.read_workdir_rows(workdir)
  if not rows:
    raise records.WorkdirError(f"{workdir}: no result rows to report")
  data = rows[0].get("dataset") or {}
  title = title or f"{data.get('label') or data.get('name')}: depth x width"
  written = []

  def put(name, write):
    path = os.path.join(workdir, name)
    files.write_atomic(path, write)
    written.append(path)
  summary = summarize(rows)
  put(records.SUMMARY_FILE, lambda p: write_summary_csv(summary, p))
  tests = trend.trend_tests(rows)
  table = study_claims(rows, tests)

  def dump(path):
    with open(path, "w") as f:
      json.dump(table, f, indent=1)
  put(CLAIMS_FILE, dump)
  drawn = {}
  if any(claims.certified(rows)) or any(not r.get("diverged") for r in rows):
    plots = {"loss": lambda p: figures.plot_loss_vs_width(rows, p, title),
             "rank": lambda p: figures.plot_rank(rows, p),
             "outcomes": lambda p: figures.plot_outcomes(rows, p),
             "linear_bound": lambda p: figures.plot_linear_bound(rows, p),
             "saddles": lambda p: figures.plot_minima_and_saddles(rows, p)}
    for key, plot in plots.items():
      put(FIGURE_FILES[key], plot)
      drawn[key] = FIGURE_FILES[key]

  config = records.read_json(os.path.join(workdir, records.CONFIG_FILE))
  coverage = ((config["min_certified"], config["max_members"])
              if (config or {}).get("min_certified") else None)

  def text(path):
    with open(path, "w") as f:
      f.write(report_markdown(rows, title, drawn, summary=summary,
                              table=table, tests=tests, coverage=coverage))
  put(REPORT_FILE, text)
  return written
