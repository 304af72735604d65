"""Population training: the driver that runs a population's programs.

``train_population(data, members, config)`` trains every ``Member`` of a
population (``lminima.train.population``: the networks, the loss, the
optimizers, minibatches and divergence) and returns one ``MemberResult`` per
member:

1. ``lminima.train.planner`` splits the population into program groups (one
   depth and one padded width each), choosing the split with a ``CostModel``,
   and each group into ``min(workers, n)`` member blocks of equal size;
2. one compiled call starts every member of a depth (its initial weights,
   optimizer state and first gradient: ``compiled.start_population``, widths
   traced), whatever its group, unless that state would be too large
   (``planner.start_groups``); each block's state is cut from it;
3. each block is one compiled program (``lminima.train.compiled``):
   ``ceil(steps / chunk_steps)`` calls of one compiled chunk of equal length
   ``ceil(steps / n_chunks)``, whose at most ``n_chunks - 1`` surplus update
   slots are no-ops. The blocks of a group share their compiled programs;
4. ``workers`` host threads run the blocks, largest first, each from its
   start to its last chunk's losses, which are reported (``progress``) in the
   calling thread as they arrive.

Why threads: XLA:CPU runs the small matmuls of one training step on about
one core, and calls made from different host threads run side by side, while
calls dispatched from one thread run one after the other (docs/design.md,
"Training"). So on a CPU the default is one worker per usable core; on an
accelerator one program fills the device and the default is 1. The blocks'
sizes, hence the rounding of their batched kernels, depend on ``workers``:
results on one machine are reproducible, and equal across worker counts to
float32 rounding.

Cost models: the planner's ``CostModel`` of this machine comes from
``lminima.train.calibration.backend_cost_model`` unless one is given.

Example:
  >>> from lminima import data
  >>> ds = data.synthetic(m=64, d_x=3, d_y=1, seed=0)
  >>> members = [Member(depth=1, width=8, seed=s) for s in range(3)]
  >>> config = TrainConfig(optimizer="sgd", learning_rate=0.05, steps=50,
  ...                      chunk_steps=10)
  >>> results = train_population(ds, members, config)
  >>> [r.member.seed for r in results], len(results[0].loss_history)
  ([0, 1, 2], 5)
  >>> bool(results[0].loss < results[0].loss_history[0])
  True
"""

from __future__ import annotations

import concurrent.futures
import os
import queue
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec
import numpy as np

from lminima.core import models, padding
from lminima.data import Dataset
from lminima.dtypes import TRAIN_DTYPE
from lminima.train import calibration
from lminima.train import compiled
from lminima.train import planner
from lminima.train.planner import CostModel
from lminima.train.population import (Member, MemberResult, TrainConfig,
                                      member_model)


def train_population(data: Dataset, members: Sequence[Member],
                     config: TrainConfig, *, width_strategy: str = "auto",
                     progress: Callable[[int, int], None] | None = None,
                     cost_model: CostModel | None = None,
                     devices: Sequence[jax.Device] | None = None,
                     workers: int | None = None) -> list[MemberResult]:
  """Trains every member and returns their results in the order of ``members``.

  Args:
    data: training set; cast to float32 for training.
    members: the population (duplicates allowed).
    config: shared settings.
    width_strategy: ``"auto"``, ``"per_width"`` or ``"masked"``
      (``lminima.train.planner``).
    progress: called (in the calling thread) as each chunk's result arrives,
      with ``(done, total)`` counted in member-steps (one member advanced by
      one step).
    cost_model: overrides the backend's cost model for ``"auto"``.
    devices: the devices a program's members are sharded over (a mesh axis
      ``"members"``); default every local device of the default backend.
      Members never interact, so the split changes no number; a group is
      padded with copies of its last member to a multiple of the device
      count, and the copies are dropped.
    workers: programs run at once, each from its own host thread (module
      docstring); default ``default_workers(devices)``: the usable cores on a
      single CPU device, else 1.

  Returns:
    One ``MemberResult`` per member.

  Example:
    >>> from lminima import data
    >>> ds = data.synthetic(m=32, d_x=2, d_y=1)
    >>> out = train_population(ds, [Member(1, 4, 0), Member(1, 8, 0)],
    ...                        TrainConfig(steps=20, chunk_steps=10))
    >>> [r.model.widths for r in out], len(out[0].loss_history)
    ([(4,), (8,)], 2)
  """
  if width_strategy not in planner.WIDTH_STRATEGIES:
    raise ValueError(f"unknown width_strategy {width_strategy!r}; choose one "
                     f"of {planner.WIDTH_STRATEGIES}")
  if workers is None:
    workers = default_workers(devices)
  if isinstance(workers, bool) or int(workers) != workers or workers < 1:
    raise ValueError(f"workers must be a positive integer, got {workers!r}")
  batch = _batch_size(data, config)
  if cost_model is None and width_strategy == "auto":
    cost_model = calibration.backend_cost_model()
  groups = planner.plan_groups(members, data.d_x, data.d_y, config,
                               width_strategy=width_strategy, batch=batch,
                               cost_model=cost_model, workers=workers)
  x = jnp.asarray(data.x, TRAIN_DTYPE)
  y = jnp.asarray(data.y, TRAIN_DTYPE)
  n_chunks = -(-config.steps // config.chunk_steps)
  # Equal chunks covering `steps`, so one compiled program runs every chunk;
  # the at most n_chunks - 1 surplus slots of the last chunk are no-ops.
  chunk_len = -(-config.steps // n_chunks)
  hyper = (np.int32(config.steps), np.float32(config.divergence_factor))
  mesh = _member_mesh(devices)
  if mesh is not None:
    x, y = (jax.device_put(a, NamedSharding(mesh, PartitionSpec()))
            for a in (x, y))
  call_start = time.perf_counter()
  blocks = planner.member_blocks(groups, members, workers)
  starts = _start_states(members, groups, config, x, y, batch, chunk_len)
  arrived: queue.Queue = queue.Queue()

  def run_block(block: planner.MemberBlock):
    """One program, start to end, in a worker thread; puts None when done."""
    try:
      return run_program(block)
    finally:
      arrived.put(None)

  def run_program(block: planner.MemberBlock):
    start = time.perf_counter()
    indices = _pad_to_devices(list(block.member_indices), mesh)
    spec = compiled.program_spec([members[i] for i in indices],
                                block.padded_model, config, data.m, batch,
                                chunk_len)
    started, rows = starts[block.padded_model]
    state = compiled.crop_state(started, np.array([rows[i] for i in indices]),
                               spec)
    state = (jax.device_put(state) if mesh is None else
             _shard_members(state, mesh, len(indices)))
    outputs = [None] * n_chunks
    for index in range(n_chunks):
      state, *outputs[index] = compiled.run_chunk(state, x, y, *hyper,
                                                 spec=spec)
    history = []
    for index, (end_loss, _) in enumerate(outputs):
      history.append(np.asarray(end_loss))  # waits for this chunk only
      arrived.put((min(chunk_len, config.steps - index * chunk_len) *
                   block.n_members))
    fetched = jax.device_get(
        (state.params, state.diverged, state.applied, outputs[-1][1]))
    return np.stack(history, axis=1), fetched, time.perf_counter() - start

  total = config.steps * len(members)
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    futures = [pool.submit(run_block, block) for block in blocks]
    done, running = 0, len(blocks)
    while running:
      steps = arrived.get()
      if steps is None:
        running -= 1
        continue
      done += steps
      if progress is not None:
        progress(done, total)
    outcomes = [future.result() for future in futures]  # re-raises errors
  # Programs overlap in time, so each one's wall time is scaled to make the
  # members' shares add up to the call's wall time (the draw included).
  wall = time.perf_counter() - call_start
  busy = sum(elapsed for _, _, elapsed in outcomes)
  results: list[MemberResult | None] = [None] * len(members)
  for block, (history, fetched, elapsed) in zip(blocks, outcomes):
    params, diverged, applied, grad_norm = fetched
    wall_share = wall * elapsed / busy / block.n_members
    for k, i in enumerate(block.member_indices[:block.n_members]):
      model = member_model(data.d_x, data.d_y, members[i], config)
      member_params = padding.unpad_params(
          jax.tree_util.tree_map(lambda leaf, k=k: leaf[k], params), model)
      results[i] = MemberResult(
          member=members[i], model=model, params=member_params,
          loss=float(history[k, -1]), grad_norm=float(grad_norm[k]),
          diverged=bool(diverged[k]), steps=int(applied[k]),
          loss_history=history[k], wall_s=wall_share)
  return results  # type: ignore[return-value]


def predicted_seconds(data: Dataset, members: Sequence[Member],
                      config: TrainConfig, *, width_strategy: str,
                      cost_model: CostModel, workers: int | None = None
                      ) -> float:
  """The cost model's prediction for ``train_population`` on these
  arguments: the summed ``predicted_s`` of its program groups."""
  groups = planner.plan_groups(
      members, data.d_x, data.d_y, config, width_strategy=width_strategy,
      batch=_batch_size(data, config), cost_model=cost_model,
      workers=default_workers() if workers is None else workers)
  return float(sum(g.predicted_s for g in groups))


def default_workers(devices: Sequence[jax.Device] | None = None) -> int:
  """How many programs ``train_population`` runs at once by default.

  On one CPU device, the usable cores: XLA:CPU runs the small matmuls of a
  training step on one core, so programs run side by side from host threads
  use the others. Elsewhere (an accelerator, or members sharded over several
  devices) one program at a time already fills the devices.
  """
  devices = list(jax.local_devices() if devices is None else devices)
  if len(devices) != 1 or devices[0].platform != "cpu":
    return 1
  try:
    return max(1, len(os.sched_getaffinity(0)))
  except AttributeError:  # not on Linux
    return max(1, os.cpu_count() or 1)


def _start_states(members: Sequence[Member],
                  groups: Sequence[planner.ProgramGroup], config: TrainConfig,
                  x: jax.Array, y: jax.Array, batch: int, chunk_len: int
                  ) -> dict[models.MLP, tuple[compiled.State, dict[int, int]]]:
  """Every member's initial state, one compiled start per
  ``planner.start_groups`` entry (one per depth unless that is too large).

  Returns, for each group's padded network, the host state its blocks are
  cropped from and the row in it of each member (by position in
  ``members``).
  """
  starts = {}
  for model, start_groups in planner.start_groups(groups):
    indices = sorted(i for group in start_groups
                     for i in group.member_indices)
    _, state = compiled.start_program([members[i] for i in indices], model,
                                     config, x, y, batch, chunk_len)
    state = jax.device_get(state)
    rows = {i: row for row, i in enumerate(indices)}
    for group in start_groups:
      starts[group.padded_model] = (state, rows)
  return starts


def _member_mesh(devices: Sequence[jax.Device] | None) -> Mesh | None:
  """A one-axis mesh ``("members",)`` over ``devices``; None for one device."""
  devices = list(jax.local_devices() if devices is None else devices)
  if not devices:
    raise ValueError("devices is empty")
  if len(devices) == 1:
    return None
  return Mesh(np.array(devices), ("members",))


def _pad_to_devices(members: list, mesh: Mesh | None) -> list:
  if mesh is None:
    return members
  extra = -len(members) % mesh.size
  return members + [members[-1]] * extra


def _shard_members(state: compiled.State, mesh: Mesh, n: int) -> compiled.State:
  """Puts every per-member array (leading axis n) on the member axis."""
  split = NamedSharding(mesh, PartitionSpec("members"))
  whole = NamedSharding(mesh, PartitionSpec())
  return jax.tree_util.tree_map(
      lambda leaf: jax.device_put(
          leaf, split if leaf.ndim and leaf.shape[0] == n else whole), state)


def _batch_size(data: Dataset, config: TrainConfig) -> int:
  batch = data.m if config.batch_size is None else config.batch_size
  if batch > data.m:
    raise ValueError(f"batch_size {batch} exceeds the {data.m} samples")
  return batch
