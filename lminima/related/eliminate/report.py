"""The elimination experiment's report: reach counts and markdown tables.

``summarize`` reduces the rows of ``lminima.related.eliminate.study.run`` to one
entry per (loss, width, variant): counts, medians, and how many members reach
the best certified plain value (``best_plain_values``); ``table_markdown``
and ``escape_markdown`` render it and ``write_report`` writes ``report.md``.
``VARIANTS`` names the three rows of a member, in report order.

Example:
  >>> rows = [{"loss_fn": "squared", "width": 2, "seed": s, "variant": v,
  ...          "loss_refined": value, "verdict": "local_min"}
  ...         for s, v, value in ((0, "plain", 0.5), (1, "plain", 0.2),
  ...                             (0, "augmented", 0.2))]
  >>> best_plain_values(rows)
  {('squared', 2): (0.2, True)}
  >>> [(e["variant"], e["n"], e["reach"]) for e in summarize(rows)]
  [('plain', 2, 1), ('augmented', 1, 1)]
"""

from __future__ import annotations

import json
from typing import Any, Callable

import numpy as np

from lminima.core import provenance

VARIANTS = ("plain", "augmented", "augmented_from_plain")
"""``plain``: the base network trained and refined. ``augmented``: the same
initial base plus a fresh eliminator (a = 0), trained and refined on L~.
``augmented_from_plain``: L~ refined from the plain member's refined point
with a = 0 (no training): does it leave a bad minimum, and where to?"""

REACH_RTOL = 1e-6
"""A value reaches a best value ``v`` when it is <= v + REACH_RTOL (|v| + 1e-6)."""


def _reaches(value: float | None, best: float | None) -> bool:
  return (value is not None and best is not None
          and value <= best + REACH_RTOL * (abs(best) + 1e-6))


def best_plain_values(rows: list[dict[str, Any]]
                      ) -> dict[tuple[str, int], tuple[float | None, bool]]:
  """Per (loss, width): the best plain value and whether it is certified.

  The smallest refined value of a plain member certified ``local_min``; if
  no plain member certifies, the smallest refined plain value (flagged False).
  """
  best: dict[tuple[str, int], tuple[float | None, bool]] = {}
  for key in sorted({(r["loss_fn"], r["width"]) for r in rows}):
    plain = [r for r in rows if (r["loss_fn"], r["width"]) == key
             and r["variant"] == "plain"
             and r.get("loss_refined") is not None]
    certified = [r["loss_refined"] for r in plain
                 if r.get("verdict") == "local_min"]
    if certified:
      best[key] = (min(certified), True)
    elif plain:
      best[key] = (min(r["loss_refined"] for r in plain), False)
    else:
      best[key] = (None, False)
  return best


def latest_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """The last row of each (loss, width, seed, variant), in first-seen order
  (a member rerun after a kill between its rows is counted once)."""
  latest: dict[tuple, dict[str, Any]] = {}
  for r in rows:
    latest[(r["loss_fn"], r["width"], r["seed"], r["variant"])] = r
  return list(latest.values())


def _median(values: list[Any]) -> float | None:
  values = [v for v in values if v is not None]
  return float(np.median(values)) if values else None


def _fmt(value: Any, spec: str = ".4g") -> str:
  return "-" if value is None else format(value, spec)


def _counts(values: list[Any]) -> str:
  out: dict[str, int] = {}
  for v in values:
    out[str(v)] = out.get(str(v), 0) + 1
  return ", ".join(f"{k} {n}" for k, n in sorted(out.items())) or "-"


def _grows(rows: list[dict[str, Any]], before: str, after: str,
           by: Callable[[float, float], bool]) -> str:
  """``"k/n"``: of the n rows holding both fields, k where ``by(before,
  after)``."""
  pairs = [(r[before], r[after]) for r in rows
           if r.get(before) is not None and r.get(after) is not None]
  return f"{sum(by(u, v) for u, v in pairs)}/{len(pairs)}" if pairs else "-"


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """One entry per (loss, width, variant): counts, medians and reach counts.

  ``reach`` counts members whose refined value (of their own objective) is at
  most the best plain value (``best_plain_values``); ``cert_reach`` those of
  them certified ``local_min``; ``below`` those strictly under it;
  ``base_reach`` augmented members whose base network alone (eliminator
  dropped) reaches it. ``b_grows`` and ``norm_grows`` count members whose
  max b (by more than 1e-3) or parameter norm (by more than 1%) grew during
  the continued refinement.
  """
  rows = latest_rows(rows)
  best = best_plain_values(rows)
  table = []
  for (loss_fn, width), (best_value, certified) in best.items():
    for variant in VARIANTS:
      group = [r for r in rows if (r["loss_fn"], r["width"], r["variant"])
               == (loss_fn, width, variant)]
      if not group:
        continue
      done = [r for r in group if r.get("loss_refined") is not None]
      reach = [r for r in done if _reaches(r["loss_refined"], best_value)]
      table.append({
          "loss_fn": loss_fn, "width": width, "variant": variant,
          "n": len(group), "best": best_value, "best_certified": certified,
          "diverged": sum(bool(r.get("diverged")) for r in group),
          "loss_median": _median([r.get("loss") for r in group]),
          "refined_median": _median([r["loss_refined"] for r in done]),
          "refined_min": min((r["loss_refined"] for r in done), default=None),
          "verdicts": _counts([r.get("verdict") for r in done]),
          "stops": _counts([r.get("refine_stop_reason") for r in done]),
          "reach": len(reach),
          "cert_reach": sum(r.get("verdict") == "local_min" for r in reach),
          "below": sum(r["loss_refined"] < best_value
                       - REACH_RTOL * (abs(best_value) + 1e-6)
                       for r in reach),
          "base_reach": (sum(_reaches(r.get("base_loss"), best_value)
                             for r in done)
                         if variant != "plain" else None),
          "a_median": _median([r.get("a_abs_max") for r in done]),
          "a_bound_median": _median([r.get("a_bound") for r in done]),
          "b_median": _median([r.get("b_max") for r in done]),
          "b_continued_median": _median([r.get("b_max_continued")
                                         for r in done]),
          "b_grows": _grows(done, "b_max", "b_max_continued",
                            lambda u, v: v > u + 1e-3),
          "contribution_median": _median([r.get("contribution_max")
                                          for r in done]),
          "param_norm_median": _median([r.get("param_norm_refined")
                                        for r in done]),
          "param_norm_continued_median": _median(
              [r.get("param_norm_continued") for r in done]),
          "norm_grows": _grows(done, "param_norm_refined",
                               "param_norm_continued",
                               lambda u, v: v > 1.01 * u),
          "loss_continued_median": _median([r.get("loss_continued")
                                            for r in done]),
      })
  return table


TABLE_HEADER = (
    "| loss | width | variant | n | best plain (cert.) | final loss med. | "
    "refined med. | refined min | verdicts | refine stops | "
    "reach (cert.) / below | base reach |")

ESCAPE_HEADER = (
    "| loss | width | variant | med. abs(a) / bound | med. max b -> "
    "continued | b grows | med. max contribution | med. norm -> continued | "
    "norm grows | med. value continued |")


def _rule(header: str) -> str:
  return "|" + "---|" * (header.count("|") - 1)


def table_markdown(table: list[dict[str, Any]]) -> str:
  """Values, verdicts and reach counts: the table docs/results.md quotes."""
  lines = [TABLE_HEADER, _rule(TABLE_HEADER)]
  for e in table:
    best = f"{_fmt(e['best'], '.6g')} ({'yes' if e['best_certified'] else 'no'})"
    lines.append(
        f"| {e['loss_fn']} | {e['width']} | {e['variant']} | {e['n']} | "
        f"{best} | {_fmt(e['loss_median'])} | "
        f"{_fmt(e['refined_median'], '.6g')} | "
        f"{_fmt(e['refined_min'], '.6g')} | {e['verdicts']} | "
        f"{e['stops']} | {e['reach']} ({e['cert_reach']}) / {e['below']} | "
        f"{_fmt(e['base_reach'], 'd')} |")
  return "\n".join(lines) + "\n"


def escape_markdown(table: list[dict[str, Any]]) -> str:
  """The eliminator and the parameter norm at the refined point and after the
  continued refinement (where do the points go?)."""
  lines = [ESCAPE_HEADER, _rule(ESCAPE_HEADER)]
  for e in table:
    lines.append(
        f"| {e['loss_fn']} | {e['width']} | {e['variant']} | "
        f"{_fmt(e['a_median'], '.2g')} / {_fmt(e['a_bound_median'], '.2g')} "
        f"| {_fmt(e['b_median'], '.3g')} -> "
        f"{_fmt(e['b_continued_median'], '.3g')} | {e['b_grows']} | "
        f"{_fmt(e['contribution_median'], '.2g')} | "
        f"{_fmt(e['param_norm_median'], '.3g')} -> "
        f"{_fmt(e['param_norm_continued_median'], '.3g')} | "
        f"{e['norm_grows']} | {_fmt(e['loss_continued_median'], '.6g')} |")
  return "\n".join(lines) + "\n"


def write_report(rows: list[dict[str, Any]], path: str) -> str:
  """Writes the markdown report of ``rows`` to ``path``; returns its text."""
  table = summarize(rows)
  config = rows[0]["config"] if rows else {}
  versions = rows[0]["versions"] if rows else {}
  text = [
      "# Eliminating bad local minima: plain vs augmented",
      "",
      "Kawaguchi & Kaelbling (2020); lminima.related.eliminate.augmented, "
      "docs/theory.md#eliminating-bad-local-minima.",
      "",
      f"- config: `{json.dumps(config, sort_keys=True, default=str)}`",
      f"- versions: `{json.dumps(versions, sort_keys=True)}`",
      f"- machine: `{json.dumps(provenance.machine_info(), sort_keys=True)}`",
      f"- rows: {len(rows)}; wall time of the rows "
      f"{sum(r.get('wall_s') or 0.0 for r in rows):.0f} s",
      "",
      "`best plain` is the smallest refined value of a plain member certified "
      "local_min for that (loss, width) (`no`: none certified, the smallest "
      "plain value instead). Values are each variant's own objective "
      "(augmented: L~, penalty included). `reach` counts members at or below "
      "the best plain value (in parentheses: those also certified local_min), "
      "`below` those strictly under it; `base reach` counts augmented members "
      "whose base network alone, eliminator dropped, reaches it. Medians over "
      "members.",
      "",
      table_markdown(table),
      "Where the points go: abs(a) (with its bound from the gradient), max b "
      "and `contribution`, the largest abs(a_k exp(w_k.x_i + b_k)) (0 at a "
      "critical point, which has a = 0), at the refined point; `continued` "
      f"after up to {config.get('continue_iters', '-')} more LM iterations "
      "without the escape stop (members that stopped at grad_tol are not "
      "continued). `grows`: members whose max b (norm) grew, of those "
      "continued.",
      "",
      escape_markdown(table),
  ]
  out = "\n".join(text)
  with open(path, "w") as f:
    f.write(out)
  return out
