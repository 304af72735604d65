"""Coverage: more seeds for the cells short of certified local minima.

A study's grid gives every cell ``num_seeds`` members; where few of them end
at a certified local minimum, the trend tests of ``lminima.study.trend`` have
little to work with. With ``min_certified`` N and ``max_members`` M set, the
sweep runs rounds after the grid: each round gives every cell still holding
fewer than N certified local minima (``claims.MINIMA``) the next
``num_seeds`` seeds, until it holds N or has tried M members.
"""

from __future__ import annotations

from typing import Any, Sequence

import ml_collections

from lminima.study import claims
from lminima.train import population


def coverage_round(config: ml_collections.ConfigDict, round_index: int,
                   rows: Sequence[dict[str, Any]]
                   ) -> list[population.Member]:
  """The members of coverage round ``round_index`` (1, 2, ...), or none.

  Round r adds the seeds ``num_seeds + (r - 1) num_seeds`` up to (not
  including) ``min(num_seeds + r num_seeds, max_members)`` to every cell that
  holds fewer than ``min_certified`` certified local minima
  (``claims.MINIMA``) among its seeds before the round, all of them recorded. Which cells take
  part is decided by recorded rows alone, so a resumed run repeats the same
  rounds with the same members (and trains the same populations).

  Example:
    >>> from lminima.study.config import get_config
    >>> config = get_config()
    >>> config.depths, config.widths, config.num_seeds = (1,), (2, 4), 2
    >>> config.min_certified, config.max_members = 2, 5
    >>> rows = [{"depth": 1, "width": w, "seed": s, "outcome": o}
    ...         for w, s, o in ((2, 0, "local_min"), (2, 1, "escaping"),
    ...                         (4, 0, "local_min"), (4, 1, "local_min"))]
    >>> [(m.width, m.seed) for m in coverage_round(config, 1, rows)]
    [(2, 2), (2, 3)]
    >>> coverage_round(config, 2, rows)  # round 1 not recorded yet
    []
  """
  step = int(config.num_seeds)
  start = step * round_index
  stop = min(start + step, int(config.max_members))
  if not config.min_certified or round_index < 1 or start >= stop:
    return []
  by_cell: dict[tuple[int, int], dict[int, str]] = {}
  for row in rows:
    by_cell.setdefault((row["depth"], row["width"]), {})[row["seed"]] = (
        claims.outcome(row))
  members = []
  for depth in config.depths:
    for width in config.widths:
      seen = by_cell.get((depth, width), {})
      earlier = [seen.get(seed) for seed in range(start)]
      if None in earlier or sum(o in claims.MINIMA for o in earlier
                                 ) >= config.min_certified:
        continue
      members += [population.Member(depth=depth, width=width, seed=seed)
                  for seed in range(start, stop)]
  return members
