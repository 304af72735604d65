r"""Rechecks a workdir's certified minima with code independent of lminima.

Usage:
  python scripts/check_minima.py --workdir=runs/synthetic [--iters=300] \
      [--within=1e-3]

Every member whose outcome is ``local_min`` or ``kink_min`` (a nonsmooth minimum
on relu kinks) is reloaded (lminima is used only
to read its row, its saved parameters and its data) and its loss is written
again here, in jax.numpy, from the MLP's definition: ``c ||f(theta; X) -
Y||_F^2`` with ``f`` the tanh / relu / leaky_relu / identity network with
optional biases and linear skip. From the saved point and from two points at
relative distance 1e-3 in random directions (drawn with a seed of its own,
so not the certificate's probe directions), SciPy's L-BFGS-B (gradient and
loss tolerances 0) runs for ``--iters`` iterations; the largest relative
decrease ``(L - L_lowest) / L`` is compared with the descent tolerance the
row was certified with. A certified minimum lowered by more than that is
reported, with the distance of the lowest point from it; the script exits
with status 1 if any is. L-BFGS-B's first step has unit length whatever the
gradient: at a kink minimum, where the gradient of one side is far from 0,
it can cross the surrounding rise into another basin. ``--within=r`` keeps
every iterate in the box of half-width ``r max(1, ||theta||)`` around the
point: the neighbourhood a certificate claims (its probe radius is
``probe_radius_rtol = 1e-3`` of that). A zero-loss minimum
(``L <= zero_loss_rtol * L_ref``, residuals at rounding) is at the global
minimum value 0 up to rounding: what L-BFGS-B finds below it is rounding,
reported but not counted.

The loss is written here on purpose rather than taken from
``lminima.Problem``: the check must not share the code it checks.
"""

from __future__ import annotations

import os
import sys

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize

from lminima import data as data_lib  # also turns on float64 (jax_enable_x64)
from lminima.study import cli
from lminima.study import records

_WORKDIR = flags.DEFINE_string("workdir", None, "the sweep's work directory",
                               required=True)
_ITERS = flags.DEFINE_integer("iters", 300, "L-BFGS-B iterations per start")
_WITHIN = flags.DEFINE_float(
    "within", 0.0, "if > 0, L-BFGS-B stays in the box of half-width "
    "within * max(1, ||theta||) around the point (0: anywhere)")

_ACTIVATIONS = {"tanh": jnp.tanh, "relu": lambda z: jnp.maximum(z, 0.0),
                "leaky_relu": lambda z: jnp.where(z >= 0, z, 0.01 * z),
                "identity": lambda z: z}


def independent_loss(arrays: dict[str, np.ndarray], row: dict, x: np.ndarray,
                     y: np.ndarray):
  """(loss of a flat vector, the saved point as a flat vector)."""
  names = sorted(arrays)
  shapes = [arrays[k].shape for k in names]
  sizes = [int(np.prod(s)) for s in shapes]
  layers = sorted({int(k.split("/")[0].split("_")[1]) for k in names
                   if k.startswith("layer_")})
  sigma = _ACTIVATIONS[row["activation"]]
  c = 0.5 / x.shape[0] if row["normalization"] == "mean" else 0.5
  x, y = jnp.asarray(x, jnp.float64), jnp.asarray(y, jnp.float64)

  def loss(flat):
    parts = jnp.split(flat, np.cumsum(sizes)[:-1])
    p = {k: v.reshape(s) for k, v, s in zip(names, parts, shapes)}
    h = x
    for layer in layers:
      z = h @ p[f"layer_{layer}/kernel"]
      if f"layer_{layer}/bias" in p:
        z = z + p[f"layer_{layer}/bias"]
      h = z if layer == layers[-1] else sigma(z)
    if "skip/kernel" in p:
      h = h + x @ p["skip/kernel"]
    return c * jnp.sum((h - y) ** 2)
  flat = np.concatenate([np.ravel(arrays[k]) for k in names])
  return loss, flat


def lowest_reached(loss, flat: np.ndarray, iters: int, seed: int = 2026,
                   within: float = 0.0) -> tuple[float, float]:
  """The lowest L that L-BFGS-B reaches from ``flat`` and two perturbed
  starts (in the box of half-width ``within max(1, ||flat||)`` around it
  where ``within > 0``), and that point's distance from ``flat``."""
  value_and_grad = jax.jit(jax.value_and_grad(loss))

  def fun(v):
    value, grad = value_and_grad(jnp.asarray(v))
    return float(value), np.asarray(grad, np.float64)
  rng = np.random.default_rng(seed)
  radius = 1e-3 * max(1.0, float(np.linalg.norm(flat)))
  starts = [flat] + [flat + radius * d / np.linalg.norm(d)
                     for d in rng.standard_normal((2, flat.size))]
  half_width = within * max(1.0, float(np.linalg.norm(flat)))
  bounds = (scipy.optimize.Bounds(flat - half_width, flat + half_width)
            if within > 0 else None)
  lowest, distance = float(loss(jnp.asarray(flat))), 0.0
  for start in starts:
    result = scipy.optimize.minimize(
        fun, start, jac=True, method="L-BFGS-B", bounds=bounds,
        options={"maxiter": iters, "gtol": 0.0, "ftol": 0.0})
    if result.fun < lowest:
      lowest = float(result.fun)
      distance = float(np.linalg.norm(result.x - flat))
  return lowest, distance


def check(workdir: str, iters: int = 300, within: float = 0.0, log=print
          ) -> list[dict]:
  """One dict per certified minimum: member, L, lowest L found, relative
  decrease, the row's descent tolerance and whether it was lowered."""
  rows = [r for r in records.read_workdir_rows(workdir)
          if r.get("outcome") in ("local_min", "kink_min")
          and not r.get("error")]
  data_cache: dict[str, data_lib.Dataset] = {}
  found = []
  for row in rows:
    key = repr(sorted(row["dataset"].items()))
    if key not in data_cache:
      data_cache[key] = data_lib.load(**row["dataset"])
    data = data_cache[key]
    with np.load(os.path.join(workdir, row["params_file"])) as saved:
      arrays = {k: np.asarray(saved[k], np.float64) for k in saved.keys()}
    loss, flat = independent_loss(arrays, row, data.x, data.y)
    value = float(loss(jnp.asarray(flat)))
    lowest, distance = lowest_reached(loss, flat, iters, within=within)
    floor = (row.get("tolerances") or {}).get("zero_loss_rtol", 0.0) * (
        row.get("loss_reference") or 0.0)
    decrease = (value - lowest) / max(value, floor, np.finfo(float).tiny)
    tol = (row.get("tolerances") or {}).get("descent_rtol", 1e-9)
    # At L <= the zero floor the point is at the global minimum value 0 up
    # to rounding: nothing is lower by more than the floor.
    zero = value <= floor
    entry = {"member": records.member_key(row), "loss": value,
             "lowest": lowest, "distance": distance, "decrease": decrease,
             "tolerance": tol,
             "zero_loss": zero, "lowered": bool(decrease > tol and not zero)}
    found.append(entry)
    note = (f" LOWERED (at distance {distance:.2g})" if entry["lowered"] else
            f" (zero loss: L <= {floor:.1e}, the rounding floor)" if zero
            else "")
    log(f"depth {entry['member'][0]} width {entry['member'][1]} seed "
        f"{entry['member'][2]} ({row['outcome']}): L {value:.6g}, lowest {lowest:.6g}, relative "
        f"decrease {decrease:.1e}{note}")
  return found


def main(argv):
  del argv
  found = check(_WORKDIR.value, _ITERS.value, _WITHIN.value)
  lowered = sum(e["lowered"] for e in found)
  zero = sum(e["zero_loss"] for e in found)
  where = (f" (within {_WITHIN.value:g} max(1, ||theta||) of each)"
           if _WITHIN.value > 0 else "")
  print(f"{len(found)} certified minima rechecked{where} ({zero} with zero "
        f"loss); {lowered} lowered by more than their descent tolerance")
  if lowered:
    sys.exit(1)


if __name__ == "__main__":
  cli.run_script(main, interrupted="nothing was written; rerun it")
