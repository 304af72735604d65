"""The sharpness experiment's report: the summary table and the figure.

``summary_table`` gives, per batch size, the median [min, max] over seeds of
every measure of the rows of ``lminima.related.sharpness.study.run`` (and how
many seeds have the larger value at the large batch); ``write_report`` writes
``report.md`` around it; ``plot_interpolation`` draws the loss and accuracy
along the line from the small-batch to the large-batch minimum.

Example:
  >>> from lminima import configs
  >>> config = configs.load("sharpness", "smoke")
  >>> config.eps, config.subspace_dim = (0.1,), 0
  >>> rows = [{"batch_size": b, "seed": 0, "train_loss": loss,
  ...          "sharpness": [{"eps": 0.1, "space": "full", "phi": phi}]}
  ...         for b, loss, phi in ((16, 0.1, 1.0), (20, 0.2, 3.0))]
  >>> print(summary_table(rows, config).splitlines()[-1])
  | LB > SB (same seed) | 1 | 1/1 | 0/0 | 0/0 | 1/1 | 0/0 | 0/0 | 0/0 |
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import ml_collections
import numpy as np

from lminima.related.sharpness.config import (FIGURE_FILE, INTERPOLATION_FILE,
                                      batch_sizes)


def plot_interpolation(curve: dict[str, Any], sizes: tuple[int, int],
                       path: str) -> None:
  """Train/test loss (log, left) and accuracy (right) along the line."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, ax = plt.subplots(figsize=(6, 4))
  acc = ax.twinx()
  alpha = curve["alpha"]
  for name, style in (("train", "-"), ("test", "--")):
    ax.plot(alpha, curve[f"{name}_loss"], style, color="C0",
            label=f"{name} loss")
    acc.plot(alpha, curve[f"{name}_accuracy"], style, color="C3",
             label=f"{name} accuracy")
  for value, text in ((0.0, f"SB (batch {sizes[0]})"),
                      (1.0, f"LB (batch {sizes[1]})")):
    ax.axvline(value, color="gray", ls=":", lw=1)
    ax.text(value, 1.02, text, transform=ax.get_xaxis_transform(),
            ha="center", fontsize=8)
  ax.set_yscale("log")
  ax.set_xlabel(r"$\alpha$ in $\alpha\, x_{LB} + (1 - \alpha)\, x_{SB}$")
  ax.set_ylabel("squared loss (mean)", color="C0")
  acc.set_ylabel("accuracy", color="C3")
  acc.set_ylim(0, 1)
  lines = ax.get_legend_handles_labels()
  more = acc.get_legend_handles_labels()
  ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=8,
            loc="center left")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _cell(values: Sequence[float], fmt: str) -> str:
  values = [v for v in values if v is not None and math.isfinite(v)]
  if not values:
    return "-"
  return (f"{format(float(np.median(values)), fmt)} "
          f"[{format(min(values), fmt)}, {format(max(values), fmt)}]")


def _phi(row: dict[str, Any], eps: float, space: str,
         field: str = "phi") -> float | None:
  for entry in row.get("sharpness") or ():
    if entry["space"] == space and math.isclose(entry["eps"], eps):
      return entry.get(field)
  return None


def _measures(config) -> list[tuple[str, Callable[[dict], Any], str]]:
  """(column title, row -> value, format) of the table."""
  columns = [("train loss", lambda r: r.get("train_loss"), ".4f"),
             ("train acc", lambda r: r.get("train_accuracy"), ".3f"),
             ("test acc", lambda r: r.get("test_accuracy"), ".3f")]
  spaces = [("full", "full")]
  if config.subspace_dim:
    spaces.append(("random", f"{config.subspace_dim}-dim"))
  for eps in config.eps:
    for space, label in spaces:
      columns.append((f"phi {label} eps={eps:g}",
                      lambda r, e=eps, s=space: _phi(r, e, s), ".4g"))
  eps = config.eps[0]
  columns.append((f"phi_linear full eps={eps:g}",
                  lambda r: _phi(r, eps, "full", "phi_linear"), ".4g"))
  columns += [("lambda_max", lambda r: r.get("lambda_max"), ".4g"),
              ("trace", lambda r: r.get("trace"), ".4g")]
  return columns


def summary_table(rows: Sequence[dict[str, Any]],
                  config: ml_collections.ConfigDict) -> str:
  """Markdown: per batch size, median [min, max] over seeds of every
  measure, and the number of seeds at which the large batch is larger."""
  columns = _measures(config)
  sizes = sorted({r["batch_size"] for r in rows})
  header = ["batch", "seeds (diverged)"] + [c[0] for c in columns]
  lines = ["| " + " | ".join(header) + " |",
           "|" + "---|" * len(header)]
  for size in sizes:
    group = [r for r in rows if r["batch_size"] == size]
    sane = [r for r in group if not r.get("diverged")]
    lines.append("| " + " | ".join(
        [str(size), f"{len(sane)} ({len(group) - len(sane)})"]
        + [_cell([get(r) for r in sane], fmt) for _, get, fmt in columns])
        + " |")
  if len(sizes) == 2:
    small = {r["seed"]: r for r in rows
             if r["batch_size"] == sizes[0] and not r.get("diverged")}
    large = {r["seed"]: r for r in rows
             if r["batch_size"] == sizes[1] and not r.get("diverged")}
    seeds = sorted(set(small) & set(large))
    cells = []
    for _, get, _ in columns:
      pairs = [(get(small[s]), get(large[s])) for s in seeds]
      pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
      cells.append(f"{sum(b > a for a, b in pairs)}/{len(pairs)}")
    lines.append("| LB > SB (same seed) | " + str(len(seeds)) + " | "
                 + " | ".join(cells) + " |")
  return "\n".join(lines)


def write_report(rows: Sequence[dict[str, Any]],
                 config: ml_collections.ConfigDict, path: str,
                 interpolation: dict[str, Any] | None) -> None:
  """``report.md``: the setup, the table and the interpolation figure."""
  small, large = batch_sizes(config)
  text = [
      "# Sharpness of small-batch vs large-batch minima",
      "",
      f"{config.dataset}: {config.n_train} training and {config.n_test} "
      f"held-out images (data seed {config.data_seed}); MLP depth "
      f"{config.depth}, width {config.width}, {config.activation}; "
      f"{config.optimizer} (learning rate {config.learning_rate:g}) for "
      f"{config.epochs} epochs at batch {small} (SB) and {large} (LB), "
      f"{config.num_seeds} seeds each, squared loss on one-hot targets "
      f"({config.normalization} normalization).",
      "",
      f"Sharpness phi(eps, A) (docs/theory.md#sharpness) by "
      f"{config.sharpness_method}, {config.sharpness_iters} iterations from "
      f"y = 0; A = I (full) and a random Gaussian "
      f"{config.subspace_dim}-dim subspace (seed {config.subspace_seed}). "
      "phi_linear is the first-order part, 100 sum_i w_i |(A^T grad)_i| / "
      "(1 + f), w the box half-widths. "
      "Cells: median [min, max] over the seeds that did not diverge; the "
      "last line counts the seeds at which LB's value exceeds SB's.",
      "",
      summary_table(rows, config),
      "",
  ]
  if interpolation is not None:
    text += [f"![interpolation]({FIGURE_FILE})",
             "",
             f"1-D interpolation alpha x_LB + (1 - alpha) x_SB (seeds "
             f"{interpolation['seed_small']} and "
             f"{interpolation['seed_large']}, same initialization), data in "
             f"{INTERPOLATION_FILE}.", ""]
  with open(path, "w") as f:
    f.write("\n".join(text))
