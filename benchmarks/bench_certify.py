"""Members refined + certified per second: batched (one program per shape)
against the sequential path (``refine`` + ``certificate`` per member).

Cases (``lminima.study.sweep.get_config()`` defaults: synthetic m=100, d_x=5,
d_y=2, tanh, depths 1-3, widths 2-16, refine_max_iters=200):

* (a) the default sweep's 36 members (3 seeds);
* (b) 256 members of the same grid (seeds 0-21, the first 256 in seed-major
  order, so every cell has 21 or 22 seeds).

Case (c), MNIST-input members certified matrix free against a
hessian-eigenthings loop, is ``benchmarks/bench_certify_mnist.py``.

The members are trained once (``driver.train_population`` per depth, as the
sweep does). Only refinement + certification are timed, end to end: each
path runs in a FRESH process (its own compilations included, no persistent
compilation cache), as ``sweep.analyse_member`` does it with fate_iters=0
and theory off. The batched path calls
``batched_refine.refine_and_certify_many`` once per shape group. Agreement:
stop reasons, verdicts, and refined losses of converged members (relative
1e-9, or absolute 1e-20 for interpolating minima with L ~ 0).

``--per_shape`` instead prints, for one member of each of the grid's 12
shapes, what one LM iteration of the sequential path is made of: the first
calls of its two compiled programs (the dense Hessian, the loss and gradient;
compilation included) and the steady times of the Hessian, of ``eigh`` (and,
for comparison, ``eigvalsh`` and a Cholesky factorization) with one BLAS
thread, and of the loss and gradient.

Usage:
  python benchmarks/bench_certify.py              # (a) and (b)
  python benchmarks/bench_certify.py --quick      # (a) only, about a minute
  python benchmarks/bench_certify.py --per_shape  # the cost of an iteration
"""

from __future__ import annotations

import argparse
import os
import pickle
import subprocess
import sys
import tempfile
import time

TARGET = 5.0


def _train(num_seeds: int, limit: int | None):
  """Trained members of the default grid with ``num_seeds`` seeds."""
  from lminima.train import population  # pylint: disable=g-import-not-at-top
  from lminima.study import config as study_config
  from lminima.train import driver
  config = study_config.get_config()
  data = study_config.load_data(config)
  members = []
  for depth in config.depths:  # one population per depth, as the sweep
    group = [population.Member(depth=depth, width=width, seed=seed)
             for width in config.widths for seed in range(num_seeds)]
    members += driver.train_population(data, group,
                                      study_config.train_config(config),
                                      width_strategy=config.width_strategy)
  members = [r for r in members if not r.diverged]
  members.sort(key=lambda r: (r.member.seed, r.member.depth, r.member.width))
  members = members[:limit]
  return [(r.member.depth, r.member.width, r.member.seed, r.model, r.params)
          for r in members]


def _worker(path: str, members_file: str, out_file: str) -> None:
  """Refines and certifies the members in this (fresh) process."""
  from lminima.critical.batched import refine as batched_refine  # pylint: disable=g-import-not-at-top
  from lminima.critical import certify
  from lminima.critical import refinement
  from lminima.study import config as study_config
  from lminima.core.problem import Problem  # pylint: disable=g-import-not-at-top
  config = study_config.get_config()
  tol = study_config.tolerances(config)
  data = study_config.load_data(config)
  with open(members_file, "rb") as f:
    members = pickle.load(f)

  def refine_and_certify():
    problems = [Problem.for_module(
        model, params, data.x, data.y, normalization=config.normalization,
        memory_budget_bytes=config.memory_budget_bytes)
                for _, _, _, model, params in members]
    if path == "batched":
      results, certs = batched_refine.refine_and_certify_groups(
          problems, tol=tol, max_iters=config.refine_max_iters,
          dense_max_params=config.dense_max_params)
    else:
      results = [refinement.refine(
          problem, method=config.refine_method, tol=tol,
          max_iters=config.refine_max_iters)
                 for problem in problems]
      certs = [certify.certificate(problem.at(refined.params), tol=tol,
                                   dense_max_params=config.dense_max_params)
               for problem, refined in zip(problems, results)]
    return [(refined.stop_reason, refined.iters, refined.loss, cert.verdict,
             cert.lambda_min) for refined, cert in zip(results, certs)]

  start = time.perf_counter()
  rows = refine_and_certify()  # cold: compilation included
  seconds = time.perf_counter() - start
  start = time.perf_counter()
  refine_and_certify()  # again in this process: compiled programs reused
  warm_seconds = time.perf_counter() - start
  with open(out_file, "wb") as f:
    pickle.dump({"seconds": seconds, "warm_seconds": warm_seconds,
                 "rows": rows}, f)


def _per_shape() -> None:
  """Prints the --per_shape table (module docstring)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import scipy.linalg  # pylint: disable=g-import-not-at-top
  from lminima.critical import refinement  # pylint: disable=g-import-not-at-top
  from lminima.study import config as study_config
  from lminima.core.problem import Problem  # pylint: disable=g-import-not-at-top
  config = study_config.get_config()
  data = study_config.load_data(config)

  def first_call(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start

  def steady_ms(fn, reps=20):
    fn()
    start = time.perf_counter()
    for _ in range(reps):
      fn()
    return 1e3 * (time.perf_counter() - start) / reps

  print("| depth | width | P | first call s: Hessian | loss and gradient | "
        "steady ms: Hessian | eigh | eigvalsh | Cholesky | loss and gradient "
        "|\n|---|---|---|---|---|---|---|---|---|---|")
  totals = [0.0, 0.0]
  for depth, width, _, model, params in sorted(_train(1, None)):
    problem = Problem.for_module(model, params, data.x, data.y,
                                 normalization=config.normalization)
    flat = np.asarray(problem.flat)
    compile_s = (first_call(lambda: problem.dense_hessian_at(flat)),
                 first_call(lambda: problem.loss_and_grad_at(flat)))
    totals = [t + c for t, c in zip(totals, compile_s)]
    hessian = np.asarray(problem.dense_hessian_at(flat))
    shifted = hessian + (1.0 - np.linalg.eigvalsh(hessian)[0]) * np.eye(
        len(hessian))
    with refinement.serial_blas():
      times = [steady_ms(lambda: problem.dense_hessian_at(flat)),
               steady_ms(lambda: np.linalg.eigh(hessian)),
               steady_ms(lambda: np.linalg.eigvalsh(hessian)),
               steady_ms(lambda: scipy.linalg.cho_factor(shifted)),
               steady_ms(lambda: problem.loss_and_grad_at(flat))]
    print(f"| {depth} | {width} | {problem.n_params} | {compile_s[0]:.2f} | "
          f"{compile_s[1]:.2f} | " + " | ".join(f"{t:.2f}" for t in times)
          + " |", flush=True)
  print(f"\nFirst calls summed over the shapes: Hessian {totals[0]:.1f} s, "
        f"loss and gradient {totals[1]:.1f} s.")


def _run_path(path: str, members_file: str) -> dict:
  with tempfile.NamedTemporaryFile(suffix=".pkl", delete=False) as f:
    out_file = f.name
  env = dict(os.environ, JAX_ENABLE_COMPILATION_CACHE="false")
  subprocess.run([sys.executable, __file__, "--worker", path, members_file,
                  out_file], check=True, env=env)
  with open(out_file, "rb") as f:
    result = pickle.load(f)
  os.unlink(out_file)
  return result


def _agreement(seq_rows, bat_rows) -> tuple[int, int, int, float]:
  """(same stop reason, same verdict, converged pairs, max loss deviation
  of converged members relative to max(|L|, 1e-11))."""
  stops = sum(a[0] == b[0] for a, b in zip(seq_rows, bat_rows))
  verdicts = sum(a[3] == b[3] for a, b in zip(seq_rows, bat_rows))
  both = [(a[2], b[2]) for a, b in zip(seq_rows, bat_rows)
          if a[0] == b[0] == "grad_tol"]
  worst = max((abs(a - b) / max(abs(a), 1e-11) for a, b in both),
              default=0.0)
  return stops, verdicts, len(both), worst


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true",
                      help="case (a) only (about a minute)")
  parser.add_argument("--per_shape", action="store_true",
                      help="what one LM iteration costs, per shape")
  parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    _worker(*args.worker)
    return
  if args.per_shape:
    _per_shape()
    return
  cases = [("a", "default sweep", 3, None)]
  if not args.quick:
    cases.append(("b", "same grid, more seeds", 22, 256))
  print(f"{'case':<4} {'members':>7} {'sequential s':>12} {'batched s':>9} "
        f"{'seq m/s':>8} {'bat m/s':>8} {'ratio':>6}  agreement")
  lines = []
  for name, label, seeds, limit in cases:
    start = time.perf_counter()
    members = _train(seeds, limit)
    train_s = time.perf_counter() - start
    with tempfile.NamedTemporaryFile(suffix=".pkl", delete=False) as f:
      pickle.dump(members, f)
      members_file = f.name
    batched = _run_path("batched", members_file)
    sequential = _run_path("sequential", members_file)
    os.unlink(members_file)
    n = len(members)
    ratio = sequential["seconds"] / batched["seconds"]
    stops, verdicts, converged, worst = _agreement(sequential["rows"],
                                                   batched["rows"])
    counts = {}
    for row in batched["rows"]:
      counts[row[3]] = counts.get(row[3], 0) + 1
    warm = sequential["warm_seconds"] / batched["warm_seconds"]
    print(f"({name})  {n:>7} {sequential['seconds']:>12.1f} "
          f"{batched['seconds']:>9.1f} {n / sequential['seconds']:>8.2f} "
          f"{n / batched['seconds']:>8.2f} {ratio:>6.2f}  stop {stops}/{n}, "
          f"verdict {verdicts}/{n}, converged loss rel dev {worst:.1e} "
          f"({converged} members)", flush=True)
    print(f"     compiled (2nd pass in the same process): sequential "
          f"{sequential['warm_seconds']:.1f} s, batched "
          f"{batched['warm_seconds']:.1f} s, ratio {warm:.2f}", flush=True)
    lines.append(f"({name}) {label}: trained in {train_s:.1f} s (not timed); "
                 f"verdicts {dict(sorted(counts.items()))}; target "
                 f">= {TARGET:.0f}x: {'met' if ratio >= TARGET else 'NOT met'}"
                 f" ({ratio:.2f}x)")
  print("\n".join(lines))
  print("ratio = sequential seconds / batched seconds (members/s batched over "
        "sequential); each path in a fresh process, compile included; the "
        "compiled line reruns the same members in that process.")


if __name__ == "__main__":
  main()
