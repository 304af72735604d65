"""Where one study member's analysis spends its time, and its FLOP floor.

Trains one cell of a study (default: the digits study's largest, depth 3
width 16, P = 986), then analyses ``--members`` of its members as the sweep
does (``lminima.study.sweep.analyse_member``: refinement, certificate with
its proof or descent probe, continuation, theory record) with a timer on
each phase, and times the dense work of one Levenberg-Marquardt iteration at
that size: the Hessian (P Hessian-vector products in one program) and its
``eigh``. The floor of an iteration is its FLOPs (XLA's count for the
Hessian program; 4/3 P^3 + 2 P^3 for ``eigh``: the reduction to tridiagonal
form and the back-transformation of the eigenvectors, a lower bound) at the
FLOP rate this machine's BLAS reaches on a float64 matrix product, on every
core for the Hessian and on one for the ``eigh`` (refinement runs it
single-threaded).

Usage:
  python benchmarks/bench_member.py [--config=digits] [--depth=3] \
      [--width=16] [--members=2] > table.md
"""

import collections
import contextlib
import datetime
import os
import platform
import tempfile
import time
import timeit

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from lminima import configs
from lminima.core import provenance
from lminima.core import problem as problem_lib
from lminima.core.problem import Problem
from lminima.critical import certify
from lminima.critical import outcomes
from lminima.critical.refinement import serial_blas
from lminima.study import config as study_config
from lminima.study import records
from lminima.study import sweep
from lminima.theory import quantities
from lminima.train import driver
from lminima.train.population import Member

_CONFIG = flags.DEFINE_string("config", "digits", "A study of lminima/configs.")
_DEPTH = flags.DEFINE_integer("depth", 3, "The cell's depth.")
_WIDTH = flags.DEFINE_integer("width", 16, "The cell's width.")
_MEMBERS = flags.DEFINE_integer("members", 2, "Members analysed.")


@contextlib.contextmanager
def _timed(module, name, seconds, calls):
  """Adds the time of every call of ``module.name`` to ``seconds[name]``."""
  original = getattr(module, name)

  def wrapper(*args, **kwargs):
    start = time.perf_counter()
    try:
      return original(*args, **kwargs)
    finally:
      seconds[name] += time.perf_counter() - start
      calls[name] += 1
  setattr(module, name, wrapper)
  try:
    yield
  finally:
    setattr(module, name, original)


def _least(work, repeats=3):
  work()  # compiles
  return min(timeit.repeat(work, number=1, repeat=repeats))


def _matmul_flops_per_s(n=1500):
  a = np.random.default_rng(0).standard_normal((n, n))
  return 2 * n ** 3 / _least(lambda: a @ a)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  config = configs.load(_CONFIG.value)
  config.workdir = tempfile.mkdtemp()
  os.makedirs(os.path.join(config.workdir, records.PARAMS_DIR))
  data = study_config.load_data(config)
  members = [Member(_DEPTH.value, _WIDTH.value, seed)
             for seed in range(config.num_seeds)]
  start = time.perf_counter()
  trained = driver.train_population(data, members,
                                    study_config.train_config(config))
  train_s = time.perf_counter() - start
  trained = [r for r in trained if not r.diverged][:_MEMBERS.value]

  seconds, calls = collections.defaultdict(float), collections.Counter()
  iters = collections.Counter()
  with _timed(outcomes, "refine", seconds, calls), \
      _timed(certify, "certificate", seconds, calls), \
      _timed(certify, "descent_probe", seconds, calls), \
      _timed(quantities, "theory_record", seconds, calls):
    totals = []
    for result in trained:
      start = time.perf_counter()
      row = sweep.analyse_member(result, data, config)
      totals.append(time.perf_counter() - start)
      # fate_iters counts the whole path: refinement and continuation.
      path = row.get("fate_iters") or row.get("refine_iters") or 0
      iters["LM iterations"] += path
      iters["of them continuation"] += path - (row.get("refine_iters") or 0)
      iters["outcome " + row["outcome"]] += 1

  problem = Problem.for_module(trained[0].model, trained[0].params, data.x,
                               data.y, normalization=config.normalization)
  p = problem.n_params
  hessian = problem.dense_hessian_at(problem.flat)
  hessian_s = _least(lambda: jax.block_until_ready(
      problem.dense_hessian_at(problem.flat)))
  with serial_blas():
    eigh_s = _least(lambda: np.linalg.eigh(hessian))
  cost = problem_lib._dense_hessian.lower(  # pylint: disable=protected-access
      problem.objective, jnp.asarray(problem.flat), problem.params,
      problem.x, problem.y).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  hessian_flops = float(cost.get("flops", np.nan))
  eigh_flops = (4 / 3 + 2) * p ** 3
  # The Hessian program runs on every core, the eigh on one (serial_blas).
  rate = _matmul_flops_per_s()
  with serial_blas():
    rate_one = _matmul_flops_per_s()
  floor_s = hessian_flops / rate + eigh_flops / rate_one

  machine = provenance.machine_info()
  versions = provenance.library_versions()
  n = len(totals)
  print(f"# One member's analysis: {_CONFIG.value} depth {_DEPTH.value} "
        f"width {_WIDTH.value} (P = {p}, m = {data.m}, d_y = {data.d_y})\n")
  print(f"{datetime.date.today()}, {machine['cpu']}, {machine['cores']} "
        f"cores, {platform.python_version()}, jax {versions.get('jax')}; "
        f"`python benchmarks/bench_member.py --config={_CONFIG.value} "
        f"--depth={_DEPTH.value} --width={_WIDTH.value} "
        f"--members={_MEMBERS.value}`\n")
  print(f"Training the cell ({config.num_seeds} members, one population): "
        f"{train_s:.1f} s. Members analysed: {n} "
        f"({', '.join(f'{v} {k}' for k, v in sorted(iters.items()))}).\n")
  print("| phase | calls | seconds per member | share |")
  print("|---|---|---|---|")
  total = sum(totals) / n
  for name in ("refine", "certificate", "descent_probe", "theory_record"):
    print(f"| {name} | {calls[name]} | {seconds[name] / n:.2f} | "
          f"{seconds[name] / n / total:.0%} |")
  print(f"| whole analysis | {n} | {total:.2f} | 100% |\n")
  lm_iters = iters["LM iterations"] / n
  print("`refine` counts both the refinement and the continuation (LM "
        "without the gradient stop); `descent_probe` runs inside "
        "`certificate`.\n")
  print("| one LM iteration's dense work | seconds | GFLOP | floor at the "
        "BLAS dgemm rate |")
  print("|---|---|---|---|")
  print(f"| Hessian (P HVPs, one program, every core) | {hessian_s:.3f} | "
        f"{hessian_flops / 1e9:.2f} | {hessian_flops / rate:.3f} s at "
        f"{rate / 1e9:.1f} GFLOP/s |")
  print(f"| eigh (one thread) | {eigh_s:.3f} | {eigh_flops / 1e9:.2f} | "
        f"{eigh_flops / rate_one:.3f} s at {rate_one / 1e9:.1f} GFLOP/s |")
  print(f"| both | {hessian_s + eigh_s:.3f} | "
        f"{(hessian_flops + eigh_flops) / 1e9:.2f} | {floor_s:.3f} s "
        f"({floor_s / (hessian_s + eigh_s):.0%} of the measured) |\n")
  print(f"Refinement and continuation: {lm_iters:.0f} LM iterations per "
        f"member in {seconds['refine'] / n:.1f} s, "
        f"{seconds['refine'] / n / max(lm_iters, 1):.3f} s per iteration; "
        f"its dense work timed alone above: {hessian_s + eigh_s:.3f} s.")


if __name__ == "__main__":
  app.run(main)
