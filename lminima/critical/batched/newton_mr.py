"""Matrix-free refinement of a whole population in one compiled program.

``refinement.refine(method="newton_mr")`` for every member of one shape, the
way ``lminima.critical.batched.refine.refine_many`` does LM: one jitted float64
program whose ``lanes`` vmapped lanes each iterate a member and take the next
queued member when theirs stops (``lane_queue.run_lanes``). Nothing P x P is
formed, so it serves members with P ~ 1e4-1e5 parameters (e.g. MLPs on
MNIST pixels): per iteration and lane, MINRES (``lminima.linalg.minres``) on
``H d = -g`` with Hessian-vector products to the forcing tolerance
``min(1e-2, ||g||)``, the steepest descent ``-H g`` of the merit ``||g||^2 / 2``
when that is no descent direction, and Armijo backtracking on the merit. The
direction and the acceptance rule are the sequential path's own functions
(``refinement.newton_mr_direction``, ``refinement.mr_accept``), and the stop
rules too (``refinement.stop_code``), so stop reasons and converged points equal
the sequential ones up to the rounding of batched kernels.

The members' Hessian-vector products are one vmapped call, so the first
layer's ``x @ V`` of all lanes is one matrix product with the data. Under
``vmap`` a lane's MINRES and line search run until the slowest lane's stop
(the finished lanes' states are frozen, their work wasted); the queue keeps
members that stop early from holding a lane.

Certificates of the end points: ``certificates.certify_many`` (batched
Lanczos above ``dense_max_params``); ``refine_and_certify_newton_mr_many``
does both.

Example (least squares: one Newton step from any start):
  >>> import jax, numpy as np
  >>> from lminima.core.models import MLP
  >>> linear = MLP(d_in=3, widths=(), d_out=2, activation="identity")
  >>> data = np.random.default_rng(1).standard_normal((10, 5))
  >>> starts = [linear.init_params(jax.random.PRNGKey(s)) for s in (0, 1)]
  >>> problems = [Problem.for_module(linear, start, data[:, :3], data[:, 3:])
  ...             for start in starts]
  >>> [(r.stop_reason, r.iters) for r in refine_newton_mr_many(problems)]
  [('grad_tol', 1), ('grad_tol', 1)]
"""

from __future__ import annotations

import functools
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
from lminima.critical.batched import lanes as lane_queue
from lminima.critical.batched.certificates import certify_many
from lminima.critical.refinement import RefineResult
from lminima.dtypes import EXACT_DTYPE

_OUTPUTS = ("flat", "loss", "iters", "stop", "gn_hist", "loss_hist",
            "norm_hist", "grad_tol")
# Vectors of length P alive per lane (point, gradient, candidate, MINRES's
# seven, the Hessian-vector product's intermediates): sizes the lanes.
_VECTORS_PER_LANE = 24
_DEFAULT_LANES = 8


@functools.partial(jax.jit, static_argnames=(
    "objective", "tol", "max_iters", "minres_max_iters", "max_backtracks",
    "lanes"))
def _newton_mr_population(objective, flats, escape_norms, like, x, y,
                          ref_loss, *, tol: Tolerances, max_iters: int,
                          minres_max_iters: int, max_backtracks: int,
                          lanes: int):
  """Newton-MR refinement of every row of ``flats`` on ``lanes`` lanes."""
  count = flats.shape[0]
  loss_and_grad = lambda f: problem_lib._loss_and_flat_grad(  # pylint: disable=protected-access
      objective, f, like, x, y)
  flat_hvp = problem_lib._flat_hvp(objective)  # pylint: disable=protected-access

  def lane_pass(lane):
    flat, iters, loss, grad, fresh = (
        lane[k] for k in ("flat", "iters", "loss", "grad", "fresh"))
    grad_norm = jnp.linalg.norm(grad)
    grad_tol = tol.grad_tolerance(
        loss, refinement.power_curvature(
            functools.partial(flat_hvp, flat, like, x, y), flat.size),
        ref_loss, xp=jnp)
    checking = (lane["stop"] == 0) & ~fresh
    code = jnp.where(checking, refinement.stop_code(
        loss, grad_norm, jnp.linalg.norm(flat), iters, grad_tol=grad_tol,
        escape_norm=lane["escape_norm"], max_iters=max_iters, xp=jnp), 0)
    running = checking & (code == 0)
    # Lanes not running solve with g = 0, which MINRES returns at once.
    direction, slope = refinement.newton_mr_direction(
        functools.partial(flat_hvp, flat, like, x, y),
        jnp.where(running, grad, 0.0), minres_max_iters=minres_max_iters)
    descent = running & (slope < 0)
    merit = 0.5 * grad_norm ** 2

    def trial(carry):
      k, step = carry[:2]
      # A fresh lane only evaluates L and g at its start.
      candidate = jnp.where(fresh, flat, flat + step * direction)
      new_loss, new_grad = loss_and_grad(candidate)
      accept = refinement.mr_accept(
          new_loss, 0.5 * jnp.vdot(new_grad, new_grad), merit, step, slope,
          xp=jnp)
      return k + 1, step / 2, accept | fresh, candidate, new_loss, new_grad

    _, _, accepted, candidate, new_loss, new_grad = lax.while_loop(
        lambda c: (descent | fresh) & (c[0] < max_backtracks) & ~c[2], trial,
        (0, jnp.asarray(1.0, EXACT_DTYPE), False, flat, loss, grad))
    step = descent & accepted
    return dict(lane_queue.advance_lane(
        lane, checking=checking, code=code, step=step,
        refused=running & ~step, candidate=candidate, new_loss=new_loss,
        new_grad=new_grad, grad_norm=grad_norm),
                grad_tol=jnp.where(checking, grad_tol, lane["grad_tol"]))

  return lane_queue.run_lanes(
      lambda member: dict(
          lane_queue.queued_lane(member, flats, escape_norms, max_iters),
          grad_tol=jnp.asarray(jnp.nan, EXACT_DTYPE)),
      lane_pass, count=count, lanes=lanes, outputs=_OUTPUTS)


def refine_newton_mr_many(problems: Sequence[Problem], *,
                          tol: Tolerances | None = None, max_iters: int = 100,
                          escape_ratio: float | None = 5.0,
                          minres_max_iters: int = 1000,
                          max_backtracks: int = 40, lanes: int | None = None
                          ) -> list[RefineResult]:
  """``refinement.refine(p, method="newton_mr")`` for every ``p``, in one
  program.

  Args:
    problems: members of one shape (``lane_queue.shape_key``): same
      objective, data and parameter shapes, any points.
    tol, max_iters, escape_ratio, minres_max_iters: as in ``refine`` (the
      curvature of the gradient test from ``refinement.power_curvature``).
    max_backtracks: Armijo halvings before ``"stalled"`` (the sequential
      path's 40).
    lanes: members iterated together (vmapped); default 8, fewer if the
      problems' ``memory_budget_bytes`` cannot hold their vectors.

  Returns:
    One ``RefineResult`` per problem, in order, with ``method="newton_mr"``.

  Raises:
    ValueError: on mixed shapes or data, or bad arguments.
  """
  first = lane_queue.check_population(problems, "refine_newton_mr_many")
  if not (max_iters >= 0 and minres_max_iters >= 1
          and max_backtracks >= 1 and (lanes is None or lanes >= 1)
          and (escape_ratio is None or escape_ratio > 1)):
    raise ValueError(
        f"refine_newton_mr_many: need max_iters >= 0, "
        f"minres_max_iters >= 1, max_backtracks >= 1, lanes >= 1 and "
        f"escape_ratio > 1 or None, got max_iters="
        f"{max_iters}, minres_max_iters={minres_max_iters}, max_backtracks="
        f"{max_backtracks}, lanes={lanes}, escape_ratio={escape_ratio}")
  flats, norms_start, escape = lane_queue.starting_points(problems,
                                                           escape_ratio)
  fit = first.memory_budget_bytes // (
      _VECTORS_PER_LANE * 8 * first.n_params
      + 8 * int(np.prod(first.x.shape)))
  lanes = max(1, min(len(problems), fit,
                     _DEFAULT_LANES if lanes is None else lanes))
  out = jax.block_until_ready(_newton_mr_population(
      first.objective, jnp.asarray(flats, EXACT_DTYPE),
      jnp.asarray(escape, EXACT_DTYPE), first.params, first.x, first.y,
      jnp.asarray(first.reference_loss, EXACT_DTYPE),
      tol=DEFAULT if tol is None else tol, max_iters=int(max_iters),
      minres_max_iters=int(minres_max_iters),
      max_backtracks=int(max_backtracks), lanes=int(lanes)))
  out = {k: np.asarray(v) for k, v in out.items()}
  return [lane_queue.refine_result(problem, out, i, norms_start[i],
                                     method="newton_mr")
          for i, problem in enumerate(problems)]


def refine_and_certify_newton_mr_many(
    problems: Sequence[Problem], *, tol: Tolerances | None = None,
    max_iters: int = 100, escape_ratio: float | None = 5.0,
    minres_max_iters: int = 1000, lanes: int | None = None,
    dense_max_params: int = 3000, lm_max_params: int = 5000
    ) -> tuple[list[RefineResult], list[certify.Certificate]]:
  """``refine_newton_mr_many``, then ``certificates.certify_many`` at the end
  points (Lanczos batched above ``dense_max_params``); arguments as there."""
  certify.check_dense_max_params(dense_max_params,
                                 caller="refine_and_certify_newton_mr_many")
  results = refine_newton_mr_many(
      problems, tol=tol, max_iters=max_iters,
      escape_ratio=escape_ratio, minres_max_iters=minres_max_iters,
      lanes=lanes)
  return results, certify_many(
      [p.at(r.params) for p, r in zip(problems, results)], tol=tol,
      dense_max_params=dense_max_params, lm_max_params=lm_max_params)
