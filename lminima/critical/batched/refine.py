"""Refinement of a whole population in one compiled program, and its
certificates.

``refinement.refine`` and ``certify.certificate`` treat one member at a time,
from Python. Here the members of one shape (``lanes.shape_key``: one
``Objective``, the same parameter shapes and the same data, different points)
go through ONE jitted float64 program per call (the lane queue of
``lminima.critical.batched.lanes``):

* ``refine_many(problems, method=...) -> list[RefineResult]``:
  ``refinement.refine(p, method=...)`` for every member. ``"lm"`` is the
  program here, the LM iteration of ``refinement.refine(method="lm")`` with
  its rules shared (``refinement.stop_code``, ``lm_trial``, ``lm_accept``):
  with ``H = V diag(lam) V^T`` the exact Hessian and ``g`` the gradient, the
  trial step ``d = -V (lam + mu)^{-1} V^T g``, ``mu = max(0, -lam_min) + nu
  ||g||``, accepted on ``rho = (L - L(theta + d)) / (-(g.d + d.H d / 2))``,
  ``nu`` times 4 per refusal and / 4 after a very good step; stop reasons
  grad_tol / max_iters / stalled / non_finite / escaping, the gradient
  tolerance ``Tolerances.grad_tolerance`` of each member's L and ``||H||``
  from the ``eigh`` of its pass, ``lanes`` members at once (``jax.vmap``:
  batched Hessians and ``jnp.linalg.eigh``). ``"newton_mr"`` is the
  matrix-free program of ``lminima.critical.batched.newton_mr``.
* ``refine_and_certify_many``: both, for LM the certificate's spectrum taken
  from the ``eigh`` the refinement does at its end point (no second program),
  else ``lminima.critical.batched.certificates.certify_many``;
  ``refine_and_certify_groups``: the same over mixed shapes, one program per
  ``group_by_shape`` group (what a sweep would call).

Results equal the sequential ones up to float64 roundoff (members never
interact; only the summation order of batched kernels differs): same stop
reasons and, on converged members, the same refined losses
(tests/test_batched_refine.py). A program compiles once per (objective,
shapes, population size, ``max_iters``, ``lanes``).

Example:
  >>> import jax, numpy as np
  >>> from lminima.core.models import MLP
  >>> model = MLP(d_in=2, widths=(3,), d_out=1, activation="tanh")
  >>> x = np.random.default_rng(0).standard_normal((8, 2))
  >>> problems = [Problem.for_module(model, model.init_params(
  ...     jax.random.PRNGKey(s)), x, np.sin(x[:, :1])) for s in range(3)]
  >>> results, certs = refine_and_certify_many(problems, max_iters=50)
  >>> len(results), all(c.n_params == 13 for c in certs)
  (3, True)
  >>> [r.method for r in refine_many(problems[:1], method="newton_mr")]
  ['newton_mr']
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from lminima.core import problem as problem_lib
from lminima.core.problem import Problem
from lminima.core.tolerances import DEFAULT, Tolerances
from lminima.critical import certify
from lminima.critical import refinement
from lminima.critical.batched import newton_mr
from lminima.critical.batched.certificates import certify_many, spectrum
from lminima.critical.batched.lanes import (check_population, per_shape_group,
                                            refine_result, run_lanes,
                                            starting_points, queued_lane,
                                            advance_lane)
from lminima.critical.refinement import RefineResult
from lminima.dtypes import EXACT_DTYPE

# Dense P x P float64 matrices alive per lane (Hessian, eigenvectors, LAPACK
# workspace): with the memory budget, the number of lanes.
_MATRICES_PER_MEMBER = 4
# Default lanes, 8 up to _VMAP_MAX_PARAMS parameters, else 1: small members
# share the loop's per-op overhead, large ones gain nothing from vmapped
# Hessians (docs/design.md, "Batched refinement and certificates").
_DEFAULT_LANES, _VMAP_MAX_PARAMS = 8, 128
# Refinement: one program per population of one shape.
_OUTPUTS = ("flat", "loss", "iters", "stop", "lam", "residuals", "gn_hist",
            "loss_hist", "norm_hist", "grad_tol")

@functools.partial(jax.jit, static_argnames=(
    "objective", "tol", "max_iters", "max_trials", "lanes"))
def _lm_population(objective, flats, escape_norms, like, x, y, ref_loss, *,
                   tol: Tolerances, max_iters: int, max_trials: int,
                   lanes: int):
  """LM refinement of every row of ``flats`` on ``lanes`` vmapped lanes.

  Each pass of one ``lax.while_loop``, per lane: a stopped lane takes the
  next queued member (whose first pass only evaluates L and g); H, ``eigh``
  and the stop tests at the lane's point; one LM step for running members.
  Each lane's state is written to its member's outputs every pass; the last
  write is at the final point, whose eigenvalues give the certificate.
  """
  count, dim = flats.shape
  loss_and_grad = lambda f: problem_lib._loss_and_flat_grad(  # pylint: disable=protected-access
      objective, f, like, x, y)
  hessian_at = lambda f: problem_lib._dense_hessian(  # pylint: disable=protected-access
      objective, f, like, x, y)
  nan = jnp.asarray(jnp.nan, EXACT_DTYPE)

  def lane_pass(lane):
    flat, iters, loss, grad = (lane[k] for k in ("flat", "iters", "loss",
                                                  "grad"))
    # A fresh lane only evaluates L and g at its start (loss_and_grad has one
    # call site, the trial loop's: it is compiled once); it is checked and
    # stepped from the next pass on.
    fresh = lane["fresh"]
    matrix = hessian_at(flat)
    lam, vecs = jnp.linalg.eigh(matrix)
    grad_norm = jnp.linalg.norm(grad)
    grad_tol = tol.grad_tolerance(
        loss, jnp.maximum(jnp.abs(lam[0]), jnp.abs(lam[-1])), ref_loss,
        xp=jnp)
    checking = (lane["stop"] == 0) & ~fresh
    code = jnp.where(checking, refinement.stop_code(
        loss, grad_norm, jnp.linalg.norm(flat), iters, grad_tol=grad_tol,
        escape_norm=lane["escape_norm"], max_iters=max_iters, xp=jnp), 0)
    running = checking & (code == 0)
    coeffs = vecs.T @ grad
    shift = jnp.maximum(0.0, -lam[0])

    def trial(carry):
      k, nu = carry[:2]
      step_coeffs, predicted = refinement.lm_trial(
          lam, coeffs, shift + nu * grad_norm)
      candidate = jnp.where(fresh, flat, flat + vecs @ step_coeffs)
      new_loss, new_grad = loss_and_grad(candidate)
      accept, very_good = refinement.lm_accept(
          loss, new_loss, predicted, grad_norm, jnp.linalg.norm(new_grad),
          xp=jnp)
      nu = jnp.where(fresh, nu, jnp.where(
          accept, jnp.where(very_good, nu / 4, nu),
          jnp.maximum(4.0 * nu, 1e-8)))
      return k + 1, nu, accept | fresh, candidate, new_loss, new_grad

    _, nu, accepted, candidate, new_loss, new_grad = lax.while_loop(
        lambda c: (running | fresh) & (c[0] < max_trials) & ~c[2], trial,
        (0, lane["nu"], False, flat, loss, grad))
    return dict(
        advance_lane(lane, checking=checking, code=code,
                     step=running & accepted, refused=running & ~accepted,
                     candidate=candidate, new_loss=new_loss,
                     new_grad=new_grad, grad_norm=grad_norm),
        nu=nu, lam=lam, grad_tol=jnp.where(checking, grad_tol,
                                           lane["grad_tol"]),
        residuals=certify.end_residuals(matrix, lam, vecs, xp=jnp))

  def queued(member):
    return dict(queued_lane(member, flats, escape_norms, max_iters),
                nu=jnp.asarray(1.0, EXACT_DTYPE), lam=jnp.full((dim,), nan),
                grad_tol=nan, residuals=jnp.full((2,), nan))

  return run_lanes(queued, lane_pass, count=count, lanes=lanes,
                   outputs=_OUTPUTS)

def _run_population(problems: Sequence[Problem], *, tol: Tolerances | None,
                    max_iters: int, escape_ratio: float | None,
                    lm_max_params: int, max_trials: int, lanes: int | None
                    ) -> tuple[list[RefineResult], dict[str, np.ndarray]]:
  """The refinement program on a checked population; (results, outputs)."""
  first = check_population(problems, "refine_many")
  if not (max_iters >= 0 and max_trials >= 1
          and (lanes is None or lanes >= 1)
          and (escape_ratio is None or escape_ratio > 1)):
    raise ValueError(f"refine_many: need max_iters >= 0, max_trials >= 1, "
                     f"lanes >= 1 and escape_ratio > 1 or None, got "
                     f"max_iters={max_iters}, max_trials={max_trials}, "
                     f"lanes={lanes}, escape_ratio={escape_ratio}")
  if first.n_params > lm_max_params:
    raise ValueError(f"refine_many: n_params={first.n_params} > lm_max_params"
                     f"={lm_max_params}; the dense LM path does not apply")
  flats, norms_start, escape = starting_points(problems, escape_ratio)
  fit = first.memory_budget_bytes // (
      _MATRICES_PER_MEMBER * 8 * first.n_params ** 2)
  if lanes is None:
    lanes = _DEFAULT_LANES if first.n_params <= _VMAP_MAX_PARAMS else 1
  lanes = max(1, min(len(problems), fit, lanes))
  with refinement.serial_blas():  # LAPACK threads only contend (eigh)
    out = jax.block_until_ready(_lm_population(
        first.objective, jnp.asarray(flats, EXACT_DTYPE),
        jnp.asarray(escape, EXACT_DTYPE), first.params, first.x, first.y,
        jnp.asarray(first.reference_loss, EXACT_DTYPE),
        tol=DEFAULT if tol is None else tol, max_iters=int(max_iters),
        max_trials=int(max_trials), lanes=int(lanes)))
  out = {k: np.asarray(v) for k, v in out.items()}
  return [refine_result(problem, out, i, norms_start[i])
          for i, problem in enumerate(problems)], out

METHODS = ("lm", "newton_mr")
"""The batched methods: ``refinement.refine``'s ``"lm"`` and ``"newton_mr"``."""


def _check_method(method: str, caller: str) -> None:
  if method not in METHODS:
    raise ValueError(f"{caller}: method must be one of {METHODS}, got "
                     f"{method!r}")


def refine_many(problems: Sequence[Problem], *, method: str = "lm",
                tol: Tolerances | None = None, max_iters: int = 100,
                escape_ratio: float | None = 5.0, lm_max_params: int = 5000,
                max_trials: int = 40, minres_max_iters: int = 1000,
                lanes: int | None = None) -> list[RefineResult]:
  """``refinement.refine(p, method=method)`` for every ``p``, in one program.

  Args:
    problems: members of one shape (``shape_key``): same objective, data and
      parameter shapes, any points.
    method: ``"lm"`` (the dense program here, n_params <= lm_max_params) or
      ``"newton_mr"`` (matrix free, ``newton_mr.refine_newton_mr_many``).
    tol, max_iters, escape_ratio, lm_max_params, minres_max_iters: as in
      ``refine``.
    max_trials: LM trial steps per iteration, or Newton-MR's Armijo
      halvings, before ``"stalled"`` (the sequential path's 40).
    lanes: members iterated together (vmapped); a lane whose member stops
      takes the next one. LM: default 8 up to 128 parameters, else 1 (faster
      on CPU, see ``_VMAP_MAX_PARAMS``); fewer if the problems'
      ``memory_budget_bytes`` cannot hold ~4 P x P matrices a lane.

  Returns:
    One ``RefineResult`` per problem, in order, with its ``method``.

  Raises:
    ValueError: on mixed shapes or data, bad tolerances or method, or (LM)
      n_params > lm_max_params.
  """
  _check_method(method, "refine_many")
  if method == "newton_mr":
    return newton_mr.refine_newton_mr_many(
        problems, tol=tol, max_iters=max_iters, escape_ratio=escape_ratio,
        minres_max_iters=minres_max_iters, max_backtracks=max_trials,
        lanes=lanes)
  return _run_population(
      problems, tol=tol, max_iters=max_iters,
      escape_ratio=escape_ratio, lm_max_params=lm_max_params,
      max_trials=max_trials, lanes=lanes)[0]


def refine_and_certify_many(
    problems: Sequence[Problem], *, method: str = "lm",
    tol: Tolerances | None = None, max_iters: int = 100,
    escape_ratio: float | None = 5.0, lm_max_params: int = 5000,
    minres_max_iters: int = 1000, lanes: int | None = None,
    dense_max_params: int = 3000
    ) -> tuple[list[RefineResult], list[certify.Certificate]]:
  """``refine_many`` and the certificates of its end points.

  The LM program diagonalizes H at every point it visits, the end point
  included, so the dense certificate's spectrum costs no second program
  (``certify.decide`` then runs the proof or the probe member by member);
  above ``dense_max_params``, and for Newton-MR, the certificates come from
  ``certify_many``. Arguments as in ``refine_many`` and ``certify_many``.
  """
  _check_method(method, "refine_and_certify_many")
  certify.check_dense_max_params(dense_max_params,
                                 caller="refine_and_certify_many")
  if method == "newton_mr":
    return newton_mr.refine_and_certify_newton_mr_many(
        problems, tol=tol, max_iters=max_iters, escape_ratio=escape_ratio,
        minres_max_iters=minres_max_iters, lanes=lanes,
        dense_max_params=dense_max_params, lm_max_params=lm_max_params)
  tol = DEFAULT if tol is None else tol
  results, out = _run_population(
      problems, tol=tol, max_iters=max_iters,
      escape_ratio=escape_ratio, lm_max_params=lm_max_params, max_trials=40,
      lanes=lanes)
  ends = [p.at(r.params) for p, r in zip(problems, results)]
  if problems[0].n_params > dense_max_params:
    return results, certify_many(ends, tol=tol,
                                 dense_max_params=dense_max_params,
                                 lm_max_params=lm_max_params)
  certs = []
  for i, (end, result) in enumerate(zip(ends, results)):
    loss, lam, res = float(out["loss"][i]), out["lam"][i], out["residuals"][i]
    finite = math.isfinite(loss) and math.isfinite(result.grad_norm)
    certs.append(certify.decide(
        end, spectrum(lam, res) if finite else None, "dense", tol,
        lm_max_params))
  return results, certs

def refine_and_certify_groups(
    problems: Sequence[Problem], **kwargs
    ) -> tuple[list[RefineResult], list[certify.Certificate]]:
  """``refine_and_certify_many`` on every shape group of ``problems``
  (``group_by_shape``), one program per group; ``kwargs`` go to it.

  Returns:
    ``(results, certificates)`` in the order of ``problems``.
  """
  pairs = per_shape_group(
      lambda group: list(zip(*refine_and_certify_many(group, **kwargs))),
      problems)
  return [p[0] for p in pairs], [p[1] for p in pairs]

