"""The lane queue of a population program, shared by every batched method.

A population is members of one shape (``shape_key``: one ``Objective``, the
same parameter shapes and the same data, different points), run by ONE jitted
float64 program per call: a ``lax.while_loop`` whose ``lanes`` vmapped lanes
each iterate a member and take the next queued member when theirs stops
(``run_lanes``), so stopped members cost nothing once the queue is empty
except the idle lanes of the tail (masked work). ``queued_lane`` and
``advance_lane`` are a refinement lane's state and its step,
``starting_points`` the population's start, ``refine_result`` a member's row
of the program's output as ``refinement.refine`` reports it, and
``check_population``, ``group_by_shape``, ``per_shape_group`` and ``blocks``
split and check populations (mixed shapes or data raise a one-line
``ValueError``).

Example:
  >>> import jax, numpy as np
  >>> from lminima import Problem
  >>> from lminima.core.models import MLP
  >>> x = np.ones((4, 2))
  >>> problems = [Problem.for_module(model, model.init_params(
  ...     jax.random.PRNGKey(0)), x, np.zeros((4, 1)))
  ...     for model in (MLP(2, (3,), 1), MLP(2, (5,), 1), MLP(2, (3,), 1))]
  >>> group_by_shape(problems)
  [[0, 2], [1]]
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from lminima.core.problem import Problem
from lminima.critical import refinement
from lminima.critical.refinement import RefineResult
from lminima.dtypes import EXACT_DTYPE


def shape_key(problem: Problem) -> tuple:
  """What members must share to run in one program: the objective, the
  parameters' structure and shapes, the data's shapes."""
  leaves, treedef = jax.tree_util.tree_flatten(problem.params)
  return (problem.objective, treedef, tuple(np.shape(a) for a in leaves),
          tuple(problem.x.shape), tuple(problem.y.shape))


def group_by_shape(problems: Sequence[Problem]) -> list[list[int]]:
  """Indices of ``problems`` grouped by ``shape_key``, in first-seen order."""
  groups: dict[tuple, list[int]] = {}
  for i, problem in enumerate(problems):
    groups.setdefault(shape_key(problem), []).append(i)
  return list(groups.values())


def check_population(problems: Sequence[Problem], caller: str) -> Problem:
  """The first problem, after checking that all share one program."""
  if not problems:
    raise ValueError(f"{caller}: no problems given")
  first = problems[0]
  key = shape_key(first)
  for i, problem in enumerate(problems[1:], 1):
    if shape_key(problem) != key:
      raise ValueError(
          f"{caller}: problem {i} differs from problem 0 in objective or "
          f"shapes (n_params {problem.n_params} vs {first.n_params}); call it "
          "per group of lanes.group_by_shape(problems)")
    if not (problem.x is first.x or np.array_equal(problem.x, first.x)) or (
        not (problem.y is first.y or np.array_equal(problem.y, first.y))):
      raise ValueError(f"{caller}: problem {i} has other data than problem "
                       "0; a population shares one training set")
  return first


def blocks(count: int, per_member_bytes: int, budget: int):
  """``[(start, real, rows)]``: program calls of as many members as the
  memory budget allows, the last padded with copies of the last member
  (dropped afterwards) so that every call has one size, one compilation."""
  size = max(1, min(count, budget // max(per_member_bytes, 1)))
  return [(start, min(size, count - start),
           np.minimum(np.arange(start, start + size), count - 1))
          for start in range(0, count, size)]

def starting_points(problems: Sequence[Problem], escape_ratio: float | None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """``(flats, their norms, escape norms)`` of a population's starting points,
  the escape norm as in ``refinement.refine``."""
  flats = np.stack([np.asarray(p.flat) for p in problems])
  norms = np.linalg.norm(flats, axis=1)
  escape = (np.full(len(problems), np.inf) if escape_ratio is None
            else escape_ratio * np.maximum(1.0, norms))
  return flats, norms, escape


def queued_lane(member, flats, escape_norms, max_iters: int) -> dict:
  """The state every refinement lane starts from for queue entry
  ``member``: its point, unchecked (``fresh``: its first pass only evaluates
  L and g), histories blank."""
  nan = jnp.asarray(jnp.nan, EXACT_DTYPE)
  blank = jnp.full((max_iters + 1,), nan)
  return dict(member=member, flat=flats[member], fresh=jnp.asarray(True),
              escape_norm=escape_norms[member],
              iters=jnp.asarray(0, jnp.int32),
              stop=jnp.asarray(0, jnp.int32), loss=nan,
              grad=jnp.zeros_like(flats[member]), gn_hist=blank,
              loss_hist=blank, norm_hist=blank)


def advance_lane(lane: dict, *, checking, code, step, refused, candidate,
                 new_loss, new_grad, grad_norm) -> dict:
  """A refinement lane after one pass: ``step`` moves it to ``candidate``
  (a fresh lane takes its own L and g), ``code`` stops it, a ``refused``
  step stops it as stalled; the histories get this pass's point (index
  ``iters``), the step's effect shows next pass."""
  flat, iters, fresh = lane["flat"], lane["iters"], lane["fresh"]
  record = lambda name, value: lane[name].at[iters].set(
      jnp.where(checking, value, lane[name][iters]))
  moved = step | fresh
  stalled = 1 + refinement.STOP_REASONS.index("stalled")
  stop = jnp.where(code != 0, code,
                   jnp.where(refused, stalled, lane["stop"]))
  return dict(
      lane, flat=jnp.where(step, candidate, flat),
      loss=jnp.where(moved, new_loss, lane["loss"]),
      grad=jnp.where(moved, new_grad, lane["grad"]),
      fresh=jnp.zeros_like(fresh), iters=iters + step.astype(jnp.int32),
      stop=stop.astype(jnp.int32), gn_hist=record("gn_hist", grad_norm),
      loss_hist=record("loss_hist", lane["loss"]),
      norm_hist=record("norm_hist", jnp.linalg.norm(flat)))


def run_lanes(queued, lane_pass, *, count: int, lanes: int,
              outputs: Sequence[str]) -> dict:
  """The queue of a population program (traced inside its ``jit``).

  ``queued(member)`` is a lane's state for queue entry ``member`` (a dict
  with at least ``member`` and ``stop``, 0 while running); ``lane_pass``
  advances one lane (vmapped over ``lanes``). Each pass of one
  ``lax.while_loop``, the lanes whose member stopped take the next queued
  members, every lane advances, and each lane's ``outputs`` fields are written
  to its member's row; the loop ends when the queue is empty and every lane
  has stopped. Returns ``{name: (count, ...)}``.
  """
  def body(carry):
    lane, queue, out = carry
    done = lane["stop"] != 0
    wanted = queue + jnp.cumsum(done) - 1
    take = done & (wanted < count)
    new = jax.vmap(queued)(jnp.where(take, wanted, lane["member"]))
    lane = jax.tree_util.tree_map(
        lambda a, b: jnp.where(take.reshape((-1,) + (1,) * (a.ndim - 1)),
                               a, b), new, lane)
    lane = jax.vmap(lane_pass)(lane)
    out = {k: out[k].at[lane["member"]].set(lane[k]) for k in outputs}
    return lane, queue + jnp.sum(take), out

  def running(carry):
    lane, queue, _ = carry
    return jnp.any(lane["stop"] == 0) | (queue < count)

  lane = jax.vmap(queued)(jnp.arange(lanes))
  out = {k: jnp.zeros((count,) + v.shape[1:], v.dtype)
         for k, v in lane.items() if k in outputs}
  return lax.while_loop(running, body, (lane, lanes, out))[2]

def refine_result(problem: Problem, out: dict[str, np.ndarray], i: int,
                  norm_start: float, method: str = "lm") -> RefineResult:
  """Member i of the program's output as ``refine`` reports it."""
  iters = int(out["iters"][i])
  flat = out["flat"][i]
  history = lambda name: tuple(float(v) for v in out[name][i, :iters + 1])
  stop_reason = refinement.STOP_REASONS[int(out["stop"][i]) - 1]
  grad_norms = history("gn_hist")
  return RefineResult(
      params=problem.unravel(jnp.asarray(flat, EXACT_DTYPE)),
      loss=float(out["loss"][i]), grad_norm=grad_norms[-1], iters=iters,
      converged=stop_reason == "grad_tol",
      grad_tol=float(out["grad_tol"][i]), stop_reason=stop_reason,
      grad_norm_history=grad_norms, loss_history=history("loss_hist"),
      param_norm_history=history("norm_hist"), method=method,
      param_norm_start=float(norm_start),
      param_norm=float(np.linalg.norm(flat)))



def per_shape_group(fn: Callable[[list[Problem]], list],
                    problems: Sequence[Problem]) -> list:
  """``fn`` on every ``group_by_shape`` group of ``problems`` (one program
  per group), its per-member outputs put back in the order of ``problems``.
  """
  out: list = [None] * len(problems)
  for group in group_by_shape(problems):
    for i, value in zip(group, fn([problems[i] for i in group])):
      out[i] = value
  return out
