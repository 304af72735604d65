"""Which members share a compiled program: the plan and its cost model.

Every program (``lminima.program``) trains members of one depth embedded in
one padded network, so different depths are always different programs. The
distinct widths w_1 < ... < w_k of one depth are split into contiguous
*buckets*, each one program padded to its widest width:

* ``"per_width"``: singletons (no wasted FLOPs, one compile per width);
* ``"masked"``: one bucket per depth (one compile, every member padded to the
  widest network); or
* ``"auto"``: the split minimizing the predicted total time. ``per_width`` and
  ``masked`` are its two extreme splits.

Cost model (``CostModel``). A program of ``n`` members padded to width ``w``
and trained for ``T`` steps is predicted to take

    t = compile_s + T * (step_s + n * F(w) / flops_per_s),

where ``F(w)`` is ``population.training_flops`` of one member for one step.
``compile_s`` is the per-program compile and dispatch overhead, ``step_s`` the
fixed cost of one scan step (loop and kernel launches: large on accelerators,
tiny on CPU) and ``flops_per_s`` the throughput of the batched training step.
Padding a bucket to its widest member multiplies the FLOPs of the narrow ones,
while every extra bucket pays ``compile_s`` once: where compiles are expensive
relative to the work, "auto" merges narrow widths and keeps wide ones apart;
where a step costs about the same whatever the width (accelerators), it merges
everything of one depth.

The cheapest split is a shortest path over the cut points 0..k: with
``cost(i, j)`` the prediction for bucket ``{w_{i+1}, ..., w_j}``,

    best(0) = 0,   best(j) = min_{i < j} best(i) + cost(i, j),

which ``cheapest_cuts`` solves in O(k^2). The planner only predicts: it takes
a ``CostModel`` and never runs a program (``lminima.train`` measures one on
the machine it runs on).

Example:
  >>> from lminima.population import Member, TrainConfig
  >>> members = [Member(2, w, seed) for w in (4, 8, 512) for seed in (0, 1)]
  >>> plan = plan_groups(members, 2, 1, TrainConfig(steps=3000),
  ...                    width_strategy="auto", batch=1000,
  ...                    cost_model=CostModel(compile_s=1.0, step_s=1.4e-5,
  ...                                         flops_per_s=3.6e10))
  >>> [(g.padded_model.widths, g.member_indices) for g in plan]
  [((8, 8), (0, 1, 2, 3)), ((512, 512), (4, 5))]
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

from lminima import models
from lminima.population import Member, TrainConfig, member_model, \
    training_flops

WIDTH_STRATEGIES = ("auto", "per_width", "masked")


@dataclasses.dataclass(frozen=True)
class CostModel:
  """Predicted program time ``compile_s + T * (step_s + n F(w) / flops_per_s)``.

  Attributes:
    compile_s: per-program compile and dispatch overhead, seconds.
    step_s: fixed cost of one scan step of a program, seconds.
    flops_per_s: throughput of the batched training step, FLOP/s.
  """
  compile_s: float
  step_s: float
  flops_per_s: float

  def predict(self, n_members: int, flops_per_member_step: float,
              steps: int) -> float:
    """Predicted seconds for one program (module docstring).

    Example:
      >>> CostModel(compile_s=1.0, step_s=0.0, flops_per_s=1e9).predict(
      ...     n_members=2, flops_per_member_step=1e6, steps=1000)
      3.0
    """
    return self.compile_s + steps * (
        self.step_s + n_members * flops_per_member_step / self.flops_per_s)


@dataclasses.dataclass(frozen=True)
class ProgramGroup:
  """Members trained by one compiled program.

  Attributes:
    padded_model: the network every member is embedded in (its widest).
    member_indices: positions of the members in the population.
    predicted_s: the cost model's prediction (None without a cost model).
  """
  padded_model: models.MLP
  member_indices: tuple[int, ...]
  predicted_s: float | None


def plan_groups(members: Sequence[Member], d_x: int, d_y: int,
                config: TrainConfig, *, width_strategy: str = "auto",
                batch: int, cost_model: CostModel | None = None
                ) -> list[ProgramGroup]:
  """Splits a population into programs (module docstring).

  For each depth, the distinct widths are split into contiguous buckets; a
  bucket is one program padded to its widest width. ``"per_width"`` takes
  singletons, ``"masked"`` one bucket, ``"auto"`` the split minimizing the
  summed ``cost_model.predict`` (``cheapest_cuts``).

  Args:
    members: the population.
    d_x: input dimension.
    d_y: output dimension.
    config: shared settings (architecture, steps).
    width_strategy: ``"auto"``, ``"per_width"`` or ``"masked"``.
    batch: samples per step (m for full batch), for the FLOP counts.
    cost_model: required for ``"auto"``; used for ``predicted_s`` otherwise.

  Returns:
    Groups ordered by depth, then width.

  Example:
    >>> ms = [Member(1, w, 0) for w in (4, 8, 64)]
    >>> [g.padded_model.widths for g in plan_groups(
    ...     ms, 2, 1, TrainConfig(), width_strategy="masked", batch=100)]
    [(64,)]
  """
  if width_strategy not in WIDTH_STRATEGIES:
    raise ValueError(f"unknown width_strategy {width_strategy!r}; choose one "
                     f"of {WIDTH_STRATEGIES}")
  if width_strategy == "auto" and cost_model is None:
    raise ValueError('width_strategy="auto" needs a cost_model')
  if not members:
    raise ValueError("members is empty")
  for member in members:
    if not isinstance(member, Member):
      raise ValueError(f"expected Member, got {type(member).__name__}")
  # A linear model (depth 0) has no width: all its members share one network.
  by_depth: dict[int, dict[int, list[int]]] = {}
  for i, member in enumerate(members):
    by_depth.setdefault(member.depth, {}).setdefault(
        member.true_width, []).append(i)

  def bucket_group(depth, widths, indices_by_width):
    indices = tuple(sorted(i for w in widths for i in indices_by_width[w]))
    padded = member_model(d_x, d_y, Member(depth, max(max(widths), 1), 0),
                          config)
    predicted = None if cost_model is None else cost_model.predict(
        len(indices), training_flops(padded, batch), config.steps)
    return ProgramGroup(padded, indices, predicted)

  groups = []
  for depth in sorted(by_depth):
    indices_by_width = by_depth[depth]
    widths = sorted(indices_by_width)
    if width_strategy == "per_width":
      cuts = list(range(len(widths) + 1))
    elif width_strategy == "masked":
      cuts = [0, len(widths)]
    else:
      cuts = cheapest_cuts(
          [bucket_group(depth, widths[i:j], indices_by_width).predicted_s
           for j in range(len(widths) + 1) for i in range(j)], len(widths))
    groups += [bucket_group(depth, widths[a:b], indices_by_width)
               for a, b in zip(cuts[:-1], cuts[1:])]
  return groups


def cheapest_cuts(costs: Sequence[float], k: int) -> list[int]:
  """Cut points 0 = c_0 < ... < c_r = k minimizing sum cost(c_{s-1}, c_s).

  ``costs`` lists cost(i, j) for j = 1..k, i = 0..j-1 in that order.

  Example:
    >>> # cost(0,1)=1, cost(0,2)=5, cost(1,2)=1: cutting at 1 is cheaper.
    >>> cheapest_cuts([1.0, 5.0, 1.0], 2)
    [0, 1, 2]
  """
  cost = {}
  it = iter(costs)
  for j in range(1, k + 1):
    for i in range(j):
      cost[i, j] = next(it)
  best = [0.0] + [math.inf] * k
  previous = [0] * (k + 1)
  for j in range(1, k + 1):
    for i in range(j):
      if best[i] + cost[i, j] < best[j]:
        best[j], previous[j] = best[i] + cost[i, j], i
  cuts = [k]
  while cuts[-1]:
    cuts.append(previous[cuts[-1]])
  return cuts[::-1]
