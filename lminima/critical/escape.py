"""The evidence that a path goes to infinity rather than to a critical point.

``lminima.critical.outcomes`` calls a member ``escaping`` when L never rose
along its path (``rises``) and either the norm grew by ``tol.growth``
(``growth``) or the path's end is a slow escape (``gap_tracking``:
``||g||`` proportional to ``L - L_inf`` while the gap falls by orders of
magnitude). ``asymptotic_loss`` is the labelled extrapolation of ``L_inf``
that the growth rule reports (docs/theory.md#escape-to-infinity).

Example:
  >>> from lminima.core.tolerances import DEFAULT
  >>> n = np.linspace(10, 20, 50)  # ||theta||; L = 0.05 + exp(-n)
  >>> bool(rises(0.05 + np.exp(-n)).any())
  False
  >>> round(gap_tracking(0.05 + np.exp(-n), np.exp(-n), n, DEFAULT).limit, 6)
  0.05
"""

from __future__ import annotations

import dataclasses

import numpy as np

from lminima.core import rescaling
from lminima.core.problem import Problem
from lminima.core.tolerances import LOSS_ROUNDOFF_RTOL, Tolerances


def rises(losses) -> np.ndarray:
  """Where L rose along a path beyond roundoff."""
  losses = np.asarray(losses)
  return np.diff(losses) > LOSS_ROUNDOFF_RTOL * np.abs(losses[:-1])


def growth(begin: Problem, end: Problem) -> tuple[str, float]:
  """What the escape test measures along a path, and its growth from
  ``begin`` to ``end``: ``||theta||``, or for MLPs with positively
  homogeneous units the balanced norm (``lminima.core.rescaling``):
  rescaling a unit in and out leaves L unchanged and can grow ``||theta||``
  alone."""
  if rescaling.rescalable(begin.module):
    return "the balanced norm", (
        rescaling.balanced_norm(end.module, end.params)
        / max(rescaling.balanced_norm(begin.module, begin.params), 1e-300))
  return "||theta||", float(np.linalg.norm(end.flat)) / max(
      float(np.linalg.norm(begin.flat)), 1e-300)


_ENVELOPE = 5
"""Path points over which ``gap_tracking`` takes the lower envelope of
``||g|| / (L - L_inf)``."""
_LOW = 0.1
"""The quantile of the ratio's envelope that ``gap_tracking`` measures its
spread from: iterates that cross the valley's floor have gradients below the
trend, which say nothing against an escape (the Lojasiewicz bound is a lower
bound on ``||g||``)."""
_COARSE = 10.0 ** -np.arange(0, 24.01, 0.25)
_FINE = 1.1 ** np.arange(-12, 13)
"""Candidate values of ``L_end - L_inf`` in ``gap_tracking``, relative to
the window's fall in L: a quarter of a decade apart over 24 orders of
magnitude, then 10% apart around the best of those."""


def _envelope(ratio: np.ndarray) -> np.ndarray:
  """The lower envelope over ``_ENVELOPE`` consecutive points (last axis)."""
  return np.min(np.lib.stride_tricks.sliding_window_view(
      ratio, _ENVELOPE, axis=-1), axis=-1)


def _spreads(drop: np.ndarray, grads: np.ndarray, offsets: np.ndarray,
             tol: Tolerances) -> tuple[np.ndarray, np.ndarray]:
  """For each offset ``L_end - L_inf``: the spread of the ratio's envelope
  (inf where the gap falls less than ``tol.escape_fall``) and the fall."""
  gap = drop + offsets[:, None]
  ratio = grads / gap
  envelope = _envelope(ratio)
  low = max(int(_LOW * (envelope.shape[1] - 1)), 0)
  # A path that converges to a critical point ends with the ratio growing
  # without bound (L_inf = L*) or falling to 0 (L_inf below L*). The
  # envelope's last window would hide either, so the end is read raw: the
  # lower of the last two points (one of them on the floor of a zig-zag).
  end = np.min(ratio[:, -2:], axis=1)
  spreads = (np.maximum(envelope.max(axis=1), end)
             / np.minimum(np.partition(envelope, low, axis=1)[:, low], end))
  falls = (drop[0] + offsets) / offsets  # drop[-1] = 0
  # L below its last value (by roundoff) leaves no gap there to follow.
  spreads[(falls < tol.escape_fall) | np.any(gap <= 0, axis=1)] = np.inf
  return spreads, falls


@dataclasses.dataclass(frozen=True)
class GapTracking:
  """The end of a path along which ``||g||`` tracks ``L - L_inf``.

  Attributes:
    start: the path index where the tracking window begins.
    limit: the fitted ``L_inf``.
    rate: ``a`` in ``||g|| ~ a (L - L_inf)``.
    spread: the largest value of ``||g|| / (L - L_inf)`` (its lower
      envelope, and its value at the end) over the window, relative to the
      envelope's ``_LOW`` quantile or the end's value, whichever is lower.
    fall: ``L - L_inf`` at the window's start over its value at the end.
  """
  start: int
  limit: float
  rate: float
  spread: float
  fall: float


def gap_tracking(losses, grads, norms, tol: Tolerances) -> GapTracking | None:
  """The longest end of a path on which ``||g||`` is proportional to the gap
  ``L - L_inf`` to a limit below the last value, or None.

  Near a critical point theta* of an analytic loss (tanh, sigmoid, the
  squared loss) the Lojasiewicz inequality ``|L - L*|^t <= C ||g||`` holds
  with ``t < 1``, so along a path converging to theta* the ratio
  ``||g|| / (L - L*)`` grows without bound (as ``(L - L*)^(-1/2)`` at a
  nondegenerate minimum). Where saturating units grow, ``L - L_inf`` shrinks
  like ``exp(-a ||theta||)`` and ``||g|| ~ a (L - L_inf)``: the ratio stays
  put while the gap falls by orders of magnitude, at a pace in ``||theta||``
  that a damped Newton method can make logarithmic in its iterations.

  A window (the path from some point to its end) qualifies when it has at
  least ``tol.escape_points`` points, ``||theta||`` grew over it, and for
  some ``L_inf`` the gap fell by ``tol.escape_fall`` while the ratio stayed
  within a factor ``tol.escape_spread``. The ratio is taken as its lower
  envelope over ``_ENVELOPE`` consecutive points: LM zig-zags across a narrow
  valley, and the iterates that overshoot have gradients of the overshoot
  (the Lojasiewicz bound holds at every point, so on the floor too). The
  spread is the envelope's largest value over its ``_LOW`` quantile: points
  below the trend (iterates that cross the floor) say nothing against an
  escape. The path's end counts on both sides: a path that converges to a
  critical point ends with the ratio growing without bound (``L_inf = L*``)
  or falling to 0 (``L_inf`` below ``L*``), so the lower of the last two
  raw ratios must lie within the spread too.
  ``L_inf`` is the value that gives the least spread, on a grid a quarter
  of a decade apart and then 10% apart around its best.

  It is evidence, not proof: a minimum degenerate enough (``t`` close to 1)
  passes. With the defaults, synthetic paths ``||g|| = (L - L*)^t`` that
  approach a minimum pass from ``t = 0.8`` (``L - L*`` growing like the
  fifth power of the distance) on (tests/test_escape.py).

  Args:
    losses, grads, norms: L, ``||g||`` and ``||theta||`` along the path.
    tol: the shared tolerances.

  Returns:
    A ``GapTracking`` for the longest qualifying window tried (windows start
    at twentieths of the path), or None.

  Example:
    >>> from lminima.core.tolerances import DEFAULT
    >>> n = np.linspace(10, 20, 50)  # L = 0.25 + exp(-n), ||g|| = exp(-n)
    >>> found = gap_tracking(0.25 + np.exp(-n), np.exp(-n), n, DEFAULT)
    >>> found.start, round(found.limit, 6), round(found.rate, 1)
    (0, 0.25, 1.0)
    >>> # a nondegenerate minimum at L* = 0.25: ||g|| ~ sqrt(L - L*)
    >>> gap_tracking(0.25 + np.exp(-n), np.exp(-n / 2), n, DEFAULT) is None
    True
  """
  losses, grads, norms = (np.asarray(v, np.float64)
                          for v in (losses, grads, norms))
  last = len(losses) - max(tol.escape_points, _ENVELOPE)
  if last < 0:
    return None
  for start in sorted(set(np.linspace(0, last, 21).astype(int))):
    drop = losses[start:] - losses[-1]
    if not (np.all(grads[start:] > 0) and drop[0] > 0
            and norms[-1] > norms[start]):
      continue
    # L_end - L_inf: the best of a coarse grid, then 10% steps around it.
    coarse = _spreads(drop, grads[start:], drop[0] * _COARSE, tol)[0]
    if np.all(np.isinf(coarse)):
      continue
    offsets = drop[0] * _COARSE[int(np.argmin(coarse))] * _FINE
    spreads, falls = _spreads(drop, grads[start:], offsets, tol)
    best = int(np.argmin(spreads))
    if spreads[best] <= tol.escape_spread:
      envelope = _envelope(grads[start:] / (drop + offsets[best]))
      return GapTracking(
          start=int(start), limit=float(losses[-1] - offsets[best]),
          rate=float(np.median(envelope)), spread=float(spreads[best]),
          fall=float(falls[best]))
  return None


def asymptotic_loss(losses: np.ndarray, norms: np.ndarray) -> float:
  """Intercept of L ~ L_inf + s / ||theta|| over the second half, clipped."""
  half = slice(len(losses) // 2, None)
  design = np.stack([np.ones_like(norms[half]), 1.0 / norms[half]], axis=1)
  intercept = np.linalg.lstsq(design, losses[half], rcond=None)[0][0]
  return float(np.clip(intercept, 0.0, losses[-1]))


def slow_escape(losses, grads, norms, tol: Tolerances) -> GapTracking | None:
  """``gap_tracking`` of a path along which L never rose (``rises``), else
  None: the slow escape of ``lminima.critical.outcomes``."""
  return None if rises(losses).any() else gap_tracking(losses, grads, norms,
                                                       tol)
