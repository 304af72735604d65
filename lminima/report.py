"""Tables and figures from result records (results.jsonl rows).

``summarize`` groups rows by (depth, width) and reports min / median / max of
the end-of-training ``loss`` over the members that did not diverge, the same
statistics of ``loss_refined`` over the members certified ``local_min`` only
(a refined point that is not a certified minimum says nothing about minima),
the fraction of members per certificate verdict, and, again over the
certified minima only, the median ``rank_D_frac``, the share below the
linear-model optimum and the number of zero-loss (interpolating) minima, which
every claim counts apart (docs/theory.md#which-tests-are-informative).
"""

from __future__ import annotations

import collections
import csv
import math
from typing import Any, Iterable, Sequence

import numpy as np

from lminima.records import VERDICTS

ZERO_LOSS_RTOL = 1e-12
"""A certified minimum with L <= ZERO_LOSS_RTOL * (1 + L*_linear) interpolates."""

SUMMARY_FIELDS = (
    "depth", "width", "n_members", "n_diverged",
    "loss_min", "loss_median", "loss_max",
    "n_local_min", "n_local_min_zero_loss", "local_min_loss_min",
    "local_min_loss_median", "local_min_loss_max",
    *(f"frac_{v}" for v in VERDICTS),
    "median_rank_D_frac", "frac_below_linear", "linear_opt",
)


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
  summary = []
  for (depth, width), members in sorted(groups.items()):
    sane = [r for r in members if not r.get("diverged")]
    entry = {"depth": depth, "width": width, "n_members": len(members),
             "n_diverged": len(members) - len(sane)}
    entry["loss_min"], entry["loss_median"], entry["loss_max"] = _stats(
        _finite(r.get("loss") for r in sane))
    certified = [r for r in members if r.get("verdict") == "local_min"]
    minima = _finite(r.get("loss_refined") for r in certified)
    entry["n_local_min"] = len(minima)
    entry["n_local_min_zero_loss"] = sum(
        value <= ZERO_LOSS_RTOL * (1.0 + abs(r.get("linear_opt") or 0.0))
        for r in certified for value in _finite([r.get("loss_refined")]))
    (entry["local_min_loss_min"], entry["local_min_loss_median"],
     entry["local_min_loss_max"]) = _stats(minima)
    verdicts = [r.get("verdict") for r in members if r.get("verdict")]
    for v in VERDICTS:
      entry[f"frac_{v}"] = (verdicts.count(v) / len(verdicts)
                            if verdicts else None)
    ranks = _finite(r.get("rank_D_frac") for r in certified)
    entry["median_rank_D_frac"] = float(np.median(ranks)) if ranks else None
    below = [bool(r["below_linear"]) for r in certified
             if r.get("below_linear") is not None]
    entry["frac_below_linear"] = sum(below) / len(below) if below else None
    linear = _finite(r.get("linear_opt") for r in members)
    entry["linear_opt"] = linear[0] if linear else None
    summary.append(entry)
  return summary


def cell_line(depth: int, width: int, rows: Sequence[dict[str, Any]]) -> str:
  """One line for a finished (depth, width) cell: members, verdict counts,
  diverged and failed members, median certified loss."""
  counts = collections.Counter(r["verdict"] for r in rows if r.get("verdict"))
  parts = [f"{counts[v]} {v}" for v in VERDICTS if counts[v]]
  diverged = sum(bool(r.get("diverged")) for r in rows)
  errors = sum(bool(r.get("error")) for r in rows)
  if diverged:
    parts.append(f"{diverged} diverged")
  if errors:
    parts.append(f"{errors} failed")
  minima = [r["loss_refined"] for r in rows
            if r.get("verdict") == "local_min"
            and r.get("loss_refined") is not None]
  median = (f"median certified loss {np.median(minima):.3e}" if minima
            else "no certified minimum")
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


def plot_loss_vs_width(rows: Sequence[dict[str, Any]],
                       summary: Sequence[dict[str, Any]], path: str,
                       title: str = "") -> None:
  """Median training loss vs width, one line per depth, min-max band.

  Certified local minima (verdict ``local_min``) are overlaid as crosses at
  their refined loss; on a log axis, minima more than 1e4 times below the
  smallest training loss (zero-loss global minima, up to rounding) are drawn
  as triangles on a floor at that level. The dashed line is the linear-model
  optimum.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  curves = {depth: [e for e in summary
                    if e["depth"] == depth and e["loss_median"] is not None]
            for depth in sorted({e["depth"] for e in summary})}
  lows = [e["loss_min"] for group in curves.values() for e in group]
  floor = 1e-4 * min(lows) if lows and min(lows) > 0 else None
  fig, ax = plt.subplots(figsize=(5.5, 4))
  for depth, group in curves.items():
    if not group:
      continue
    widths = [e["width"] for e in group]
    line, = ax.plot(widths, [e["loss_median"] for e in group], "o-",
                    label=f"depth {depth}")
    ax.fill_between(widths, [e["loss_min"] for e in group],
                    [e["loss_max"] for e in group], alpha=0.2,
                    color=line.get_color())
    minima = [(r["width"], r["loss_refined"]) for r in rows
              if r["depth"] == depth and r.get("verdict") == "local_min"
              and r.get("loss_refined") is not None]
    above = [(w, v) for w, v in minima if floor is None or v >= floor]
    below = [(w, floor) for w, v in minima if floor is not None and v < floor]
    for points, marker in ((above, "x"), (below, "v")):
      if points:
        ax.plot(*zip(*points), marker, color=line.get_color(), ms=6)
  linear = [e["linear_opt"] for e in summary if e.get("linear_opt") is not None]
  if linear:
    ax.axhline(linear[0], color="k", ls="--", lw=1, label="linear model optimum")
  ax.plot([], [], "x", color="gray", label="certified local minimum")
  if floor is not None:
    ax.plot([], [], "v", color="gray", label="certified minimum, loss ~ 0")
    ax.set_yscale("log")
  ax.set_xscale("log", base=2)
  ax.set_xlabel("hidden width")
  ax.set_ylabel("training loss")
  ax.set_title(title or "median over seeds (band: min to max)")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def plot_spectral_density(grid: np.ndarray, density: np.ndarray, path: str,
                          extremes: Sequence[float] = (), title: str = "",
                          ) -> None:
  """Hessian eigenvalue density (log axis, 6 decades) with marked extremes."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, ax = plt.subplots(figsize=(5.5, 4))
  ax.plot(grid, density, lw=1.2)
  for value in extremes:
    ax.axvline(value, color="k", ls=":", lw=1)
  top = max(float(np.max(density)), 1e-300)
  ax.set_yscale("log")
  ax.set_ylim(1e-6 * top, 2 * top)
  ax.set_xlabel("Hessian eigenvalue")
  ax.set_ylabel("density (SLQ, Gaussian smoothing)")
  ax.set_title(title)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
