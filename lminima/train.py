"""Population training: the driver that runs a population's programs.

``train_population(data, members, config)`` trains every ``Member`` of a
population (``lminima.population``: the networks, the loss, the optimizers,
minibatches and divergence) and returns one ``MemberResult`` per member:

1. ``lminima.planner`` splits the population into program groups (one depth
   and one padded width each), choosing the split with a ``CostModel``, and
   each group into ``min(workers, n)`` member blocks of equal size;
2. one compiled call starts every member of a depth (its initial weights,
   optimizer state and first gradient: ``program.start_population``, widths
   traced), whatever its group, unless that state would be too large
   (``planner.start_groups``); each block's state is cut from it;
3. each block is one compiled program (``lminima.program``):
   ``ceil(steps / chunk_steps)`` calls of one compiled chunk of equal length
   ``ceil(steps / n_chunks)``, whose at most ``n_chunks - 1`` surplus update
   slots are no-ops. The blocks of a group share their compiled programs;
4. ``workers`` host threads run the blocks, largest first, each from its
   start to its last chunk's losses, which are reported (``progress``) in the
   calling thread as they arrive.

Why threads: XLA:CPU runs the small matmuls of one training step on about
one core, and calls made from different host threads run side by side, while
calls dispatched from one thread run one after the other (measured in
BUILD_NOTES.md, "Fifth session"). So on a CPU the default is one worker per
usable core; on an accelerator one program fills the device and the default
is 1. The blocks' sizes, hence the rounding of their batched
kernels, depend on ``workers``: results on one machine are reproducible, and
equal across worker counts to float32 rounding.

Cost models. ``backend_cost_model`` measures this machine once, with
``calibrate_cost_model`` (cached per machine in ``lminima.cache``), which
times a few small programs:

    compile_s = compile time of a small program's chunk,
    step_s    = t_tiny / T          (1 member of width 4: fixed cost),

and solves the excess times over the tiny one of 8 wide members (depth 2,
width 128) and 8 narrow ones (depth 2, width 8: mostly elementwise work),
whose shares of matmul and elementwise work differ, for ``1 / flops_per_s``
and ``unit_s``:

    (t - t_tiny) / (T n) = F / flops_per_s + B U unit_s.

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
import dataclasses
import functools
import os
import queue
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec
import numpy as np

from lminima import TRAIN_DTYPE
from lminima import cache
from lminima import models
from lminima import planner
from lminima import program
from lminima import provenance
from lminima.data import Dataset
from lminima.planner import CostModel
from lminima.population import Member, MemberResult, TrainConfig, \
    hidden_unit_samples, member_model, training_flops


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
      (``lminima.planner``).
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
    cost_model = backend_cost_model()
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
    spec = program.program_spec([members[i] for i in indices],
                                block.padded_model, config, data.m, batch,
                                chunk_len)
    started, rows = starts[block.padded_model]
    state = program.crop_state(started, np.array([rows[i] for i in indices]),
                               spec)
    state = (jax.device_put(state) if mesh is None else
             _shard_members(state, mesh, len(indices)))
    outputs = [None] * n_chunks
    for index in range(n_chunks):
      state, *outputs[index] = program.run_chunk(state, x, y, *hyper,
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
      member_params = models.unpad_params(
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
                  ) -> dict[models.MLP, tuple[program.State, dict[int, int]]]:
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
    _, state = program.start_program([members[i] for i in indices], model,
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


def _shard_members(state: program.State, mesh: Mesh, n: int) -> program.State:
  """Puts every per-member array (leading axis n) on the member axis."""
  split = NamedSharding(mesh, PartitionSpec("members"))
  whole = NamedSharding(mesh, PartitionSpec())
  return jax.tree_util.tree_map(
      lambda leaf: jax.device_put(
          leaf, split if leaf.ndim and leaf.shape[0] == n else whole), state)


def backend_cost_model() -> CostModel:
  """The cost model of this machine's default JAX backend.

  Measured by ``calibrate_cost_model`` the first time on a machine (a few
  seconds) and kept in the user cache (``lminima.cache``), keyed by the
  backend, its devices, the CPU, the core count and the JAX version, so a
  plan never rests on constants measured on another machine.
  """
  machine = provenance.machine_info()
  key = " | ".join((jax.default_backend(), machine["devices"], machine["cpu"],
                    machine["cores"], f"jax {jax.__version__}",
                    _COST_MODEL_VERSION))
  return _machine_cost_model(key)


@functools.cache
def _machine_cost_model(key: str) -> CostModel:
  stored = cache.read_json(_COST_MODEL_FILE).get(key)
  if stored is not None:
    try:
      return CostModel(**stored)
    except TypeError:
      pass  # written by another version: measure again
  model = calibrate_cost_model()
  models_by_machine = cache.read_json(_COST_MODEL_FILE)
  models_by_machine[key] = dataclasses.asdict(model)
  cache.write_json(_COST_MODEL_FILE, models_by_machine)
  return model


_COST_MODEL_FILE = "cost_models.json"
# Bumped when what calibrate_cost_model times changes, so that models measured
# by an older lminima are measured again.
_COST_MODEL_VERSION = "programs v3"


def calibrate_cost_model(steps: int = 200) -> CostModel:
  """Measures a ``CostModel`` on the default backend (module docstring).

  Runs three programs on synthetic data (m=512, d_x=8, d_y=2, tanh, sgd):
  the compile time of the first one's chunk is ``compile_s``; 1 member of
  width 4 times ``step_s``; the excess times of 8 members of depth 2 and
  width 128 and of 8 of width 8 give ``flops_per_s`` and ``unit_s`` (a 2 x 2
  solve; where noise makes a coefficient negative, ``unit_s = 0`` and the
  wide program alone gives ``flops_per_s``).

  Example:
    >>> model = calibrate_cost_model(steps=20)
    >>> model.flops_per_s > 0 and model.unit_s >= 0
    True
  """
  m, d_x, d_y = 512, 8, 2
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((m, d_x)), TRAIN_DTYPE)
  y = jnp.asarray(rng.standard_normal((m, d_y)), TRAIN_DTYPE)
  config = TrainConfig(optimizer="sgd", learning_rate=0.05, steps=steps,
                       chunk_steps=steps)

  def timed_program(depth, width, n):
    """(compile s, run s, per member-step (FLOPs, unit-samples))."""
    members = [Member(depth, width, seed) for seed in range(n)]
    model = member_model(d_x, d_y, members[0], config)
    args = (x, y, np.int32(steps), np.float32(config.divergence_factor))
    spec, state = program.start_program(members, model, config, x, y, m,
                                        steps)
    start = time.perf_counter()
    lowered = program.run_chunk.lower(state, *args, spec=spec)
    with cache.persistent_cache_off():  # time a compilation, not a read
      compiled = lowered.compile()
    compile_s = time.perf_counter() - start
    jax.block_until_ready(compiled(state, *args))  # warm-up
    _, state = program.start_program(members, model, config, x, y, m, steps)
    jax.block_until_ready(state)
    start = time.perf_counter()
    jax.block_until_ready(compiled(state, *args))
    return compile_s, time.perf_counter() - start, (
        training_flops(model, m), hidden_unit_samples(model, m))

  compile_s, tiny_s, _ = timed_program(1, 4, 1)
  work, seconds = [], []
  for depth, width, n in ((2, 128, 8), (2, 8, 8)):
    _, run_s, per_member_step = timed_program(depth, width, n)
    work.append(per_member_step)
    seconds.append(max(run_s - tiny_s, 1e-9) / (steps * n))
  flops_per_s, unit_s = work_rates(work, seconds)
  return CostModel(compile_s=compile_s, step_s=tiny_s / steps,
                   flops_per_s=flops_per_s, unit_s=unit_s)


def work_rates(work: Sequence[tuple[float, float]], seconds: Sequence[float]
               ) -> tuple[float, float]:
  """``(flops_per_s, unit_s)`` from two programs' ``(FLOPs, unit-samples)``
  per member-step and seconds per member-step, ``t = F / flops_per_s + B U
  unit_s``. The first program is the wide one: where timing noise makes the
  2 x 2 solution negative, it alone gives ``flops_per_s`` and ``unit_s = 0``.

  Example:
    >>> flops_per_s, unit_s = work_rates([(2e6, 1e3), (1e4, 1e3)],
    ...                                  [2e-5 + 1e-6, 1e-7 + 1e-6])
    >>> f"{flops_per_s:.3g} FLOP/s, {unit_s:.3g} s"
    '1e+11 FLOP/s, 1e-09 s'
    >>> work_rates([(2e6, 1e3), (1e4, 1e3)], [1e-6, 2e-6])  # noise
    (2000000000000.0, 0.0)
  """
  per_flop, unit_s = np.linalg.solve(np.asarray(work, float),
                                     np.asarray(seconds, float))
  if not (per_flop > 0 and unit_s >= 0):
    per_flop, unit_s = seconds[0] / work[0][0], 0.0
  return float(1 / per_flop), float(unit_s)


def _batch_size(data: Dataset, config: TrainConfig) -> int:
  batch = data.m if config.batch_size is None else config.batch_size
  if batch > data.m:
    raise ValueError(f"batch_size {batch} exceeds the {data.m} samples")
  return batch
