"""Hessian spectrum benchmark: lminima vs matfree, PyHessian, hessian-eigenthings.

One tanh MLP (d_in=10, two hidden layers, d_out=1, m=500 samples, mean squared
loss) per size, with identical float64 weights and data in JAX and PyTorch.
For each tool we measure the time to reach lambda_max AND lambda_min of the
Hessian at a relative error <= 1e-6 (``--target``), after picking each tool's
cheapest setting that reaches it (iteration count or tolerance, calibrated
against the truth; every tool gets the same calibration). Truth is dense
``eigvalsh`` where the Hessian fits (P <= 2e4) and a long, tightly converged
lminima Lanczos run otherwise (marked in the table).

Also: lminima at its default tolerance (no calibration, what a certificate
uses), the dense route (``jax.hessian`` + ``eigvalsh``) at P ~ 5e3, Hutchinson
traces, and spectral densities (SLQ).

Protocol (BENCHMARKING.md): one process, tools alternated A B A B, one
warm-up (compile) call timed separately, ``--reps`` timed repetitions,
median and min-max reported.

Usage:
  python benchmarks/bench_hessian.py            # full run (sizes 1e3..1e5)
  python benchmarks/bench_hessian.py --quick    # smoke run (1e3 and 5e3)
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import os
import platform
import sys
import time
import traceback

import numpy as np

import jax
import jax.numpy as jnp

import lminima  # noqa: F401  (float64)
from lminima.core import hessian
from lminima.core import provenance
from lminima.core.losses import squared_loss
from lminima.core.models import MLP
from lminima.data import synthetic
from lminima.linalg import lanczos
from lminima.linalg import slq

import torch

import hessian_eigenthings as he
from matfree import decomp
from pyhessian import hessian as pyhessian_hessian

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
D_IN, D_OUT, M = 10, 1, 500
# Hidden widths giving P ~ 1e3, 5e3, 1e4, 1e5 parameters.
SIZES = {"1e3": (28, 28), "5e3": (64, 64), "1e4": (96, 96), "1e5": (310, 310)}
DENSE_TRUTH_MAX_P = 20_000
DENSITY_MAX_P = 6_000
LANCZOS_STEPS = (20, 30, 40, 50, 60, 80, 100, 130, 160, 200, 260, 330, 420,
                 540, 700)
LMINIMA_TOLS = (1e-3, 3e-4, 1e-4, 3e-5, 1e-5, 3e-6, 1e-6, 1e-7, 1e-8)
PYHESSIAN_TOLS = (1e-6, 1e-7, 1e-8, 1e-9, 1e-10, 1e-11, 1e-12)


# ---------------------------------------------------------------------------
# Case in both frameworks.


class Case:
  """One MLP size: JAX loss/params, the same network in torch, the truth."""

  def __init__(self, label: str, widths: tuple[int, int], seed: int = 0):
    self.label = label
    self.model = MLP(D_IN, widths, D_OUT, "tanh")
    data = synthetic(m=M, d_x=D_IN, d_y=D_OUT, seed=seed)
    self.x = jnp.asarray(data.x)
    self.y = jnp.asarray(data.y)
    self.params = self.model.init_params(jax.random.PRNGKey(seed), jnp.float64)
    x, y, model = self.x, self.y, self.model
    self.loss_fn = lambda p: squared_loss(model.apply(p, x), y, "mean")
    self.dim = self.model.n_params
    self.torch_model = self._torch_model()
    self.torch_data = (torch.from_numpy(np.array(x)),
                       torch.from_numpy(np.array(y)))
    self._check_same_network()

  @staticmethod
  def criterion(out, target):
    # c = 1/(2m), the "mean" normalization of lminima.core.losses.
    return 0.5 * torch.sum((out - target) ** 2) / out.shape[0]

  def _torch_model(self) -> torch.nn.Module:
    layers = []
    n_layers = self.model.depth + 1
    for l in range(1, n_layers + 1):
      layer = self.params["params"][f"layer_{l}"]
      w = np.asarray(layer["kernel"])
      linear = torch.nn.Linear(w.shape[0], w.shape[1], dtype=torch.float64)
      with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(w.T.copy()))
        linear.bias.copy_(torch.from_numpy(np.array(layer["bias"])))
      layers.append(linear)
      if l < n_layers:
        layers.append(torch.nn.Tanh())
    return torch.nn.Sequential(*layers)

  def _check_same_network(self):
    loss_jax = float(self.loss_fn(self.params))
    with torch.no_grad():
      loss_torch = float(self.criterion(self.torch_model(self.torch_data[0]),
                                        self.torch_data[1]))
    if not np.isclose(loss_jax, loss_torch, rtol=1e-12):
      raise RuntimeError(f"JAX loss {loss_jax} != torch loss {loss_torch}")
    matvec, _ = hessian.hvp_operator(self.loss_fn, self.params)
    v = np.random.default_rng(0).standard_normal(self.dim)
    hv_jax = np.asarray(matvec(jnp.asarray(v)))
    hv_torch = self.torch_hvp_flat()(torch.from_numpy(v)).numpy()
    if not np.allclose(hv_jax, hv_torch, rtol=1e-9, atol=1e-12):
      raise RuntimeError("JAX and torch Hessian-vector products differ")

  def torch_param_order(self) -> list[torch.Tensor]:
    """Torch params in lminima's flat order (per layer: bias, then kernel =
    weight^T; the layer names layer_1..layer_3 sort in layer order)."""
    linears = [m for m in self.torch_model if isinstance(m, torch.nn.Linear)]
    return [t for lin in linears for t in (lin.bias, lin.weight)]

  def torch_hvp_flat(self):
    params = self.torch_param_order()
    loss = self.criterion(self.torch_model(self.torch_data[0]),
                          self.torch_data[1])
    grads = torch.autograd.grad(loss, params, create_graph=True)

    def hvp(v):
      parts, start = [], 0
      for p in params:
        size = p.numel()
        chunk = v[start:start + size]
        parts.append(chunk.reshape(p.shape[::-1]).T if p.ndim == 2
                     else chunk)
        start += size
      products = torch.autograd.grad(grads, params, grad_outputs=parts,
                                     retain_graph=True)
      return torch.cat([h.T.reshape(-1) if h.ndim == 2 else h
                        for h in products])
    return hvp

  def truth(self) -> dict:
    start = time.perf_counter()
    if self.dim <= DENSE_TRUTH_MAX_P:
      dense = np.asarray(hessian.dense_hessian(self.loss_fn, self.params))
      eigenvalues = np.linalg.eigvalsh(dense)
      return {"lambda_min": eigenvalues[0], "lambda_max": eigenvalues[-1],
              "trace": float(np.trace(dense)),
              "trace_sq": float(np.sum(eigenvalues ** 2)),
              "source": "dense eigvalsh",
              "seconds": time.perf_counter() - start}
    matvec, dim = hessian.hvp_operator(self.loss_fn, self.params)
    eigs = lanczos.lanczos_extreme_eigs(matvec, dim, key=jax.random.PRNGKey(99),
                                        max_iters=900, tol=1e-13)
    return {"lambda_min": eigs.lambda_min, "lambda_max": eigs.lambda_max,
            "trace": None, "trace_sq": None,
            "source": (f"Lanczos {eigs.num_matvecs - 2} steps, residuals "
                       f"{eigs.residual_min:.1e}/{eigs.residual_max:.1e}"),
            "seconds": time.perf_counter() - start}


# ---------------------------------------------------------------------------
# Extreme eigenvalues: one callable per tool and setting.


def lminima_extremes(problem: Case, tol: float):
  def run():
    matvec, dim = hessian.hvp_operator(problem.loss_fn, problem.params)
    eigs = lanczos.lanczos_extreme_eigs(matvec, dim, key=jax.random.PRNGKey(0),
                                        max_iters=900, tol=tol)
    return eigs.lambda_min, eigs.lambda_max, eigs.num_matvecs
  return run


_matfree_cache: dict = {}


def matfree_extremes(problem: Case, steps: int):
  if steps not in _matfree_cache:
    tridiag = decomp.tridiag_sym(steps, reortho="full")
    _matfree_cache[steps] = jax.jit(
        lambda op, v0: jnp.linalg.eigvalsh(tridiag(op, v0).J_small))

  def run():
    matvec, dim = hessian.hvp_operator(problem.loss_fn, problem.params)
    v0 = jax.random.normal(jax.random.PRNGKey(0), (dim,), jnp.float64)
    ritz = np.asarray(_matfree_cache[steps](matvec, v0))
    return ritz[0], ritz[-1], steps
  return run


def eigenthings_extremes(problem: Case, steps: int):
  def run():
    operator = he.HessianOperator(
        problem.torch_model, [problem.torch_data],
        he.supervised_loss(problem.criterion))
    generator = torch.Generator().manual_seed(0)
    v0 = torch.randn(operator.size, dtype=torch.float64, generator=generator)
    td = he.lanczos_tridiagonal(operator, v0, steps, reorthogonalize=True)
    tridiagonal = (torch.diag(td.alphas) + torch.diag(td.betas, 1)
                   + torch.diag(td.betas, -1))
    ritz = torch.linalg.eigvalsh(tridiagonal).numpy()
    return ritz[0], ritz[-1], td.iterations
  return run


def pyhessian_top(problem: Case, tol: float):
  def run():
    torch.manual_seed(0)
    h = pyhessian_hessian(problem.torch_model, problem.criterion,
                          data=problem.torch_data, cuda=False)
    top, _ = h.eigenvalues(maxIter=5000, tol=tol, top_n=1)
    return None, top[0], None
  return run


def dense_route(problem: Case):
  flat, unravel = hessian.flatten_params(problem.params)
  flat_loss = lambda t: problem.loss_fn(unravel(t))
  dense_fn = jax.jit(jax.hessian(flat_loss))

  def run():
    eigenvalues = np.linalg.eigvalsh(np.asarray(dense_fn(flat)))
    return eigenvalues[0], eigenvalues[-1], problem.dim
  return run


def relative_errors(result, truth):
  lam_min, lam_max, _ = result
  err_max = abs(lam_max - truth["lambda_max"]) / abs(truth["lambda_max"])
  err_min = (abs(lam_min - truth["lambda_min"]) / abs(truth["lambda_min"])
             if lam_min is not None else None)
  return err_min, err_max


def worst(errors):
  return max(e for e in errors if e is not None)


def calibrate(make, settings, problem, truth, target):
  """Cheapest setting whose answer meets ``target``; else the last one."""
  for setting in settings:
    run = make(problem, setting)
    errors = relative_errors(run(), truth)
    if worst(errors) <= target:
      return setting, run, errors
  return setting, run, errors


# ---------------------------------------------------------------------------
# Timing.


def time_alternating(runs: dict, reps: int) -> dict:
  """Warm-up (timed as first call) then ``reps`` rounds of A B A B."""
  timings = {name: {"first": None, "steady": []} for name in runs}
  for name, run in runs.items():
    start = time.perf_counter()
    run()
    timings[name]["first"] = time.perf_counter() - start
  names = list(runs)
  for rep in range(reps):
    order = names if rep % 2 == 0 else names[::-1]
    for name in order:
      start = time.perf_counter()
      jax.block_until_ready(runs[name]())
      timings[name]["steady"].append(time.perf_counter() - start)
  return timings


def fmt_time(seconds):
  s = np.asarray(seconds)
  return f"{np.median(s):.3g} s ({s.min():.3g}-{s.max():.3g})"


def fmt_err(err):
  return "n/a" if err is None else f"{err:.1e}"


# ---------------------------------------------------------------------------
# Sections.


def extremes_section(problem, truth, args, lines, decision_rows):
  target = args.target
  # Cold call first: compilation for this size's shapes included.
  start = time.perf_counter()
  lminima_extremes(problem, 1e-8)()
  cold = time.perf_counter() - start
  tools = {}
  tools["lminima (calibrated tol)"] = calibrate(
      lminima_extremes, LMINIMA_TOLS, problem, truth, target)
  default_run = lminima_extremes(problem, 1e-8)
  tools["lminima (default tol=1e-8)"] = (
      1e-8, default_run, relative_errors(default_run(), truth))
  tools["matfree tridiag_sym full reortho"] = calibrate(
      matfree_extremes, [s for s in LANCZOS_STEPS if s <= problem.dim],
      problem, truth, target)
  tools["hessian-eigenthings lanczos_tridiagonal"] = calibrate(
      eigenthings_extremes, [s for s in LANCZOS_STEPS if s <= problem.dim],
      problem, truth, target)
  tools["PyHessian power iteration (top only)"] = calibrate(
      pyhessian_top, PYHESSIAN_TOLS, problem, truth, target)
  if problem.label == "5e3":
    run = dense_route(problem)
    tools["dense jax.hessian + eigvalsh"] = (
        "-", run, relative_errors(run(), truth))
  timings = time_alternating({k: v[1] for k, v in tools.items()},
                             args.dense_reps if problem.label == "5e3"
                             and not args.quick else args.reps)
  base = np.median(timings["lminima (calibrated tol)"]["steady"])
  lines.append(f"\n### P = {problem.dim} ({problem.label}), truth: "
               f"{truth['source']} ({truth['seconds']:.1f} s)\n")
  lines.append(f"lambda_min = {truth['lambda_min']:.10g}, lambda_max = "
               f"{truth['lambda_max']:.10g}\n")
  lines.append("| tool | setting | matvecs | err lambda_min | err lambda_max "
               "| first timed call | steady median (min-max) | tool / lminima |")
  lines.append("|---|---|---|---|---|---|---|---|")
  peer_best = None
  for name, (setting, run, errors) in tools.items():
    steady = timings[name]["steady"]
    ratio = np.median(steady) / base
    matvecs = run()[2]
    reached = worst(errors) <= target
    lines.append(
        f"| {name} | {setting} | {matvecs if matvecs else '?'} | "
        f"{fmt_err(errors[0])} | {fmt_err(errors[1])} | "
        f"{timings[name]['first']:.3g} s | {fmt_time(steady)} | "
        f"{ratio:.2f}{'' if reached else ' (target missed)'} |")
    both = errors[0] is not None and reached
    if not name.startswith(("lminima", "dense")) and both:
      peer_best = min(ratio, peer_best or np.inf)
    if name.startswith(("lminima (cal", "matfree")):
      decision_rows.append(
          f"| {problem.dim} | {name} | {setting} | {fmt_err(worst(errors))} |"
          f" {timings[name]['first']:.3g} s | {fmt_time(steady)} |")
  lminima_total = np.median(timings["lminima (default tol=1e-8)"]["steady"])
  lines.append(
      f"\nFastest peer reaching the target on both ends, time relative to "
      f"lminima (calibrated): "
      f"{'none reached it' if peer_best is None else f'{peer_best:.2f}x'} "
      f"(> 1 means lminima is faster). lminima at its default tol=1e-8: "
      f"{lminima_total:.3g} s median steady, {cold:.3g} s cold (first call "
      f"at this size, JAX compilation included). Calibration runs every tool "
      f"before timing, so 'first timed call' is already compiled.")


def trace_section(problem, truth, args, lines):
  if truth["trace"] is None:
    return
  num = args.trace_probes

  def ours():
    matvec, dim = hessian.hvp_operator(problem.loss_fn, problem.params)
    return slq.hutchinson_trace(matvec, dim, key=jax.random.PRNGKey(0),
                                       num_probes=num)[0]

  def pyh():
    torch.manual_seed(0)
    h = pyhessian_hessian(problem.torch_model, problem.criterion,
                          data=problem.torch_data, cuda=False)
    return float(np.mean(h.trace(maxIter=num, tol=0.0)))

  def eig():
    operator = he.HessianOperator(problem.torch_model, [problem.torch_data],
                                  he.supervised_loss(problem.criterion))
    return float(he.hutchinson(operator, num_samples=num, seed=0).estimate)

  runs = {"lminima hutchinson_trace": ours, "PyHessian trace": pyh,
          "hessian-eigenthings hutchinson": eig}
  timings = time_alternating(runs, args.reps)
  base = np.median(timings["lminima hutchinson_trace"]["steady"])
  lines.append(f"\nHutchinson trace, {num} Rademacher probes, P = "
               f"{problem.dim}, exact trace {truth['trace']:.6g}\n")
  lines.append("| tool | relative error | first call | steady | "
               "tool / lminima |")
  lines.append("|---|---|---|---|---|")
  for name, run in runs.items():
    error = abs(run() - truth["trace"]) / abs(truth["trace"])
    steady = timings[name]["steady"]
    lines.append(f"| {name} | {error:.1e} | {timings[name]['first']:.3g} s | "
                 f"{fmt_time(steady)} | {np.median(steady) / base:.2f} |")


def density_section(problem, truth, args, lines):
  # hessian-eigenthings' SLQ takes about a minute per call at P ~ 1e3 here.
  if truth["trace"] is None or problem.dim > DENSITY_MAX_P:
    return
  probes, steps = 10, 80

  def ours():
    matvec, dim = hessian.hvp_operator(problem.loss_fn, problem.params)
    d = slq.slq_density(matvec, dim, key=jax.random.PRNGKey(0),
                               num_probes=probes, num_iters=steps)
    return d.nodes, d.weights

  def eig():
    operator = he.HessianOperator(problem.torch_model, [problem.torch_data],
                                  he.supervised_loss(problem.criterion))
    r = he.spectral_density(operator, num_runs=probes, lanczos_steps=steps,
                            seed=0)
    return r

  runs = {"lminima slq_density": ours,
          "hessian-eigenthings spectral_density": eig}
  timings = time_alternating(runs, args.reps)
  nodes, weights = ours()
  moment_1 = np.mean(np.sum(weights * nodes, axis=1))
  moment_2 = np.mean(np.sum(weights * nodes ** 2, axis=1))
  lines.append(f"\nSLQ density, {probes} probes x {steps} Lanczos steps, "
               f"P = {problem.dim}\n")
  lines.append("| tool | first call | steady | tool / lminima |")
  lines.append("|---|---|---|---|")
  base = np.median(timings["lminima slq_density"]["steady"])
  for name in runs:
    steady = timings[name]["steady"]
    lines.append(f"| {name} | {timings[name]['first']:.3g} s | "
                 f"{fmt_time(steady)} | {np.median(steady) / base:.2f} |")
  lines.append(
      f"\nlminima SLQ moments vs exact: tr(H)/n {moment_1:.4g} vs "
      f"{truth['trace'] / problem.dim:.4g}; tr(H^2)/n {moment_2:.4g} vs "
      f"{truth['trace_sq'] / problem.dim:.4g}.")
  try:
    h = pyhessian_hessian(problem.torch_model, problem.criterion,
                          data=problem.torch_data, cuda=False)
    h.density(iter=5, n_v=1)
    lines.append("PyHessian density(): ran.")
  except Exception as error:  # record the failure verbatim
    lines.append(f"PyHessian density() fails on torch {torch.__version__}: "
                 f"`{type(error).__name__}: {str(error).splitlines()[0]}`"
                 f" (it calls `torch.eig`, removed from torch).")


# ---------------------------------------------------------------------------


def environment() -> list[str]:
  model = provenance.machine_info()["cpu"]
  versions = ", ".join(f"{p} {importlib.metadata.version(p)}" for p in (
      "jax", "jaxlib", "torch", "matfree", "pyhessian", "hessian-eigenthings",
      "numpy"))
  return [f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
          f"- CPU: {model}, {os.cpu_count()} cores visible, torch threads "
          f"{torch.get_num_threads()}",
          f"- versions: python {platform.python_version()}, {versions}",
          f"- command: `python {' '.join(sys.argv)}`"]


MATFREE_DECISION = """
## Decision (written by hand; re-check against the numbers above)

lminima keeps its own Lanczos. matfree's `tridiag_sym(num_matvecs,
reortho="full")` is accurate (same Ritz values as ours to roundoff once it runs
enough steps), but it runs a fixed number of steps chosen in advance: it has no
convergence test, so reaching 1e-6 needs either a calibration against a truth
we do not have in production, or a generous step count that wastes matvecs;
lminima's while_loop stops on the Ritz residual estimates of both ends and
returns true residuals, Ritz vectors and a convergence flag, which the
certificate needs. matfree is a one-maintainer project whose public API has
changed between minor releases (module layout and signatures differ across
0.0.x -> 0.2 -> 0.6), so depending on it for the certificate's core adds
churn for no accuracy gain. It stays a benchmark peer.
"""


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true",
                      help="smoke run: sizes 1e3 and 5e3, 3 reps")
  parser.add_argument("--sizes", nargs="*", default=None,
                      help=f"subset of {list(SIZES)}")
  parser.add_argument("--reps", type=int, default=5)
  parser.add_argument("--dense-reps", type=int, default=5,
                      help="reps at P~5e3, where the dense route is timed")
  parser.add_argument("--target", type=float, default=1e-6)
  parser.add_argument("--trace-probes", type=int, default=100)
  args = parser.parse_args()
  sizes = args.sizes or (["1e3", "5e3"] if args.quick else list(SIZES))
  if args.quick:
    args.reps = min(args.reps, 3)
    args.dense_reps = min(args.dense_reps, 3)
  torch.set_default_dtype(torch.float64)  # PyHessian draws vectors in default

  lines = ["# Hessian spectrum benchmark (generated by benchmarks/"
           "bench_hessian.py; do not edit)", ""] + environment()
  lines += ["", f"tanh MLP d_in={D_IN}, two hidden layers, d_out={D_OUT}, "
            f"m={M}, mean squared loss, float64 everywhere, random init. "
            f"Target: relative error <= {args.target:g} on lambda_min and "
            "lambda_max. 'first call' includes JAX compilation; 'steady' is "
            "the median (min-max) of the timed reps; the lminima time "
            "includes building the linearized operator. PyHessian power "
            "iteration gives only the top eigenvalue (no shift option), so "
            "its lambda_min is n/a and it does not count as reaching the "
            "target on both ends."]
  decision_rows = []
  for label in sizes:
    problem = Case(label, SIZES[label])
    print(f"size {label}: P = {problem.dim}", flush=True)
    truth = problem.truth()
    print(f"  truth: {truth['source']} in {truth['seconds']:.1f} s",
          flush=True)
    for section in (extremes_section, trace_section, density_section):
      try:
        if section is extremes_section:
          section(problem, truth, args, lines, decision_rows)
        else:
          section(problem, truth, args, lines)
      except Exception:  # keep the other sections' numbers
        lines.append(f"\n{section.__name__} failed at P={problem.dim}:\n```\n"
                     f"{traceback.format_exc(limit=3)}```")
      print(f"  {section.__name__} done", flush=True)
  os.makedirs(RESULTS, exist_ok=True)
  with open(os.path.join(RESULTS, "hessian.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  with open(os.path.join(RESULTS, "matfree_decision.md"), "w") as f:
    f.write("# matfree vs lminima Lanczos (generated by benchmarks/"
            "bench_hessian.py)\n\n" + "\n".join(environment()) + "\n\n")
    f.write("Time to lambda_min and lambda_max at relative error <= "
            f"{args.target:g} (cheapest calibrated setting).\n\n")
    f.write("| P | tool | setting | worst error | first call | steady |\n"
            "|---|---|---|---|---|---|\n")
    f.write("\n".join(decision_rows) + "\n" + MATFREE_DECISION)
  print("\n".join(lines))


if __name__ == "__main__":
  main()
