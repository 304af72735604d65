"""Claim (E) as statistics: trend tests over every member, with effect sizes,
intervals, power and a correction for the number of tests.

The paper's first claim is that local-minimum values tend to improve toward
the global minimum value as depth and width grow (docs/theory.md, "(E)
Depth and width trend"). Comparing two medians is an anecdote; here each
question is a trend test over a whole row (width at a fixed depth) or column
(depth at a fixed width) of the study's grid:

* (E1) the values of certified local minima with L > 0 (``claims.MINIMA``:
  differentiable ones and those on relu kinks, ``kink_min``);
* (E2) whether training ends at a certified *bad* local minimum: one with
  L > 0 (not zero loss) that exceeds the best value any member of the study
  reached in the same (depth, width) cell by more than ``BAD_MARGIN``
  (relative); per cell the rate among all members, with a Wilson interval;
* (E3) the value every member reaches (training, refinement and the
  continuation): its certified value, or the last value reached, which for
  an ``escaping`` member is the upper end of the bracket ``[0, L_end]`` of
  its L_inf.

Each test is Spearman's rho between the axis (width or depth) and the values,
with a one-sided permutation p-value for rho < 0 (values fall, i.e. improve,
as the axis grows), a bootstrap 95% interval for rho, and the smallest |rho|
it resolves: with n points, Fisher's z gives ``tanh((z_{1-a} + z_{0.8}) /
sqrt(n - 3))`` at 80% power and level ``a = ALPHA / (number of tests)`` (the
strictest Holm step). P-values are corrected by Holm's step-down method over
all the tests of one study. A test needs at least ``MIN_POINTS_PER_TEST``
points over at least two levels of the axis and values that are not all
equal; otherwise it is reported as not testable, with the reason.

Every random draw is seeded, so the same rows give the same report.

Example:
  >>> rows = [{"depth": 1, "width": w, "seed": s, "outcome": "local_min",
  ...          "loss_refined": 1.0 / w + 0.01 * s, "loss_reference": 1.0}
  ...         for w in (2, 4, 8) for s in range(4)]
  >>> test = trend_tests(rows)[0]
  >>> test.question, test.axis, test.n, round(test.rho, 2), test.p < 0.01
  ('E1', 'width', 12, -0.95, True)
"""

from __future__ import annotations

import collections
import dataclasses
import math
from typing import Any, Sequence

import numpy as np
import scipy.stats

from lminima.study import claims

ALPHA = 0.05
"""Family-wise error rate of one study's trend tests (Holm)."""

BAD_MARGIN = 0.01
"""(E2): a certified minimum is bad when L > (1 + BAD_MARGIN) * the best L
any member reached in its cell."""

MIN_POINTS_PER_TEST = 6
"""Fewest points for a trend test."""

POWER = 0.8
"""The power at which the smallest resolvable |rho| is stated."""

_RESAMPLES = 4000

QUESTIONS = {
    "E1": "values of certified local minima with L > 0",
    "E2": "training ends at a certified bad local minimum (L > "
          f"{1 + BAD_MARGIN:g} x the cell's best)",
    "E3": "value reached by every member (certified, or the last value: "
          "an upper bound of L_inf for escaping members)",
}


@dataclasses.dataclass(frozen=True)
class TrendTest:
  """One trend test (module docstring).

  Attributes:
    question: ``"E1"``, ``"E2"`` or ``"E3"``.
    axis: ``"width"`` (at a fixed depth) or ``"depth"`` (at a fixed width).
    fixed: the depth (axis width) or width (axis depth) held fixed.
    n: points tested; levels: distinct values of the axis among them.
    rho: Spearman's rho (negative: values fall as the axis grows).
    rho_ci: bootstrap 95% interval of rho.
    p: one-sided permutation p-value for rho < 0.
    p_holm: Holm-corrected p-value over the study's tests.
    rho_resolved: the smallest |rho| detected with ``POWER`` at level
      ``ALPHA / (number of tests)``.
    reason: why the test is not testable; None when it is.
  """
  question: str
  axis: str
  fixed: int
  n: int
  levels: int
  rho: float | None = None
  rho_ci: tuple[float, float] | None = None
  p: float | None = None
  p_holm: float | None = None
  rho_resolved: float | None = None
  reason: str | None = None

  @property
  def testable(self) -> bool:
    return self.reason is None

  @property
  def improves(self) -> bool:
    """Values fall significantly (Holm) as the axis grows."""
    return self.testable and self.p_holm is not None and self.p_holm < ALPHA


def _finite(value: Any) -> float | None:
  if value is None:
    return None
  value = float(value)
  return value if math.isfinite(value) else None


def e1_points(rows: Sequence[dict[str, Any]]) -> list[tuple[dict, float]]:
  """(row, value) of the certified minima with L > 0."""
  tol = claims.tolerances(rows)
  return [(r, float(r["loss_refined"]))
          for r in claims.certified(rows, claims.MINIMA)
          if not claims.is_zero_loss(r, tol)]


def cell_best(rows: Sequence[dict[str, Any]]) -> dict[tuple[int, int], float]:
  """The lowest value any member reached in each (depth, width) cell."""
  best: dict[tuple[int, int], float] = {}
  for row, value in e3_points(rows):
    cell = (int(row["depth"]), int(row["width"]))
    best[cell] = min(value, best.get(cell, math.inf))
  return best


def e2_points(rows: Sequence[dict[str, Any]]) -> list[tuple[dict, float]]:
  """(row, 1.0 if it ended at a certified bad minimum else 0.0) of every
  member that reached a value (diverged and failed members are not). A
  zero-loss minimum is a global one, never bad."""
  tol = claims.tolerances(rows)
  best = cell_best(rows)
  out = []
  for row, value in e3_points(rows):
    cell = (int(row["depth"]), int(row["width"]))
    bad = (claims.outcome(row) in claims.MINIMA
           and not claims.is_zero_loss(row, tol)
           and value > (1 + BAD_MARGIN) * best[cell])
    out.append((row, float(bad)))
  return out


def e3_points(rows: Sequence[dict[str, Any]]) -> list[tuple[dict, float]]:
  """(row, the value it reached) of every member that was analysed."""
  return [(r, _finite(r.get("loss_refined"))) for r in rows
          if claims.outcome(r) not in ("diverged", "failed", "uncertified")
          and _finite(r.get("loss_refined")) is not None]


_POINTS = {"E1": e1_points, "E2": e2_points, "E3": e3_points}


def _spearman_rows(x_ranks: np.ndarray, y_ranks: np.ndarray) -> np.ndarray:
  """Pearson correlation of rank rows (Spearman's rho), row by row."""
  x = x_ranks - x_ranks.mean(axis=-1, keepdims=True)
  y = y_ranks - y_ranks.mean(axis=-1, keepdims=True)
  denominator = np.sqrt((x * x).sum(-1) * (y * y).sum(-1))
  with np.errstate(invalid="ignore", divide="ignore"):
    return (x * y).sum(-1) / denominator


def spearman_trend(axis: np.ndarray, values: np.ndarray, seed: int = 0
                   ) -> tuple[float, tuple[float, float], float]:
  """(rho, bootstrap 95% interval, one-sided permutation p for rho < 0)."""
  rng = np.random.default_rng(seed)
  rx = scipy.stats.rankdata(axis)
  ry = scipy.stats.rankdata(values)
  rho = float(_spearman_rows(rx, ry))
  shuffled = rng.permuted(np.tile(ry, (_RESAMPLES, 1)), axis=1)
  null = _spearman_rows(rx[None, :], shuffled)
  p = float((1 + np.sum(null <= rho + 1e-12)) / (1 + _RESAMPLES))
  picks = rng.integers(0, len(axis), (_RESAMPLES, len(axis)))
  boot = _spearman_rows(scipy.stats.rankdata(axis[picks], axis=1),
                        scipy.stats.rankdata(values[picks], axis=1))
  boot = boot[np.isfinite(boot)]
  low, high = np.percentile(boot, [2.5, 97.5]) if boot.size else (rho, rho)
  return rho, (float(low), float(high)), p


def resolved_rho(n: int, level: float, power: float = POWER) -> float:
  """The smallest |rho| a one-sided test at ``level`` detects with ``power``
  on n points (Fisher's z approximation)."""
  z = scipy.stats.norm.ppf(1 - level) + scipy.stats.norm.ppf(power)
  return float(np.tanh(z / math.sqrt(n - 3))) if n > 3 else 1.0


def holm(p_values: Sequence[float]) -> list[float]:
  """Holm's step-down adjusted p-values (monotone, capped at 1)."""
  order = np.argsort(p_values)
  count = len(p_values)
  adjusted = np.empty(count)
  running = 0.0
  for step, i in enumerate(order):
    running = max(running, (count - step) * p_values[i])
    adjusted[i] = min(1.0, running)
  return adjusted.tolist()


def trend_tests(rows: Sequence[dict[str, Any]]) -> list[TrendTest]:
  """Every (E1)-(E3) test of one study's rows, Holm-corrected together.

  Rows along width at each depth, then along depth at each width, for each
  question in turn; a test with too few points or levels says why.
  """
  depths = sorted({int(r["depth"]) for r in rows})
  widths = sorted({int(r["width"]) for r in rows})
  drafts = []
  for question, points_of in _POINTS.items():
    points = points_of(rows)
    for axis, fixed_values in (("width", depths), ("depth", widths)):
      other = "depth" if axis == "width" else "width"
      for fixed in fixed_values:
        mine = [(int(r[axis]), v) for r, v in points if int(r[other]) == fixed]
        x = np.array([a for a, _ in mine], float)
        y = np.array([v for _, v in mine], float)
        levels = len(set(x.tolist()))
        draft = dict(question=question, axis=axis, fixed=fixed, n=len(mine),
                     levels=levels)
        if levels < 2:
          draft["reason"] = f"points at {levels} {axis}(s) only"
        elif len(mine) < MIN_POINTS_PER_TEST:
          draft["reason"] = (f"{len(mine)} points (< {MIN_POINTS_PER_TEST})")
        elif np.all(y == y[0]):
          draft["reason"] = "every value is the same"
        else:
          seed = len(drafts)
          draft["rho"], draft["rho_ci"], draft["p"] = spearman_trend(
              x, y, seed)
        drafts.append(draft)
  tested = [d for d in drafts if "reason" not in d]
  for d, adjusted in zip(tested, holm([d["p"] for d in tested])):
    d["p_holm"] = adjusted
    d["rho_resolved"] = resolved_rho(d["n"], ALPHA / len(tested))
  return [TrendTest(**d) for d in drafts]


def wilson(successes: int, trials: int, confidence: float = 0.95
           ) -> tuple[float, float] | None:
  """Wilson score interval of a proportion (None without trials)."""
  if not trials:
    return None
  ci = scipy.stats.binomtest(successes, trials).proportion_ci(
      confidence_level=confidence, method="wilson")
  return float(ci.low), float(ci.high)


def bootstrap_median(values: Sequence[float], seed: int = 0
                     ) -> tuple[float, float] | None:
  """Percentile bootstrap 95% interval of a median (None below 3 values)."""
  values = np.asarray(values, float)
  if values.size < 3:
    return None
  rng = np.random.default_rng(seed)
  medians = np.median(values[rng.integers(0, values.size,
                                          (_RESAMPLES, values.size))], axis=1)
  low, high = np.percentile(medians, [2.5, 97.5])
  return float(low), float(high)


def cell_table(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
  """Per (depth, width): (E1) the certified values' median with its
  interval and its ratio to L*_linear; (E2) the bad-minimum rate with its
  Wilson interval; (E3) the median value reached with its interval."""
  by_cell: dict[tuple[int, int], dict[str, list]] = collections.defaultdict(
      lambda: {q: [] for q in _POINTS})
  linear: dict[tuple[int, int], float] = {}
  for question, points_of in _POINTS.items():
    for row, value in points_of(rows):
      cell = (int(row["depth"]), int(row["width"]))
      by_cell[cell][question].append(value)
      if _finite(row.get("linear_opt")):
        linear[cell] = float(row["linear_opt"])
  table = []
  for i, (cell, values) in enumerate(sorted(by_cell.items())):
    e1, e2, e3 = values["E1"], values["E2"], values["E3"]
    ci = bootstrap_median(e1, seed=i)
    lin = linear.get(cell)
    table.append({
        "depth": cell[0], "width": cell[1], "e1_n": len(e1),
        "e1_median": float(np.median(e1)) if e1 else None, "e1_ci": ci,
        "e1_ratio_linear": (float(np.median(e1)) / lin if e1 and lin
                            else None),
        "e1_ratio_ci": (ci[0] / lin, ci[1] / lin) if ci and lin else None,
        "e2_bad": int(sum(e2)), "e2_n": len(e2),
        "e2_ci": wilson(int(sum(e2)), len(e2)),
        "e3_n": len(e3), "e3_median": float(np.median(e3)) if e3 else None,
        "e3_ci": bootstrap_median(e3, seed=i)})
  return table


def _fmt(value: Any, spec: str = ".3g") -> str:
  if value is None:
    return "-"
  if isinstance(value, tuple):
    return f"[{value[0]:{spec}}, {value[1]:{spec}}]"
  return f"{value:{spec}}"


def findings(tests: Sequence[TrendTest]) -> list[str]:
  """One sentence per question: what was found, or why nothing was."""
  lines = []
  for question, text in QUESTIONS.items():
    mine = [t for t in tests if t.question == question]
    done = [t for t in mine if t.testable]
    if not done:
      reasons = sorted({t.reason for t in mine})
      lines.append(f"({question}) {text}: not testable ({'; '.join(reasons)})"
                   ".")
      continue
    better = [t for t in done if t.improves]
    worse = [t for t in done if t.rho_ci[0] > 0]
    parts = [f"{len(better)} of {len(done)} trend tests find a significant "
             f"improvement (Holm, alpha {ALPHA:g})"]
    if better:
      parts.append("along " + ", ".join(
          f"{t.axis} at {'depth' if t.axis == 'width' else 'width'} "
          f"{t.fixed} (rho {t.rho:.2f})" for t in better))
    if worse:
      parts.append(f"{len(worse)} with values rising (rho interval above 0)")
    lines.append(f"({question}) {text}: " + "; ".join(parts) + ".")
  return lines


def claim_entry(rows: Sequence[dict[str, Any]],
                tests: Sequence[TrendTest]) -> dict[str, Any]:
  """(E)'s row of the claims table (``claims.CLAIM_FIELDS``) from the (E1)
  tests: ``tested`` counts the tests run, ``holds`` those finding a
  significant improvement, ``zero_loss_apart`` the zero-loss minima left
  out of (E1)."""
  tol = claims.tolerances(rows)
  zero = sum(claims.is_zero_loss(r, tol) for r in claims.certified(rows))
  e1 = [t for t in tests if t.question == "E1"]
  done = [t for t in e1 if t.testable]
  return {
      "claim": "E", "test": "values of certified minima with L > 0 fall as "
      "width (each depth) or depth (each width) grows: Spearman trend, "
      "permutation p, Holm", "tolerance": f"p (Holm) < {ALPHA:g}",
      "tested": len(done), "holds": sum(t.improves for t in done),
      "zero_loss_apart": zero,
      "informative": (
          f"yes: {len(done)} tests resolve |rho| >= "
          f"{min(t.rho_resolved for t in done):.2f} at best" if done else
          "no: no row or column with enough certified minima ("
          + "; ".join(sorted({t.reason for t in e1})) + ")")}


def markdown(rows: Sequence[dict[str, Any]],
             tests: Sequence[TrendTest] | None = None) -> str:
  """The report's (E) section: findings, the tests, the per-cell table
  (``tests``: ``trend_tests(rows)`` when the caller has them)."""
  tests = trend_tests(rows) if tests is None else tests
  out = ["## (E) Depth and width trend", "",
         *[f"- {line}" for line in findings(tests)], "",
         f"Spearman's rho of the values against the axis (negative: better as "
         f"it grows), one-sided permutation p for rho < 0, Holm over the "
         f"{sum(t.testable for t in tests)} tests run; `resolves` is the "
         f"smallest |rho| each detects with {POWER:.0%} power at level "
         f"{ALPHA:g} / tests (lminima/study/trend.py).", "",
         "| question | axis | at | n | rho | 95% interval | p | p (Holm) | "
         "resolves \\|rho\\| >= | |",
         "|---|---|---|---|---|---|---|---|---|---|"]
  for t in tests:
    at = f"{'depth' if t.axis == 'width' else 'width'} {t.fixed}"
    if t.testable:
      out.append(f"| ({t.question}) | {t.axis} | {at} | {t.n} | "
                 f"{t.rho:.2f} | {_fmt(t.rho_ci, '.2f')} | {t.p:.3g} | "
                 f"{t.p_holm:.3g} | {t.rho_resolved:.2f} | "
                 f"{'improves' if t.improves else ''} |")
    else:
      out.append(f"| ({t.question}) | {t.axis} | {at} | {t.n} | - | - | - | "
                 f"- | - | not testable: {t.reason} |")
  out += ["", "| depth | width | (E1) certified minima, L > 0 | median L "
          "[95%] | / L* linear [95%] | (E2) bad minima / members [Wilson "
          "95%] | (E3) median value reached [95%] |",
          "|---|---|---|---|---|---|---|"]
  for c in cell_table(rows):
    out.append(
        f"| {c['depth']} | {c['width']} | {c['e1_n']} | "
        f"{_fmt(c['e1_median'])} {_fmt(c['e1_ci'])} | "
        f"{_fmt(c['e1_ratio_linear'])} {_fmt(c['e1_ratio_ci'])} | "
        f"{c['e2_bad']} / {c['e2_n']} {_fmt(c['e2_ci'], '.2f')} | "
        f"{_fmt(c['e3_median'])} {_fmt(c['e3_ci'])} |")
  return "\n".join(out)
