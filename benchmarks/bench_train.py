"""Population training: lminima vs a sequential JAX loop vs a PyTorch loop.

Trains the grid depths x widths x seeds (tanh MLPs, full-batch gradient
descent with learning rate 0.05, mean-normalized squared loss, synthetic data
m x 10 -> 2) four ways on the same data and the same initial parameters:

1. ``lminima.train.driver.train_population`` with ``width_strategy`` "auto", and
   separately "per_width" and "masked";
2. the loop a JAX user writes: per configuration, ``jit`` of a ``lax.scan``
   over all steps (compiled once per architecture, reused for every seed);
3. a sequential JAX loop: per (depth, width) one jitted step
   (value_and_grad + SGD update) of the flax MLP, a Python loop over steps,
   one seed at a time, parameters from ``model.init_params`` (eager);
4. an idiomatic PyTorch loop (nn.Sequential, torch.optim.SGD), float32 on the
   CPU with ``torch.set_num_threads(cores)``, one configuration at a time,
   starting from lminima's initial parameters (copied in).

End to end = cold run with JAX's caches cleared (compile included); steady
state = the same run again at once. Useful GFLOP/s counts the FLOPs of the
unpadded networks (``population.training_flops``: 2 per multiply-add,
forward + backward = 3x forward) and is set against the best dense float32
matmul (JAX and torch, n x n for n in 512..2048) measured in the same run. Final
losses are compared with lminima's (accuracy first).

With ``--fresh``, lminima auto and the scan loop are also timed end to end
in fresh processes: first with an empty persistent compilation cache, then
with the cache that run wrote (``lminima.train.cache``).

Usage:
  python benchmarks/bench_train.py            # full grid, 5 repetitions
  python benchmarks/bench_train.py --quick    # smoke test
The markdown table goes to benchmarks/results/train.md (``--out``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
try:
  import torch
except ImportError:  # the PyTorch peer (and its matmul) are then skipped
  torch = None

from lminima import data
import lminima
from lminima.core import losses
from lminima.core import models
from lminima.core import provenance
from lminima.train import cache
from lminima.train import calibration
from lminima.train import driver
from lminima.train import planner
from lminima.train import population
from lminima.train.population import Member, TrainConfig, member_model

LEARNING_RATE = 0.05
D_X, D_Y = 10, 2
METHODS = ("auto", "per_width", "masked", "scan", "sequential", "torch")


def parse_args() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true",
                      help="small grid and 2 repetitions (smoke test)")
  parser.add_argument("--depths", type=str, default="1,2,3")
  parser.add_argument("--widths", type=str, default="4,8,16,32,64")
  parser.add_argument("--seeds", type=int, default=8)
  parser.add_argument("--steps", type=int, default=500)
  parser.add_argument("--m", type=int, default=1000)
  parser.add_argument("--reps", type=int, default=5)
  parser.add_argument("--methods", type=str, default=",".join(METHODS),
                      help="comma-separated subset of " + ",".join(METHODS)
                      + " (auto is always run: it is the reference)")
  parser.add_argument("--fresh", action="store_true",
                      help="also time auto and the scan loop in fresh "
                      "processes: first with an empty persistent compilation "
                      "cache, then with the cache that run wrote")
  parser.add_argument("--child", type=str, default="", help=argparse.SUPPRESS)
  parser.add_argument("--cache_dir", type=str, default="",
                      help=argparse.SUPPRESS)
  parser.add_argument("--out", type=str, default=os.path.join(
      os.path.dirname(os.path.abspath(__file__)), "results", "train.md"))
  args = parser.parse_args()
  if args.quick:
    args.depths, args.widths, args.seeds = "1,2", "4,16", 2
    args.steps, args.m, args.reps = 100, 200, 2
  args.depths = [int(d) for d in args.depths.split(",")]
  args.widths = [int(w) for w in args.widths.split(",")]
  args.methods = args.methods.split(",")
  unknown = set(args.methods) - set(METHODS)
  if unknown:
    parser.error(f"unknown methods {sorted(unknown)}; choose from {METHODS}")
  return args


# Compiled baselines, per model, kept for the whole process like a user's.
_SCAN_RUNS: dict = {}
_SEQUENTIAL_STEPS: dict = {}


def make_population(args, config):
  return [Member(depth, width, seed) for depth in args.depths
          for width in args.widths for seed in range(args.seeds)]


def initial_params(members, config):
  """Each member's lminima initialization (numpy float32) for PyTorch."""
  return [jax.tree_util.tree_map(np.asarray, member_model(
      D_X, D_Y, m, config).init_params(jax.random.PRNGKey(m.seed),
                                       jnp.float32))
          for m in members]


def run_lminima(ds, members, config, strategy):
  results = driver.train_population(ds, members, config,
                                   width_strategy=strategy)
  return np.array([r.loss for r in results])


def run_sequential_jax(ds, members, config):
  """What a user would otherwise write: one jitted step per architecture."""
  x = jnp.asarray(ds.x, jnp.float32)
  y = jnp.asarray(ds.y, jnp.float32)
  steps_by_model = _SEQUENTIAL_STEPS  # kept across calls
  final = []
  for member in members:
    model = member_model(D_X, D_Y, member, config)
    if model not in steps_by_model:
      def loss_fn(params, x, y, model=model):
        return losses.squared_loss(model.apply(params, x), y, "mean")

      @jax.jit
      def step(params, x, y, loss_fn=loss_fn):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        return jax.tree_util.tree_map(lambda p, g: p - LEARNING_RATE * g,
                                      params, grads), loss
      steps_by_model[model] = (step, jax.jit(loss_fn))
    step, loss_fn = steps_by_model[model]
    params = model.init_params(jax.random.PRNGKey(member.seed), jnp.float32)
    for _ in range(config.steps):
      params, _ = step(params, x, y)
    final.append(float(loss_fn(params, x, y)))
  return np.array(final)


def run_scan_jax(ds, members, config):
  """The loop a JAX user writes: jit of a lax.scan over all steps, one
  configuration at a time (compiled once per architecture, reused per seed)."""
  x = jnp.asarray(ds.x, jnp.float32)
  y = jnp.asarray(ds.y, jnp.float32)
  runs = _SCAN_RUNS  # kept across calls, as a user's process keeps them
  final = []
  for member in members:
    model = member_model(D_X, D_Y, member, config)
    if model not in runs:
      def loss_fn(params, x, y, model=model):
        return losses.squared_loss(model.apply(params, x), y, "mean")

      @jax.jit
      def run(params, x, y, loss_fn=loss_fn):
        def step(params, _):
          grads = jax.grad(loss_fn)(params, x, y)
          return jax.tree_util.tree_map(lambda p, g: p - LEARNING_RATE * g,
                                        params, grads), None
        params, _ = jax.lax.scan(step, params, None, length=config.steps)
        return loss_fn(params, x, y)
      runs[model] = run
    params = model.init_params(jax.random.PRNGKey(member.seed), jnp.float32)
    final.append(runs[model](params, x, y))
  return np.array([float(v) for v in final])


def run_torch(ds, members, config, inits):
  """Idiomatic PyTorch, float32 on the CPU, one configuration at a time."""
  x = torch.tensor(ds.x, dtype=torch.float32)
  y = torch.tensor(ds.y, dtype=torch.float32)
  c = losses.loss_scale("mean", ds.m)
  final = []
  for member, init in zip(members, inits):
    layers = []
    n_layers = member.depth + 1
    for l in range(1, n_layers + 1):
      layer = init["params"][models.layer_name(l)]
      linear = torch.nn.Linear(*layer["kernel"].shape)
      with torch.no_grad():
        linear.weight.copy_(torch.tensor(layer["kernel"].T))
        linear.bias.copy_(torch.tensor(layer["bias"]))
      layers.append(linear)
      if l < n_layers:
        layers.append(torch.nn.Tanh())
    net = torch.nn.Sequential(*layers)
    optimizer = torch.optim.SGD(net.parameters(), lr=LEARNING_RATE)
    for _ in range(config.steps):
      optimizer.zero_grad()
      loss = c * torch.sum((net(x) - y) ** 2)
      loss.backward()
      optimizer.step()
    with torch.no_grad():
      final.append(float(c * torch.sum((net(x) - y) ** 2)))
  return np.array(final)


def matmul_peak_gflops(reps: int = 5, dtype=jnp.float32) -> float:
  """Best dense n x n matmul GFLOP/s in ``dtype`` of JAX and torch (if
  any)."""
  best = 0.0
  for n in (512, 1024, 2048):
    a = jnp.ones((n, n), dtype)
    f = jax.jit(lambda a: a @ a)
    f(a).block_until_ready()
    if torch is not None:
      ta = torch.from_numpy(np.ones((n, n), np.dtype(dtype)))
      torch.mm(ta, ta)
    for _ in range(reps):
      start = time.perf_counter()
      f(a).block_until_ready()
      best = max(best, 2 * n ** 3 / (time.perf_counter() - start) / 1e9)
      if torch is not None:
        start = time.perf_counter()
        torch.mm(ta, ta)
        best = max(best, 2 * n ** 3 / (time.perf_counter() - start) / 1e9)
  return best


def timed(fn):
  start = time.perf_counter()
  out = fn()
  return time.perf_counter() - start, out


def machine_info() -> dict[str, str]:
  machine = provenance.machine_info()
  return {
      "cpu": machine["cpu"], "cores": machine["cores"],
      "backend": jax.default_backend(),
      "versions": (f"python {platform.python_version()}, jax {jax.__version__}"
                   f", optax {optax.__version__}, torch "
                   f"{torch.__version__ if torch else 'not installed'}, "
                   f"numpy {np.__version__}, lminima {lminima.__version__}"),
      "date": datetime.datetime.now().isoformat(timespec="seconds"),
      "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
  }


def median_range(values) -> str:
  return (f"{np.median(values):.2f} [{np.min(values):.2f}-"
          f"{np.max(values):.2f}]")


def fresh_process_seconds(method: str, cache_dir: str) -> float:
  """Seconds of one training call of ``method`` in a new Python process
  whose persistent compilation cache is ``cache_dir`` (imports and data
  excluded, compilation included)."""
  argv = [a for a in sys.argv[1:] if a != "--fresh"]
  out = subprocess.run(
      [sys.executable, os.path.abspath(__file__), *argv, "--child", method,
       "--cache_dir", cache_dir], check=True, capture_output=True,
      text=True).stdout
  return float(json.loads(out.strip().splitlines()[-1])["seconds"])


def main():
  args = parse_args()
  config = TrainConfig(activation="tanh", optimizer="sgd",
                       learning_rate=LEARNING_RATE, steps=args.steps,
                       chunk_steps=250)
  ds = data.synthetic(m=args.m, d_x=D_X, d_y=D_Y, seed=0)
  members = make_population(args, config)
  if args.child:  # one timed call in this fresh process (--fresh)
    cache.enable_compilation_cache(args.cache_dir)
    run = {"auto": lambda: run_lminima(ds, members, config, "auto"),
           "scan": lambda: run_scan_jax(ds, members, config)}[args.child]
    if args.child == "auto":
      calibration.backend_cost_model()  # measured once per machine, not per run
    seconds, _ = timed(run)
    print(json.dumps({"seconds": seconds}))
    return
  if torch is None and "torch" in args.methods:
    print("torch is not installed: skipping the PyTorch loop", flush=True)
    args.methods.remove("torch")
  if torch is not None:
    torch.set_num_threads(os.cpu_count())
  inits = initial_params(members, config)
  useful_gflop = sum(population.training_flops(
      member_model(D_X, D_Y, m, config), args.m, args.steps)
                     for m in members) / 1e9

  def jax_pair(fn):
    """(cold, warm) seconds and the cold run's final losses."""
    jax.clear_caches()
    cold, out = timed(fn)
    warm, _ = timed(fn)
    return cold, warm, out

  all_methods = {
      "auto": ("lminima auto",
               lambda: run_lminima(ds, members, config, "auto")),
      "per_width": ("lminima per_width",
                    lambda: run_lminima(ds, members, config, "per_width")),
      "masked": ("lminima masked",
                 lambda: run_lminima(ds, members, config, "masked")),
      "scan": ("jit(lax.scan) per configuration",
               lambda: run_scan_jax(ds, members, config)),
      "sequential": ("sequential JAX",
                     lambda: run_sequential_jax(ds, members, config)),
      "torch": ("PyTorch loop", lambda: run_torch(ds, members, config, inits)),
  }
  methods = dict(all_methods[key] for key in METHODS
                 if key == "auto" or key in args.methods)
  is_jax = {name: name != "PyTorch loop" for name in methods}
  for name, fn in methods.items():  # warm-up: imports, thread pools
    fn()
  peak = matmul_peak_gflops()
  cold = {name: [] for name in methods}
  warm = {name: [] for name in methods}
  final = {}
  for _ in range(args.reps):  # alternate A B C ... A B C
    for name, fn in methods.items():
      if is_jax[name]:
        c, w, final[name] = jax_pair(fn)
      else:
        c, final[name] = timed(fn)
        w = c  # nothing is compiled: every run is steady state
      cold[name].append(c)
      warm[name].append(w)
    print(" ".join(f"{n}: {cold[n][-1]:.2f}/{warm[n][-1]:.2f}s"
                   for n in methods), flush=True)
  ours = "lminima auto"
  plan = planner.plan_groups(members, D_X, D_Y, config,
                             width_strategy="auto", batch=args.m,
                             cost_model=calibration.backend_cost_model())
  info = machine_info()
  lines = [
      "# Population training benchmark (bench_train.py)", "",
      f"Grid: depths {args.depths} x widths {args.widths} x {args.seeds} "
      f"seeds = {len(members)} tanh MLPs, {args.steps} full-batch GD steps "
      f"(lr {LEARNING_RATE}), synthetic m={args.m}, d_x={D_X}, d_y={D_Y}, "
      f"float32. Useful work {useful_gflop:.1f} GFLOP (unpadded networks).",
      f"Dense float32 matmul peak measured in this run: {peak:.1f} GFLOP/s.",
      f"'auto' plan: {len(plan)} programs, padded widths by depth: " +
      ", ".join(f"d{g.padded_model.depth}:w{max(g.padded_model.widths or (0,))}"
                f"x{len(g.member_indices)}" for g in plan) + ".",
      "",
      f"Median [min-max] of {args.reps} alternating repetitions; end to end "
      "= cold (JAX caches cleared, compile included), steady = same run "
      "again. Speedup = peer time / lminima auto time, median of the "
      "per-repetition ratios.", "",
      "| method | end to end s | steady s | useful GFLOP/s (steady) | "
      "% of matmul peak | speedup of auto, e2e | speedup of auto, steady | "
      "max rel. diff of final loss vs auto |",
      "| --- | --- | --- | --- | --- | --- | --- | --- |",
  ]
  for name in methods:
    gflops = useful_gflop / np.median(warm[name])
    e2e_ratio = np.median(np.array(cold[name]) / np.array(cold[ours]))
    warm_ratio = np.median(np.array(warm[name]) / np.array(warm[ours]))
    rel = np.max(np.abs(final[name] - final[ours]) / np.abs(final[ours]))
    lines.append(
        f"| {name} | {median_range(cold[name])} | {median_range(warm[name])} "
        f"| {gflops:.1f} | {100 * gflops / peak:.1f} | {e2e_ratio:.2f}x | "
        f"{warm_ratio:.2f}x | {rel:.1e} |")
  if args.fresh:
    fresh = {name: ([], []) for name in ("auto", "scan")}
    for _ in range(args.reps):
      for name, (cold_s, warm_s) in fresh.items():
        with tempfile.TemporaryDirectory() as directory:
          cold_s.append(fresh_process_seconds(name, directory))
          warm_s.append(fresh_process_seconds(name, directory))
    label = {"auto": ours, "scan": "jit(lax.scan) per configuration"}
    lines += [
        "", "Fresh processes, one training call each (imports and data "
        "excluded; the planner's cost model was measured before, once per "
        "machine): cold = empty persistent compilation cache, warm cache = "
        "a new process reading the cache the cold one wrote. Median [min-max] "
        f"of {args.reps}; speedup = scan loop time / auto time, median of the "
        "per-repetition ratios.", "",
        "| method | cold s | warm cache s | speedup of auto, cold | speedup "
        "of auto, warm cache |", "| --- | --- | --- | --- | --- |"]
    for name, (cold_s, warm_s) in fresh.items():
      lines.append(
          f"| {label[name]} | {median_range(cold_s)} | {median_range(warm_s)}"
          f" | {np.median(np.array(cold_s) / fresh['auto'][0]):.2f}x | "
          f"{np.median(np.array(warm_s) / fresh['auto'][1]):.2f}x |")
  lines += ["", "Machine and software:", ""]
  lines += [f"- {key}: {value}" for key, value in info.items()]
  table = "\n".join(lines) + "\n"
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    f.write(table)
  print(table)


if __name__ == "__main__":
  main()
