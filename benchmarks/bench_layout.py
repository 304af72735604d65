"""Time per member and step of MLP training in the two layouts of its layers.

``MLP.apply`` computes each layer on row-major (samples x units) activations,
as ``flax.linen.Dense`` does; ``MLP.apply_features_major``, which the training
programs use, on transposed (units x samples) ones. Both are timed the same
way: ``jit`` of a ``lax.scan`` of full-batch GD steps on ``vmap`` over members
of ``value_and_grad`` of the squared loss (float32, tanh, random data). Times
are the best of ``--reps`` runs after a warm-up, in microseconds per member
and step; ``--cores 1`` pins the process to one core (the engine runs one
program per core).

Usage:
  python benchmarks/bench_layout.py                      # the default shapes
  python benchmarks/bench_layout.py --shapes 1000,10,3 --widths 4,64
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import timeit

import jax
import jax.numpy as jnp
import numpy as np

from lminima.core import losses
from lminima.core import provenance
from lminima.core.models import MLP


def member_step_us(model: MLP, apply, m: int, members: int, steps: int,
                   reps: int) -> float:
  """Best time of ``steps`` GD steps of ``members`` members, per member-step."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((m, model.d_in)), jnp.float32)
  y = jnp.asarray(rng.standard_normal((m, model.d_out)), jnp.float32)
  params = jax.vmap(model.init_params)(
      jax.random.split(jax.random.PRNGKey(0), members))
  loss = lambda p: losses.squared_loss(apply(p, x), y, "mean")

  @jax.jit
  def run(params):
    def step(params, _):
      value, grads = jax.vmap(jax.value_and_grad(loss))(params)
      return jax.tree_util.tree_map(lambda p, g: p - 0.05 * g, params,
                                    grads), value
    return jax.lax.scan(step, params, None, length=steps)

  jax.block_until_ready(run(params))
  best = min(timeit.repeat(lambda: jax.block_until_ready(run(params)),
                           number=1, repeat=reps))
  return 1e6 * best / (steps * members)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--shapes", default="1000,10,3;1000,10,1;100,5,2;"
                      "500,784,1", help="m,d_x,depth;... (d_y = 2)")
  parser.add_argument("--widths", default="4,8,16,32,64,128")
  parser.add_argument("--members", type=int, default=8)
  parser.add_argument("--steps", type=int, default=200)
  parser.add_argument("--reps", type=int, default=3)
  parser.add_argument("--cores", type=int, default=1,
                      help="cores to pin the process to (0: all)")
  args = parser.parse_args()
  if args.cores:
    os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:args.cores]))
  widths = [int(w) for w in args.widths.split(",")]
  lines = [
      f"Microseconds per member and GD step ({args.members} members, "
      f"{args.steps} steps, best of {args.reps}, tanh, float32, d_y = 2, "
      f"{len(os.sched_getaffinity(0))} core(s)); ratio = row-major / "
      "features-major.", "",
      "| m, d_x, depth | layout | " + " | ".join(f"width {w}" for w in widths)
      + " |", "|---|---|" + "---|" * len(widths)]
  for shape in args.shapes.split(";"):
    m, d_x, depth = (int(v) for v in shape.split(","))
    times = {}
    for name in ("row-major", "features-major"):
      times[name] = []
      for width in widths:
        model = MLP(d_in=d_x, widths=(width,) * depth, d_out=2,
                    activation="tanh")
        apply = (model.apply if name == "row-major"
                 else model.apply_features_major)
        times[name].append(member_step_us(model, apply, m, args.members,
                                          args.steps, args.reps))
      lines.append(f"| {m}, {d_x}, {depth} | {name} | " + " | ".join(
          f"{t:.1f}" for t in times[name]) + " |")
      print(lines[-1], flush=True)
    lines.append(f"| {m}, {d_x}, {depth} | ratio | " + " | ".join(
        f"{a / b:.2f}x" for a, b in zip(times["row-major"],
                                        times["features-major"])) + " |")
  machine = provenance.machine_info()
  lines += ["", f"- cpu: {machine['cpu']}, {machine['cores']} cores",
            f"- jax {jax.__version__}, date "
            f"{datetime.datetime.now().isoformat(timespec='seconds')}",
            "- command: python " + " ".join(sys.argv)]
  print("\n".join(lines))


if __name__ == "__main__":
  main()
