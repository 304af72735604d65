"""Population training: the driver that runs a population's programs.

``train_population(data, members, config)`` trains every ``Member`` of a
population (``lminima.population``: the networks, the loss, the optimizers,
minibatches and divergence) and returns one ``MemberResult`` per member:

1. ``lminima.planner`` splits the population into program groups (one depth
   and one padded width each), choosing the split with a ``CostModel``;
2. each group is one compiled program (``lminima.program``): an init call and
   ``ceil(steps / chunk_steps)`` calls of one compiled chunk of equal length
   ``ceil(steps / n_chunks)``, whose at most ``n_chunks - 1`` surplus update
   slots are no-ops;
3. the host dispatches every chunk of every program before reading any
   result. Execution is asynchronous, so compiling program k + 1 overlaps
   running program k; results are then read in order, one chunk's losses at
   a time (for ``progress``), and unpadded.

Cost models. ``backend_cost_model`` measures this machine once, with
``calibrate_cost_model`` (cached per machine in ``lminima.cache``), which
times a few tiny programs:

    compile_s   = compile time of a small program (init and chunk),
    step_s      = t_tiny / T          (1 member of width 4: fixed cost),
    flops_per_s = FLOPs_heavy / (t_heavy - t_tiny)
                                      (8 members of depth 2 and width 128).

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

import dataclasses
import functools
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
    member_model, training_flops


def train_population(data: Dataset, members: Sequence[Member],
                     config: TrainConfig, *, width_strategy: str = "auto",
                     progress: Callable[[int, int], None] | None = None,
                     cost_model: CostModel | None = None,
                     devices: Sequence[jax.Device] | None = None
                     ) -> list[MemberResult]:
  """Trains every member and returns their results in the order of ``members``.

  Args:
    data: training set; cast to float32 for training.
    members: the population (duplicates allowed).
    config: shared settings.
    width_strategy: ``"auto"``, ``"per_width"`` or ``"masked"``
      (``lminima.planner``).
    progress: called as each chunk's result arrives with ``(done, total)``
      counted in member-steps (one member advanced by one step). Results are
      read after every program has been dispatched (and so compiled).
    cost_model: overrides the backend's cost model for ``"auto"``.
    devices: the devices a program's members are sharded over (a mesh axis
      ``"members"``); default every local device of the default backend.
      Members never interact, so the split changes no number; a group is
      padded with copies of its last member to a multiple of the device
      count, and the copies are dropped.

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
  batch = _batch_size(data, config)
  if cost_model is None and width_strategy == "auto":
    cost_model = backend_cost_model()
  groups = planner.plan_groups(members, data.d_x, data.d_y, config,
                               width_strategy=width_strategy, batch=batch,
                               cost_model=cost_model)
  x = jnp.asarray(data.x, TRAIN_DTYPE)
  y = jnp.asarray(data.y, TRAIN_DTYPE)
  n_chunks = -(-config.steps // config.chunk_steps)
  # Equal chunks covering `steps`, so one compiled program runs every chunk;
  # the at most n_chunks - 1 surplus slots of the last chunk are no-ops.
  chunk_len = -(-config.steps // n_chunks)
  hyper = (np.int32(config.steps), np.float32(config.divergence_factor))
  # Dispatch every program first: execution is asynchronous, so compiling
  # program k + 1 overlaps running program k. Then collect in order.
  dispatched = []
  call_start = time.perf_counter()
  mesh = _member_mesh(devices)
  if mesh is not None:
    x, y = (jax.device_put(a, NamedSharding(mesh, PartitionSpec()))
            for a in (x, y))
  for group in groups:
    dispatch_start = time.perf_counter()
    group_members = [members[i] for i in group.member_indices]
    padded_members = _pad_to_devices(group_members, mesh)
    spec, state = program.start_program(padded_members, group.padded_model,
                                        config, x, y, batch, chunk_len)
    if mesh is not None:
      state = _shard_members(state, mesh, len(padded_members))
    outputs = []
    for _ in range(n_chunks):
      state, end_loss, end_grad_norm = program.run_chunk(state, x, y, *hyper,
                                                         spec=spec)
      outputs.append((end_loss, end_grad_norm))
    dispatched.append((group, group_members, state, outputs, dispatch_start))
  total = config.steps * len(members)
  done = 0
  previous_finished = call_start
  results: list[MemberResult | None] = [None] * len(members)
  for group, group_members, state, outputs, dispatch_start in dispatched:
    history = []
    for index, (end_loss, _) in enumerate(outputs):
      history.append(np.asarray(end_loss))  # waits for this chunk only
      if progress is not None:
        progress(done + min((index + 1) * chunk_len, config.steps) *
                 len(group_members), total)
    done += config.steps * len(group_members)
    params, diverged, applied, grad_norm = jax.device_get(
        (state.params, state.diverged, state.applied, outputs[-1][1]))
    # A program's wall time runs from the end of the previous one (or its own
    # dispatch, if later) to its end, so the shares add up to the call's.
    finished = time.perf_counter()
    wall_share = (finished - max(previous_finished, dispatch_start)) / len(
        group_members)
    previous_finished = finished
    history = np.stack(history, axis=1)
    for k, (i, member) in enumerate(zip(group.member_indices, group_members)):
      model = member_model(data.d_x, data.d_y, member, config)
      member_params = models.unpad_params(
          jax.tree_util.tree_map(lambda leaf: leaf[k], params), model)
      results[i] = MemberResult(
          member=member, model=model, params=member_params,
          loss=float(history[k, -1]), grad_norm=float(grad_norm[k]),
          diverged=bool(diverged[k]), steps=int(applied[k]),
          loss_history=history[k], wall_s=wall_share)
  return results  # type: ignore[return-value]


def _member_mesh(devices: Sequence[jax.Device] | None) -> Mesh | None:
  """A one-axis mesh ``("members",)`` over ``devices``; None for one device."""
  devices = list(jax.local_devices() if devices is None else devices)
  if not devices:
    raise ValueError("devices is empty")
  if len(devices) == 1:
    return None
  return Mesh(np.array(devices), ("members",))


def _pad_to_devices(members: list[Member], mesh: Mesh | None) -> list[Member]:
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
                    machine["cores"], f"jax {jax.__version__}"))
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


def calibrate_cost_model(steps: int = 200) -> CostModel:
  """Measures a ``CostModel`` on the default backend (module docstring).

  Runs two programs on synthetic data (m=512, d_x=8, d_y=2, tanh, sgd): the
  compile time of the first one's init and chunk is ``compile_s``; 1 member
  of width 4 times ``step_s``; 8 members of depth 2 and width 128, whose
  excess time over the tiny one gives ``flops_per_s``.

  Example:
    >>> calibrate_cost_model(steps=20).flops_per_s > 0
    True
  """
  m, d_x, d_y = 512, 8, 2
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((m, d_x)), TRAIN_DTYPE)
  y = jnp.asarray(rng.standard_normal((m, d_y)), TRAIN_DTYPE)
  config = TrainConfig(optimizer="sgd", learning_rate=0.05, steps=steps,
                       chunk_steps=steps)

  def timed_program(depth, width, n):
    members = [Member(depth, width, seed) for seed in range(n)]
    model = member_model(d_x, d_y, members[0], config)
    args = (x, y, np.int32(steps), np.float32(config.divergence_factor))
    spec, state = program.start_program(members, model, config, x, y, m,
                                        steps)
    start = time.perf_counter()
    # Ahead-of-time compiles are never cached: both programs are compiled anew.
    program.init_state.lower(
        np.arange(n), np.ones(n, np.float32), np.float32(0), x, y, spec=spec,
        member_widths=(width,) * n).compile()
    compiled = program.run_chunk.lower(state, *args, spec=spec).compile()
    compile_s = time.perf_counter() - start
    jax.block_until_ready(compiled(state, *args))  # warm-up
    _, state = program.start_program(members, model, config, x, y, m, steps)
    jax.block_until_ready(state)
    start = time.perf_counter()
    jax.block_until_ready(compiled(state, *args))
    return compile_s, time.perf_counter() - start, training_flops(model, m,
                                                                 steps) * n

  compile_s, tiny_s, _ = timed_program(1, 4, 1)
  _, heavy_s, heavy_flops = timed_program(2, 128, 8)
  return CostModel(compile_s=compile_s, step_s=tiny_s / steps,
                   flops_per_s=heavy_flops / max(heavy_s - tiny_s, 1e-9))


def _batch_size(data: Dataset, config: TrainConfig) -> int:
  batch = data.m if config.batch_size is None else config.batch_size
  if batch > data.m:
    raise ValueError(f"batch_size {batch} exceeds the {data.m} samples")
  return batch
