"""The report's figures, drawn from result rows only (PNG, matplotlib Agg).

(i) ``plot_loss_vs_width``: certified local-minimum losses against width, one
colour per depth, end-of-training losses lighter, the linear and random-
feature optima as references, the number of certified points per cell.
(ii) ``plot_rank``: rank D / (m d_y) against width, and the loss against it.
(iii) ``plot_outcomes``: every member's outcome per cell.
(iv) ``plot_linear_bound``: L / L*_linear against the inclusion residual.
(v) ``plot_minima_and_saddles``: certified minima and saddles per cell.
Also the Hessian spectral density of one member (``scripts/spectrum.py``).

Medians are drawn only for cells with at least ``claims.MIN_POINTS`` certified
points; the points themselves are always drawn.
"""

from __future__ import annotations

import collections
import contextlib
import math
from typing import Any, Iterator, Sequence

import numpy as np

from lminima.study import claims

OUTCOME_COLORS = {
    "local_min": "tab:green", "kink_min": "tab:olive", "saddle": "tab:orange",
    "non_differentiable": "tab:purple", "escaping": "tab:red", "undecided": "tab:brown", "diverged": "black",
    "failed": "tab:pink", "uncertified": "lightgray"}
"""Colours of ``lminima.study.claims.OUTCOMES``."""


@contextlib.contextmanager
def _figure(path: str, ncols: int = 1) -> Iterator[tuple[Any, Any]]:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, ncols, figsize=(5.5 * ncols, 4))
  try:
    yield fig, axes
    fig.tight_layout()
    fig.savefig(path, dpi=120)
  finally:
    plt.close(fig)


def _log(ax: Any, drawn: bool, *axes: str, base: int = 10) -> None:
  """Log scale on ``axes`` ("x", "y") when points were ``drawn``: an empty
  log axis cannot be autoscaled."""
  if drawn:
    for axis in axes:
      getattr(ax, f"set_{axis}scale")("log", base=base)


def _positive(values: Sequence[float], floor: float) -> list[float]:
  """Values for a log axis: zero-loss points sit on ``floor``."""
  return [max(v, floor) for v in values]


def _depth_colors(rows: Sequence[dict[str, Any]]) -> dict[int, str]:
  depths = sorted({int(r["depth"]) for r in rows})
  return {d: f"C{i}" for i, d in enumerate(depths)}


def _values(rows, key, **match) -> list[float]:
  out = []
  for r in rows:
    if all(r.get(k) == v for k, v in match.items()):
      value = r.get(key)
      if value is not None and math.isfinite(float(value)):
        out.append(float(value))
  return out


def _floor(rows: Sequence[dict[str, Any]]) -> float:
  """Where zero-loss points are drawn: 1e-3 of the smallest positive loss."""
  losses = [v for k in ("loss", "loss_refined") for v in _values(rows, k)
            if v > 0]
  return 1e-3 * min(losses) if losses else 1e-12


def plot_loss_vs_width(rows: Sequence[dict[str, Any]], path: str,
                       title: str = "") -> None:
  """(i) Certified local-minimum loss vs width, one colour per depth.

  Crosses: certified minima (triangles on the floor: zero loss); solid line:
  their median where a cell has at least ``claims.MIN_POINTS``; lighter dots
  and dashed line: end-of-training losses of the members that did not
  diverge and their median; "n=k" above each cell: certified points. Black
  dashed: L*_linear; gray dotted: random features of the same width.
  """
  minima = claims.certified(rows)
  tol = claims.tolerances(rows)
  floor = _floor(rows)
  colors = _depth_colors(rows)
  widths = sorted({int(r["width"]) for r in rows})
  with _figure(path) as (_, ax):
    for depth, color in colors.items():
      sane = [r for r in rows if r["depth"] == depth and not r.get("diverged")]
      ends = [(r["width"], r["loss"]) for r in sane
              if r.get("loss") is not None]
      if ends:
        ax.plot([w for w, _ in ends], _positive([v for _, v in ends], floor),
                ".", color=color, alpha=0.25, ms=4)
        med = [(w, np.median(_values(sane, "loss", width=w))) for w in widths
               if _values(sane, "loss", width=w)]
        ax.plot(*zip(*[(w, max(v, floor)) for w, v in med]), "--",
                color=color, alpha=0.4, lw=1)
      mine = [r for r in minima if r["depth"] == depth]
      for w in widths:
        cell = [r for r in mine if r["width"] == w
                and _values([r], "loss_refined")]
        values = _values(cell, "loss_refined")
        if not values:
          continue
        zero = [claims.is_zero_loss(r, tol) for r in cell]
        ax.plot([w] * (len(values) - sum(zero)),
                [v for v, z in zip(values, zero) if not z], "x", color=color)
        ax.plot([w] * sum(zero), [floor] * sum(zero), "v", color=color)
        top = max(_positive(values, floor))
        ax.annotate(f"n={len(values)}", (w, top), fontsize=6, color=color,
                    xytext=(2, 3), textcoords="offset points")
      med = [(w, np.median(_values(mine, "loss_refined", width=w)))
             for w in widths
             if len(_values(mine, "loss_refined", width=w))
             >= claims.MIN_POINTS]
      if med:
        ax.plot(*zip(*[(w, max(v, floor)) for w, v in med]), "-",
                color=color)
      ax.plot([], [], "-x", color=color, label=f"depth {depth}")
    linear = _values(rows, "linear_opt")
    if linear:
      ax.axhline(linear[0], color="k", ls="--", lw=1, label="L* linear")
    rf = [(w, np.median(_values(rows, "rf_opt", width=w))) for w in widths
          if _values(rows, "rf_opt", width=w)]
    if rf:
      ax.plot(*zip(*rf), ":", color="gray", label="L* random features")
    ax.plot([], [], ".", color="gray", alpha=0.4, label="end of training")
    ax.plot([], [], "v", color="gray", label="certified, L = 0 (floor)")
    _log(ax, any(not r.get("diverged") for r in rows), "y")
    _log(ax, True, "x", base=2)
    ax.set_xlabel("hidden width")
    ax.set_ylabel("training loss")
    ax.set_title(title or f"certified local minima (median where n >= "
                 f"{claims.MIN_POINTS})", fontsize=9)
    ax.legend(fontsize=7)


def plot_rank(rows: Sequence[dict[str, Any]], path: str) -> None:
  """(ii) rank D / (m d_y) of certified minima vs width; loss vs that rank.

  Hollow markers: rank D differs between the two recorded tolerances.
  """
  minima = [r for r in claims.certified(rows)
            if r.get("rank_D_frac") is not None]
  colors = _depth_colors(rows)
  floor = _floor(rows)
  with _figure(path, ncols=2) as (_, (left, right)):
    for depth, color in colors.items():
      mine = [r for r in minima if r["depth"] == depth]
      for r in mine:
        face = "none" if claims.ranks_disagree(r) else color
        left.plot(r["width"], r["rank_D_frac"], "o", mfc=face, color=color,
                  ms=4)
        right.plot(r["rank_D_frac"], max(r["loss_refined"], floor), "o",
                   mfc=face, color=color, ms=4)
      left.plot([], [], "o", color=color, label=f"depth {depth}")
    left.axhline(1.0, color="k", lw=0.8, ls=":")
    _log(left, bool(minima), "x", base=2)
    left.set_xlabel("hidden width")
    left.set_ylabel("rank D / (m d_y) at certified minima")
    left.legend(fontsize=7)
    _log(right, bool(minima), "y")
    right.set_xlabel("rank D / (m d_y)")
    right.set_ylabel("certified loss (zero on the floor)")
    right.set_title("hollow: rank depends on the tolerance", fontsize=8)


def plot_outcomes(rows: Sequence[dict[str, Any]], path: str) -> None:
  """(iii) Stacked counts of every member's outcome per (depth, width)."""
  cells = sorted({(int(r["depth"]), int(r["width"])) for r in rows})
  per_cell = collections.Counter((int(r["depth"]), int(r["width"]),
                                  claims.outcome(r)) for r in rows)
  counts = {o: [per_cell[(*c, o)] for c in cells] for o in claims.OUTCOMES}
  with _figure(path) as (fig, ax):
    fig.set_size_inches(max(5.5, 0.45 * len(cells) + 2), 4)
    bottom = np.zeros(len(cells))
    for name in claims.OUTCOMES:
      if any(counts[name]):
        ax.bar(range(len(cells)), counts[name], bottom=bottom, label=name,
               color=OUTCOME_COLORS[name])
        bottom += counts[name]
    ax.set_xticks(range(len(cells)))
    ax.set_xticklabels([f"{d}x{w}" for d, w in cells], rotation=90,
                       fontsize=7)
    ax.set_xlabel("depth x width")
    ax.set_ylabel("members")
    ax.legend(fontsize=7)


def plot_linear_bound(rows: Sequence[dict[str, Any]], path: str) -> None:
  """(iv) Certified L / L*_linear against the inclusion residual of (C).

  Left of the dotted line the inclusion holds (``inclusion_tol``),
  so the bound L <= L*_linear must hold there (points at or below 1).
  """
  points = [r for r in claims.certified(rows)
            if r.get("inclusion_residual_linear") is not None
            and r.get("linear_opt")]
  colors = _depth_colors(rows)
  with _figure(path) as (_, ax):
    for depth, color in colors.items():
      mine = [r for r in points if r["depth"] == depth]
      if mine:
        ax.plot([max(r["inclusion_residual_linear"], 1e-17) for r in mine],
                [max(r["loss_refined"] / r["linear_opt"], 1e-12)
                 for r in mine], "o", color=color, ms=4,
                label=f"depth {depth}")
    ax.axhline(1.0, color="k", ls="--", lw=1, label="L = L* linear")
    ax.axvline(claims.tolerances(rows).inclusion_tol, color="k", ls=":",
               lw=1,
               label="inclusion tolerance")
    _log(ax, bool(points), "x", "y")
    ax.set_xlabel("inclusion residual ||P_N[D] ([X 1] kron I)|| / ||.||")
    ax.set_ylabel("certified L / L* linear")
    ax.legend(fontsize=7)


def plot_minima_and_saddles(rows: Sequence[dict[str, Any]], path: str
                            ) -> None:
  """(v) Certified minima (x) and saddles (o) per cell, at their loss."""
  cells = sorted({(int(r["depth"]), int(r["width"])) for r in rows})
  floor = _floor(rows)
  n_saddles, drawn = 0, 0
  with _figure(path) as (fig, ax):
    fig.set_size_inches(max(5.5, 0.45 * len(cells) + 2), 4)
    for i, (d, w) in enumerate(cells):
      for verdict, marker, color in (("local_min", "x", "tab:green"),
                                     ("saddle", "o", "tab:orange")):
        values = _values(rows, "loss_refined", depth=d, width=w,
                         outcome=verdict)
        n_saddles += len(values) if verdict == "saddle" else 0
        drawn += len(values)
        ax.plot([i] * len(values), _positive(values, floor), marker,
                color=color, mfc="none" if marker == "o" else color, ms=5)
    ax.plot([], [], "x", color="tab:green", label="certified local minimum")
    ax.plot([], [], "o", color="tab:orange", mfc="none",
            label="certified saddle")
    ax.set_xticks(range(len(cells)))
    ax.set_xticklabels([f"{d}x{w}" for d, w in cells], rotation=90,
                       fontsize=7)
    _log(ax, bool(drawn), "y")
    ax.set_xlabel("depth x width")
    ax.set_ylabel("refined loss")
    ax.set_title("" if n_saddles else "no certified saddle in these rows",
                 fontsize=8)
    ax.legend(fontsize=7)


def plot_spectral_density(grid: np.ndarray, density: np.ndarray, path: str,
                          extremes: Sequence[float] = (), title: str = "",
                          ) -> None:
  """Hessian eigenvalue density (log axis, 6 decades) with marked extremes."""
  with _figure(path) as (_, ax):
    ax.plot(grid, density, lw=1.2)
    for value in extremes:
      ax.axvline(value, color="k", ls=":", lw=1)
    top = max(float(np.max(density)), 1e-300)
    ax.set_yscale("log")
    ax.set_ylim(1e-6 * top, 2 * top)
    ax.set_xlabel("Hessian eigenvalue")
    ax.set_ylabel("density (SLQ, Gaussian smoothing)")
    ax.set_title(title)
