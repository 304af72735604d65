"""The claims table: does each claim (A)-(E) hold, on how many points, and
could its test have failed?

``claims_table(rows)`` reads the result rows of one study (one data set, one
model family) and returns one entry per test of docs/theory.md, "Identities
at a critical point", with the tolerance it uses, the number of certified
local minima tested, how many satisfied it, the zero-loss (interpolating)
minima counted apart, and whether the test was informative on these data
(docs/theory.md#which-tests-are-informative):

* (A) and (D) hold at every critical point by construction (grad L = 2c D^T r):
  they check the certificate and the numerics, not the paper.
* (B) applies to positively homogeneous activations without a skip.
* (C) is split: points where col(I kron [X 1]) is in col(D) (the bound must
  hold) and points where it is not (a control: the bound may fail). It is
  informative only where some member lies above L*_linear and where the
  inclusion is not implied by full row rank of D. With a linear skip X S the
  inclusion holds by construction and a zero gradient already makes the
  residual orthogonal to [X 1], so the bound follows from criticality: it
  checks the instrument, like (A).
* (E): the values of minima are tested as statistics in ``lminima.study.trend``
  (its ``claim_entry`` joins this table in the report); here only the rank
  of D, compared between neighbouring cells of at least ``MIN_POINTS``
  certified minima (uninformative: it counts parameters).

Only members whose outcome is ``local_min`` are tested; every other member is
counted by ``outcome`` in the report, never dropped. Every tolerance is the
rows' own (``lminima.core.tolerances.Tolerances``, recorded in each row) and
relative: identity gaps to ``max(L, identity_floor_rtol L_ref)``, the Euler
residual to ``||vec Yhat||``, the subspace bound to L*_linear; zero loss is
``L <= zero_loss_rtol * L_ref`` (rounding).

Example:
  >>> rows = [{"depth": 1, "width": 2, "outcome": "local_min",
  ...          "loss": 0.31, "loss_refined": 0.3, "linear_opt": 0.5,
  ...          "loss_reference": 2.0, "identity_gap_last": 1e-15,
  ...          "inclusion_residual_linear": 0.2, "rank_D": 10,
  ...          "rank_D_loose": 10, "rank_D_frac": 0.1}]
  >>> entry = claims_table(rows)[0]
  >>> entry["claim"], entry["tested"], entry["holds"]
  ('A', 1, 1)
"""

from __future__ import annotations

import collections
import math
from typing import Any, Sequence

import numpy as np

from lminima.core.tolerances import DEFAULT, Tolerances
from lminima.critical import outcomes
from lminima.theory import identities

MIN_POINTS = 5
"""Fewest certified minima of a cell for its median to enter a trend."""

TREND_RTOL = 0.05
"""(E): a median counts as no worse when <= (1 + TREND_RTOL) times the
previous one (seed noise of a handful of points is larger than rounding)."""

CLAIM_FIELDS = ("claim", "test", "tolerance", "tested", "holds",
                "zero_loss_apart", "informative")


def _num(value: Any) -> float | None:
  if value is None:
    return None
  value = float(value)
  return value if math.isfinite(value) else None


def tolerances(rows: Sequence[dict[str, Any]]) -> Tolerances:
  """The tolerances the rows were decided with (the first row that records
  them; ``DEFAULT`` for none)."""
  for row in rows:
    if row.get("tolerances"):
      return Tolerances(**row["tolerances"])
  return DEFAULT


def zero_floor(row: dict[str, Any], tol: Tolerances) -> float:
  """The loss at rounding for this row's data (0 without ``loss_reference``)."""
  return tol.zero_floor(_num(row.get("loss_reference")) or 0.0)


def is_zero_loss(row: dict[str, Any], tol: Tolerances = DEFAULT) -> bool:
  """Whether a row's refined loss is zero up to rounding (interpolation)."""
  loss = _num(row.get("loss_refined"))
  return loss is not None and loss <= zero_floor(row, tol)


def below_linear(row: dict[str, Any], tol: Tolerances = DEFAULT) -> bool:
  """(C): ``L <= L*_linear (1 + bound_rtol)`` (+ the zero floor)."""
  loss, linear = _num(row.get("loss_refined")), _num(row.get("linear_opt"))
  return (loss is not None and linear is not None and identities.below(
      loss, linear, tol.bound_rtol, zero_floor(row, tol)))


def certified(rows: Sequence[dict[str, Any]],
              among: Sequence[str] = ("local_min",)
              ) -> list[dict[str, Any]]:
  """The members whose outcome is in ``among`` (differentiable local
  minima, by default; ``MINIMA`` adds the nonsmooth ones), with a finite
  loss."""
  return [r for r in rows if outcome(r) in among
          and _num(r.get("loss_refined")) is not None]


MINIMA = ("local_min", "kink_min")
"""Certified local minima of L: differentiable, and on relu kinks."""


OUTCOMES = outcomes.OUTCOMES + ("uncertified",)
"""Every member's outcome (``outcome``), in the report's order."""


def outcome(row: dict[str, Any]) -> str:
  """What became of one member: ``diverged`` (training), ``failed`` (its
  analysis raised), the outcome decided once by ``lminima.critical.outcomes.
  decide_member``, or ``uncertified`` when certification was off."""
  if row.get("diverged"):
    return "diverged"
  if row.get("error"):
    return "failed"
  return row.get("outcome") or "uncertified"


def full_row_rank(row: dict[str, Any]) -> bool:
  """rank D = m d_y (at the default tolerance)."""
  return row.get("rank_D_frac") is not None and float(row["rank_D_frac"]) >= 1


def ranks_disagree(row: dict[str, Any]) -> bool:
  """rank D differs between the two recorded tolerances."""
  return (row.get("rank_D") is not None
          and row.get("rank_D_loose") is not None
          and int(row["rank_D"]) != int(row["rank_D_loose"]))


def _entry(claim: str, test: str, tolerance: str, points: list[dict],
           holds: Any, zero: int, informative: str) -> dict[str, Any]:
  return {"claim": claim, "test": test, "tolerance": tolerance,
          "tested": len(points), "holds": sum(bool(holds(r)) for r in points),
          "zero_loss_apart": zero, "informative": informative}


def _split(points: list[dict], tol: Tolerances) -> tuple[list[dict], int]:
  nonzero = [r for r in points if not is_zero_loss(r, tol)]
  return nonzero, len(points) - len(nonzero)


def _identity_claims(minima: list[dict], tol: Tolerances
                     ) -> list[dict[str, Any]]:
  by_construction = "no: holds at every critical point (grad L = 2c D^T r)"
  relative = (f"gap <= {tol.identity_rtol:g} max(L, "
              f"{tol.identity_floor_rtol:g} L_ref)")

  def gap_holds(key):
    return lambda r: float(r[key]) <= tol.identity_rtol * max(
        float(r["loss_refined"]),
        tol.identity_floor_rtol * (_num(r.get("loss_reference")) or 0.0))
  points, zero = _split([r for r in minima
                         if r.get("identity_gap_last") is not None], tol)
  last = _entry(
      "A", "L = c||(I - F F^+) Y||^2, F the output layer's design",
      relative, points, gap_holds("identity_gap_last"), zero,
      by_construction)
  points, zero = _split([r for r in minima
                         if r.get("identity_gap_full") is not None], tol)
  disagree = sum(ranks_disagree(r) for r in points)
  full = _entry(
      "A", "L = c||P_N[D(theta)] vec Y||^2 (full D, default rank tolerance)",
      relative, points, gap_holds("identity_gap_full"), zero,
      by_construction + f"; rank D differs between the two tolerances at "
      f"{disagree} of them")
  points, zero = _split([r for r in minima
                         if r.get("euler_residual_max") is not None], tol)
  euler = _entry(
      "B", "vec Yhat = D^(l) vec W^(l) (Euler, homogeneous activations)",
      f"residual <= {tol.euler_rtol:g} ||vec Yhat||", points,
      lambda r: float(r["euler_residual_max"]) <= tol.euler_rtol * float(
          r.get("yhat_norm") or 0.0), zero,
      "no: exact for positively homogeneous nets" if points or zero else
      "not applicable: the activation is not positively homogeneous")
  return [last, full, euler]


def _bound_claims(rows: Sequence[dict], minima: list[dict], tol: Tolerances
                  ) -> list[dict[str, Any]]:
  measured = [r for r in minima
              if r.get("inclusion_residual_linear") is not None
              and _num(r.get("linear_opt")) is not None]
  inside = [r for r in measured
            if float(r["inclusion_residual_linear"]) <= tol.inclusion_tol]
  outside = [r for r in measured
             if float(r["inclusion_residual_linear"]) > tol.inclusion_tol]

  def above_linear(r):
    linear = _num(r.get("linear_opt"))
    values = [_num(r.get(k)) for k in ("loss", "loss_refined")]
    return linear is not None and any(
        v is not None and v > linear * (1 + tol.bound_rtol)
        + zero_floor(r, tol) for v in values)
  n_above = sum(above_linear(r) for r in rows if not r.get("diverged"))
  trivial = ("no: every member (certified or not) lies below L*_linear, so "
             "the bound is trivially met" if not n_above else None)
  tolerance = (f"residual <= {tol.inclusion_tol:g}; L <= L*_lin (1 + "
               f"{tol.bound_rtol:g})")
  points, zero = _split(inside, tol)
  not_full = sum(not full_row_rank(r) for r in points)
  members = sum(not r.get("diverged") for r in rows)
  if trivial:
    informative = trivial
  elif not points:
    informative = "no points with the inclusion"
  elif all(r.get("skip") for r in points):
    informative = ("no: with a linear skip, criticality alone gives it (a "
                   "zero gradient makes the residual orthogonal to [X 1])")
  elif not not_full:
    informative = "no: the inclusion holds only where D has full row rank"
  else:
    informative = (f"yes: {n_above} of {members} members lie above "
                   f"L*_linear; {not_full} tested points without full row "
                   "rank")
  must = _entry(
      "C", "inclusion col([X 1] kron I) in col(D) => L <= L*_linear",
      tolerance, points, lambda r: below_linear(r, tol), zero, informative)
  points, zero = _split(outside, tol)
  control = _entry(
      "C", "control: inclusion fails; L <= L*_linear anyway?",
      tolerance, points, lambda r: below_linear(r, tol), zero,
      trivial or ("yes: the bound may fail here" if points
                  else "no points without the inclusion"))
  # (D)'s conclusion is zero loss: its tested points include the zero-loss
  # ones, which are also shown apart.
  rank = _entry(
      "D", "rank D = m d_y => L = 0", f"L <= {tol.zero_loss_rtol:g} L_ref",
      [r for r in minima if full_row_rank(r)],
      lambda r: is_zero_loss(r, tol),
      sum(is_zero_loss(r, tol) for r in minima),
      "no: holds at every critical point (grad L = 2c D^T r)")
  return [must, control, rank]


def _medians(minima: list[dict], key: str) -> dict[tuple[int, int], tuple]:
  cells = collections.defaultdict(list)
  for r in minima:
    value = _num(r.get(key))
    if value is not None:
      cells[(int(r["depth"]), int(r["width"]))].append(value)
  return {cell: (float(np.median(v)), len(v)) for cell, v in cells.items()}


def trend_comparisons(minima: list[dict], key: str, worse: Any,
                      cells: Sequence[tuple[int, int]] = ()
                      ) -> tuple[list[tuple], list[tuple[int, int]]]:
  """Neighbouring-cell comparisons of the median of ``key``.

  Returns ``(comparisons, too_few)``: each comparison is ``(cell, next_cell,
  median, next_median, no_worse)`` for the next width at the same depth and
  the next depth at the same width, among the cells of at least
  ``MIN_POINTS`` points; ``too_few`` lists the cells left out (those of
  ``cells``, the study's (depth, width) cells, without any point included).
  """
  medians = _medians(minima, key)
  for cell in cells:
    medians.setdefault(cell, (None, 0))
  enough = {c: m for c, (m, n) in medians.items() if n >= MIN_POINTS}
  depths = sorted({d for d, _ in enough})
  widths = sorted({w for _, w in enough})
  comparisons = []
  for axis in ("width", "depth"):
    for fixed in (depths if axis == "width" else widths):
      cells = sorted(c for c in enough
                     if (c[0] if axis == "width" else c[1]) == fixed)
      for a, b in zip(cells[:-1], cells[1:]):
        comparisons.append((a, b, enough[a], enough[b],
                            not worse(enough[a], enough[b])))
  too_few = sorted(c for c, (_, n) in medians.items() if n < MIN_POINTS)
  return comparisons, too_few


def _trend_claims(minima: list[dict], tol: Tolerances
                  ) -> list[dict[str, Any]]:
  """(E)'s rank row; the values of minima are tested as statistics by
  ``lminima.study.trend`` (``trend.claim_entry``), which the report adds."""
  zero = sum(is_zero_loss(r, tol) for r in minima)
  ranks, too_few = trend_comparisons(minima, "rank_D_frac",
                                     lambda a, b: b < a * (1 - TREND_RTOL))
  note = (f"; {len(too_few)} cells with < {MIN_POINTS} certified minima left "
          "out" if too_few else "")
  return [{
      "claim": "E", "test": "median rank D / (m d_y) does not drop with the "
      "next width or depth", "tolerance": f"next >= (1 - {TREND_RTOL:g}) "
      "previous", "tested": len(ranks), "holds": sum(c[-1] for c in ranks),
      "zero_loss_apart": zero,
      "informative": "no: rank D = min(n_params, m d_y) at generic points "
      "counts parameters" + note}]


def claims_table(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
  """The claims of docs/theory.md tested on one study's rows.

  Args:
    rows: results.jsonl rows of one study (``lminima.study.records``).

  Returns:
    One dict per test, keys ``CLAIM_FIELDS``: ``tested`` counts the certified
    local minima with L > 0 the test applies to, ``holds`` those that
    satisfied it within ``tolerance``, ``zero_loss_apart`` the interpolating
    minima (not in ``tested``, except for (D), whose premise they meet), and
    ``informative`` says whether the test could have failed here and why not.
    For (E)'s rank row, ``tested`` counts comparisons of neighbouring
    cells.
  """
  minima = certified(rows)
  tol = tolerances(rows)
  return [*_identity_claims(minima, tol), *_bound_claims(rows, minima, tol),
          *_trend_claims(minima, tol)]


def claims_markdown(table: Sequence[dict[str, Any]]) -> str:
  """The claims table as a markdown table."""
  lines = ["| claim | test | tolerance | tested | holds | zero-loss apart "
           "| informative here? |", "|---|---|---|---|---|---|---|"]
  for e in table:
    # A bare "|" (the norms) would split a markdown cell.
    test, tolerance, informative = (
        e[k].replace("|", "\\|") for k in ("test", "tolerance",
                                            "informative"))
    lines.append(f"| ({e['claim']}) | {test} | {tolerance} | "
                 f"{e['tested']} | {e['holds']} | {e['zero_loss_apart']} | "
                 f"{informative} |")
  return "\n".join(lines)
