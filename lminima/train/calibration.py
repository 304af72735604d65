"""The training planner's cost model of this machine, measured once.

``backend_cost_model`` measures this machine once, with
``calibrate_cost_model`` (cached per machine in ``lminima.train.cache``), which
times a few small programs:

    compile_s = compile time of a small program's chunk,
    step_s    = t_tiny / T          (1 member of width 4: fixed cost),

and solves the excess times over the tiny one of 8 wide members (depth 2,
width 128) and 8 narrow ones (depth 2, width 8: mostly elementwise work),
whose shares of matmul and elementwise work differ, for ``1 / flops_per_s``
and ``unit_s``:

    (t - t_tiny) / (T n) = F / flops_per_s + B U unit_s.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lminima.core import provenance
from lminima.dtypes import TRAIN_DTYPE
from lminima.train import cache
from lminima.train import compiled
from lminima.train.planner import CostModel
from lminima.train.population import (Member, TrainConfig,
                                      hidden_unit_samples, member_model,
                                      training_flops)


def backend_cost_model() -> CostModel:
  """The cost model of this machine's default JAX backend.

  Measured by ``calibrate_cost_model`` the first time on a machine (a few
  seconds) and kept in the user cache (``lminima.train.cache``), keyed by the
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
    spec, state = compiled.start_program(members, model, config, x, y, m,
                                        steps)
    start = time.perf_counter()
    lowered = compiled.run_chunk.lower(state, *args, spec=spec)
    with cache.persistent_cache_off():  # time a compilation, not a read
      executable = lowered.compile()
    compile_s = time.perf_counter() - start
    jax.block_until_ready(executable(state, *args))  # warm-up
    _, state = compiled.start_program(members, model, config, x, y, m, steps)
    jax.block_until_ready(state)
    start = time.perf_counter()
    jax.block_until_ready(executable(state, *args))
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
