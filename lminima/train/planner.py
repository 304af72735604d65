"""Which members share a compiled program: the plan and its cost model.

Every program (``lminima.train.compiled``) trains members of one depth embedded
in one padded network, so different depths are always different programs. The
distinct widths w_1 < ... < w_k of one depth are split into contiguous
*buckets*, each one program padded to its widest width:

* ``"per_width"``: singletons (no wasted FLOPs, one compile per width);
* ``"masked"``: one bucket per depth (one compile, every member padded to the
  widest network); or
* ``"auto"``: the split minimizing the predicted total time. ``per_width`` and
  ``masked`` are its two extreme splits.

Cost model (``CostModel``). A program of ``n`` members padded to width ``w``
and trained for ``T`` steps on batches of ``B`` samples is predicted to take

    t = compile_s + T * (step_s + n * (F(w) / flops_per_s + B U(w) unit_s)),

where ``F(w)`` is ``population.training_flops`` of one member for one step and
``U(w)`` its hidden units (``population.hidden_unit_samples`` is ``B U(w)``).
``compile_s`` is the per-program compile and dispatch overhead, ``step_s`` the
fixed cost of one scan step (loop and kernel launches: large on accelerators,
tiny on CPU), ``flops_per_s`` the throughput of the batched matmuls and
``unit_s`` the cost of the elementwise work per sample and hidden unit
(activations, their derivatives, bias gradients), which dominates narrow
networks on a CPU. Padding a bucket to its widest member multiplies the work
of the narrow ones, while every extra bucket pays ``compile_s`` once: where
compiles are expensive relative to the work, "auto" merges narrow widths and
keeps wide ones apart; where a step costs about the same whatever the width
(accelerators), it merges everything of one depth.

The cheapest split is a shortest path over the cut points 0..k: with
``cost(i, j)`` the prediction for bucket ``{w_{i+1}, ..., w_j}``,

    best(0) = 0,   best(j) = min_{i < j} best(i) + cost(i, j),

which ``cheapest_cuts`` solves in O(k^2). The planner only predicts: it takes
a ``CostModel`` and never runs a program (``lminima.train.driver`` measures one
on the machine it runs on).

Example:
  >>> from lminima.train.population import Member, TrainConfig
  >>> members = [Member(2, w, seed) for w in (4, 8, 512) for seed in (0, 1)]
  >>> plan = plan_groups(members, 2, 1, TrainConfig(steps=3000),
  ...                    width_strategy="auto", batch=1000,
  ...                    cost_model=CostModel(compile_s=1.0, step_s=1.4e-5,
  ...                                         flops_per_s=3.6e10,
  ...                                         unit_s=3e-9))
  >>> [(g.padded_model.widths, g.member_indices) for g in plan]
  [((8, 8), (0, 1, 2, 3)), ((512, 512), (4, 5))]
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

from lminima.core import models
from lminima.train.population import Member, TrainConfig, hidden_unit_samples, \
    member_model, training_flops

WIDTH_STRATEGIES = ("auto", "per_width", "masked")


@dataclasses.dataclass(frozen=True)
class CostModel:
  """Predicted program time ``compile_s + T * (step_s + n (F(w) /
  flops_per_s + B U(w) unit_s))`` (module docstring).

  Attributes:
    compile_s: per-program compile and dispatch overhead, seconds.
    step_s: fixed cost of one scan step of a program, seconds.
    flops_per_s: throughput of the batched matmuls, FLOP/s.
    unit_s: seconds per sample and hidden unit of one member's step (the
      elementwise work); 0 for models measured before it was.
  """
  compile_s: float
  step_s: float
  flops_per_s: float
  unit_s: float = 0.0

  def predict(self, n_members: int, flops_per_member_step: float,
              steps: int, workers: int = 1,
              unit_samples_per_member_step: float = 0.0) -> float:
    """Predicted seconds for one group (module docstring).

    With ``workers``, the group runs as ``b = min(workers, n)`` blocks side
    by side (``member_blocks``), each of ``ceil(n / b)`` members, after one
    compile. ``unit_samples_per_member_step`` is ``B U(w)``
    (``population.hidden_unit_samples``).

    Example:
      >>> model = CostModel(compile_s=1.0, step_s=0.0, flops_per_s=1e9,
      ...                   unit_s=1e-9)
      >>> model.predict(n_members=2, flops_per_member_step=1e6, steps=1000)
      3.0
      >>> model.predict(2, 1e6, 1000, workers=2)
      2.0
      >>> model.predict(2, 1e6, 1000, unit_samples_per_member_step=1e6)
      5.0
    """
    per_block = -(-n_members // max(1, min(workers, n_members)))
    return self.compile_s + steps * (self.step_s + per_block * (
        flops_per_member_step / self.flops_per_s
        + unit_samples_per_member_step * self.unit_s))


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
                batch: int, cost_model: CostModel | None = None,
                workers: int = 1) -> list[ProgramGroup]:
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
    workers: programs run side by side (``member_blocks``).

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
        len(indices), training_flops(padded, batch), config.steps, workers,
        hidden_unit_samples(padded, batch))
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


@dataclasses.dataclass(frozen=True)
class MemberBlock:
  """The members of one group that one program trains.

  Attributes:
    padded_model: the group's padded network.
    member_indices: positions in the population, the first ``n_members``
      distinct, then copies of the last one so that every block of a group
      has the same size (and so shares its compiled program).
    n_members: how many of ``member_indices`` are the block's own.
  """
  padded_model: models.MLP
  member_indices: tuple[int, ...]
  n_members: int


def member_blocks(groups: Sequence[ProgramGroup], members: Sequence[Member],
                  workers: int) -> list[MemberBlock]:
  """Splits every group into ``min(workers, n)`` blocks, largest work first.

  Block j of a group of n members takes every b-th member from the j-th
  (b blocks), ordered by width, so the blocks of a grid group carry the same
  widths and share one compiled program; the shorter blocks are topped up
  with copies of their last member. Blocks are ordered by decreasing work
  (members times parameters of the padded network), so that workers taking
  them in order finish together.

  Example:
    >>> from lminima.train.population import TrainConfig
    >>> ms = [Member(1, w, s) for w, s in ((4, 0), (4, 1), (8, 0), (8, 1),
    ...                                    (8, 2))]
    >>> groups = plan_groups(ms, 2, 1, TrainConfig(), width_strategy="masked",
    ...                      batch=10)
    >>> [(b.member_indices, b.n_members) for b in member_blocks(groups, ms, 2)]
    [((0, 2, 4), 3), ((1, 3, 3), 2)]
  """
  ranked = []
  for group in groups:
    n_blocks = min(workers, len(group.member_indices))
    size = -(-len(group.member_indices) // n_blocks)
    for j in range(n_blocks):
      own = sorted(group.member_indices[j::n_blocks],
                   key=lambda i: (members[i].true_width, i))
      ranked.append((-size * group.padded_model.n_params, MemberBlock(
          group.padded_model,
          tuple(own) + (own[-1],) * (size - len(own)), len(own))))
  return [block for _, block in sorted(ranked, key=lambda pair: pair[0])]


START_TOGETHER_BYTES = 256 * 2 ** 20
"""Host bytes up to which the groups of a depth start in one program."""

START_BYTES_PER_PARAM = 4 * 4
"""Bytes per parameter of a member's initial state: float32 parameters,
gradient and two optimizer moments."""


def shared_start_bytes(n_members: int, widest_n_params: int) -> int:
  """Host bytes of a depth's shared initial state (``start_groups``): its
  members at the widest width; 0 when it exceeds ``START_TOGETHER_BYTES``
  and the groups start apart."""
  size = n_members * widest_n_params * START_BYTES_PER_PARAM
  return size if size <= START_TOGETHER_BYTES else 0


def start_groups(groups: Sequence[ProgramGroup]
                 ) -> list[tuple[models.MLP, list[ProgramGroup]]]:
  """Which groups share one start program, and the network it starts them in.

  The groups of one depth start together in the widest of their networks
  (one compile for the depth) while that state, every member of the depth at
  the widest width, takes at most ``START_TOGETHER_BYTES``; beyond that (wide
  networks, whose compile is small next to their training) each group starts
  in its own network, so that narrow members do not hold wide state.

  Example:
    >>> from lminima.train.population import TrainConfig
    >>> ms = [Member(2, w, 0) for w in (4, 8, 4096)]
    >>> groups = plan_groups(ms, 3, 1, TrainConfig(),
    ...                      width_strategy="per_width", batch=10)
    >>> [(m.widths, len(g)) for m, g in start_groups(groups[:2])]
    [((8, 8), 2)]
    >>> [m.widths for m, _ in start_groups(groups)]
    [(4, 4), (8, 8), (4096, 4096)]
  """
  by_depth: dict[int, list[ProgramGroup]] = {}
  for group in groups:
    by_depth.setdefault(group.padded_model.depth, []).append(group)
  starts = []
  for depth_groups in by_depth.values():
    widest = max((group.padded_model for group in depth_groups),
                 key=lambda model: model.n_params)
    members = sum(len(group.member_indices) for group in depth_groups)
    if shared_start_bytes(members, widest.n_params):
      starts.append((widest, list(depth_groups)))
    else:
      starts += [(group.padded_model, [group]) for group in depth_groups]
  return starts


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
