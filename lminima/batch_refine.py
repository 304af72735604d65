"""Refinement and certificates of a whole population in one compiled program.

``refinement.refine`` and ``certify.certificate`` treat one member at a time,
from Python: a dense float64 ``eigh`` and a handful of jitted calls per
Levenberg-Marquardt iteration. Here the members of one shape (one
``Objective``, the same parameter shapes and the same data, different points)
go through ONE jitted float64 program per call:

* ``refine_many(problems, ...) -> list[RefineResult]``: the LM iteration of
  ``refinement.refine(method="lm")`` with its rules shared
  (``refinement.stop_code``, ``lm_trial``, ``lm_accept``): with ``H = V
  diag(lam) V^T`` the exact Hessian and ``g`` the gradient, the trial step
  ``d = -V (lam + mu)^{-1} V^T g``, ``mu = max(0, -lam_min) + nu ||g||``,
  accepted on ``rho = (L - L(theta + d)) / (-(g.d + d.H d / 2))``, ``nu``
  times 4 per refusal and / 4 after a very good step; stop reasons
  grad_tol / max_iters / stalled / non_finite / escaping, the gradient
  tolerance ``Tolerances.grad_tolerance`` of each member's L and ``||H||``
  from the ``eigh`` of its pass. A
  ``lax.while_loop`` runs ``lanes`` members at once (``jax.vmap``: batched
  Hessians and ``jnp.linalg.eigh``); a lane whose member stopped takes the
  next member of the queue, so stopped members cost nothing once the queue
  is empty except the idle lanes of the tail (masked work).
* ``certify_many(problems, ...) -> list[Certificate]``: ``certificate`` for
  every point, the dense Hessians and ``eigh`` vmapped in one program, the
  verdicts by the same code (``certify.decide``, which runs the
  second-order proof or the descent probe member by member); above
  ``dense_max_params``, ``extreme_eigs_many``: Lanczos runs of blocks of
  members stepped together, their Hessian-vector products one vmapped call.
* ``run_lanes``, ``queued_lane``, ``advance_lane``, ``starting_points``: the
  lane queue and lane state shared with the matrix-free Newton-MR program
  (``lminima.batch_newton_mr``).
* ``refine_and_certify_many``: both, the certificate's spectrum taken from
  the ``eigh`` the refinement does at its end point (no second program);
  ``refine_and_certify_groups``: the same over mixed shapes, one program per
  ``group_by_shape`` group (what a sweep calls).

Results equal the sequential ones up to float64 roundoff (members never
interact; only the summation order of batched kernels differs): same stop
reasons and, on converged members, the same refined losses
(tests/test_batch_refine.py). A program compiles once per (objective,
shapes, population size, ``max_iters``, ``lanes``); mixed shapes or data
raise a one-line ``ValueError``.

Example:
  >>> import jax, numpy as np
  >>> from lminima.models import MLP
  >>> model = MLP(d_in=2, widths=(3,), d_out=1, activation="tanh")
  >>> x = np.random.default_rng(0).standard_normal((8, 2))
  >>> problems = [Problem.for_module(model, model.init_params(
  ...     jax.random.PRNGKey(s)), x, np.sin(x[:, :1])) for s in range(3)]
  >>> results = refine_many(problems, max_iters=50)
  >>> certs = certify_many([p.at(r.params) for p, r in zip(problems,
  ...                                                       results)])
  >>> len(results), all(c.n_params == 13 for c in certs)
  (3, True)
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from lminima import EXACT_DTYPE
from lminima import certify
from lminima import lanczos
from lminima import problem as problem_lib
from lminima import refinement
from lminima.problem import Problem
from lminima.refinement import RefineResult
from lminima.tolerances import DEFAULT, Tolerances

# Dense P x P float64 matrices alive per lane (Hessian, eigenvectors, LAPACK
# workspace): with the memory budget, the number of lanes.
_MATRICES_PER_MEMBER = 4
# Default lanes, 8 up to _VMAP_MAX_PARAMS parameters, else 1: on a 2-core CPU
# small members gain ~3x a pass from sharing the loop's per-op overhead, but
# at P ~ 200 vmapped Hessians over lanes are slower than one lane.
_DEFAULT_LANES, _VMAP_MAX_PARAMS = 8, 128
# certify.certificate's Lanczos step cap (lanczos_extreme_eigs' default), and
# members per Lanczos program call: at P ~ 5e4 on a 2-core CPU, 2-4 lanes
# were 1.1x one member at a time, 16 lanes 0.8x (BUILD_NOTES.md).
_LANCZOS_MAX_ITERS, _LANCZOS_LANES = 300, 4


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
          "per group of batch_refine.group_by_shape(problems)")
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


def refine_many(problems: Sequence[Problem], *, tol: Tolerances | None = None,
                max_iters: int = 100, escape_ratio: float | None = 5.0,
                lm_max_params: int = 5000, max_trials: int = 40,
                lanes: int | None = None) -> list[RefineResult]:
  """``refinement.refine(p, method="lm")`` for every ``p``, in one program.

  Args:
    problems: members of one shape (``shape_key``): same objective, data and
      parameter shapes, any points.
    tol, max_iters, escape_ratio, lm_max_params: as in ``refine``.
    max_trials: LM trial steps per iteration before ``"stalled"`` (the
      sequential path's 40).
    lanes: members iterated together (vmapped); a lane whose member stops
      takes the next one. Default 8 up to 128 parameters, else 1 (faster
      on CPU, see ``_VMAP_MAX_PARAMS``); fewer if the problems'
      ``memory_budget_bytes`` cannot hold ~4 P x P matrices a lane.

  Returns:
    One ``RefineResult`` per problem, in order, with ``method="lm"``.

  Raises:
    ValueError: on mixed shapes or data, bad tolerances, or n_params >
      lm_max_params.
  """
  return _run_population(
      problems, tol=tol, max_iters=max_iters,
      escape_ratio=escape_ratio, lm_max_params=lm_max_params,
      max_trials=max_trials, lanes=lanes)[0]


def refine_and_certify_many(
    problems: Sequence[Problem], *, tol: Tolerances | None = None,
    max_iters: int = 100, escape_ratio: float | None = 5.0,
    lm_max_params: int = 5000, lanes: int | None = None,
    dense_max_params: int = 3000
    ) -> tuple[list[RefineResult], list[certify.Certificate]]:
  """``refine_many`` and the certificates of its end points, one program.

  The refinement program diagonalizes H at every point it visits, the end
  point included, so the dense certificate's spectrum costs no second
  program (``certify.decide`` then runs the proof or the probe member by
  member); above ``dense_max_params`` the certificates come from
  ``certify_many``. Arguments as in ``refine_many`` and ``certify_many``.
  """
  certify.check_dense_max_params(dense_max_params,
                                 caller="refine_and_certify_many")
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
        end, _spectrum(lam, res) if finite else None, "dense", tol,
        lm_max_params))
  return results, certs


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


# ---------------------------------------------------------------------------
# Certificates.


def _spectrum(lam: np.ndarray, residuals: np.ndarray) -> tuple:
  """``certify.decide``'s spectrum from a dense ``eigh``."""
  return (lam, float(lam[0]), float(lam[-1]), float(residuals[0]),
          float(residuals[1]))


@functools.partial(jax.jit, static_argnames=("objective",))
def _dense_spectra(objective, flats, like, x, y):
  """Ascending eigenvalues and extreme residuals of each member's Hessian."""
  def one(flat):
    matrix = problem_lib._dense_hessian(  # pylint: disable=protected-access
        objective, flat, like, x, y)
    lam, vecs = jnp.linalg.eigh(matrix)
    return lam, certify.end_residuals(matrix, lam, vecs, xp=jnp)
  return jax.vmap(one)(flats)


def certify_many(problems: Sequence[Problem], *,
                 tol: Tolerances | None = None, dense_max_params: int = 3000,
                 lm_max_params: int = 5000, key: jax.Array | None = None
                 ) -> list[certify.Certificate]:
  """``certify.certificate(p, ...)`` for every ``p``, spectra batched.

  Loss, gradient norm and kinks are each problem's own (cached) values, so
  those fields equal the sequential ones exactly; the spectra come from one
  vmapped ``eigh`` program (equal up to roundoff), and the proof or the
  descent probe runs member by member (``certify.decide``). Members with a
  non-finite L or g get no spectrum, as in ``certificate``.

  Args:
    problems: members of one shape (``shape_key``), at their points.
    tol, dense_max_params, lm_max_params, key: as in
      ``certificate``; above ``dense_max_params`` the extreme eigenpairs come
      from Lanczos runs of all members in one program
      (``lanczos.extreme_eigs_of_population``, same start vector and
      tolerance as ``certificate``).

  Returns:
    One ``certify.Certificate`` per problem, in order.

  Raises:
    ValueError: on mixed shapes or data, or bad tolerances.
  """
  first = check_population(problems, "certify_many")
  certify.check_dense_max_params(dense_max_params, caller="certify_many")
  tol = DEFAULT if tol is None else tol
  dense = first.n_params <= dense_max_params and (
      8 * first.n_params ** 2 <= first.memory_budget_bytes)
  rows = [i for i, p in enumerate(problems)
          if math.isfinite(p.loss) and math.isfinite(p.grad_norm)]
  if not dense:
    spectra = {i: certify.lanczos_spectrum(e)
               for i, e in zip(rows, extreme_eigs_many(
                   [problems[i] for i in rows], key=key) if rows else [])}
  else:
    spectra = {}
    flats = np.stack([np.asarray(problems[i].flat) for i in rows]) if rows \
        else np.zeros((0, first.n_params))
    for start, real, block in blocks(len(rows), 3 * 8 * first.n_params ** 2,
                                     first.memory_budget_bytes):
      with refinement.serial_blas():
        lams, residuals = (np.asarray(a) for a in _dense_spectra(
            first.objective, jnp.asarray(flats[block], EXACT_DTYPE),
            first.params, first.x, first.y))
      for j in range(real):
        spectra[rows[start + j]] = _spectrum(lams[j], residuals[j])
  return [certify.decide(p, spectra.get(i), "dense" if dense else "lanczos",
                         tol, lm_max_params)
          for i, p in enumerate(problems)]


@functools.lru_cache(maxsize=64)
def _members_hvp(objective) -> Callable[..., jax.Array]:
  """``(flats, like, x, y, vectors) ->`` row i of ``vectors`` times member
  i's Hessian, one vmapped call; one function object per objective, so the
  Lanczos program compiles once per shape."""
  return jax.vmap(problem_lib._flat_hvp(objective),  # pylint: disable=protected-access
                  in_axes=(0, None, None, None, 0))


def extreme_eigs_many(problems: Sequence[Problem], *, tol: float = 1e-8,
                      max_iters: int = _LANCZOS_MAX_ITERS,
                      key: jax.Array | None = None,
                      lanes: int = _LANCZOS_LANES
                      ) -> list[lanczos.ExtremeEigs]:
  """``lanczos.lanczos_extreme_eigs`` of every member's Hessian, batched.

  ``lanes`` members at a time step together in one compiled program
  (``lanczos.extreme_eigs_of_population``; their Hessian-vector products are
  one vmapped call), the last block padded so that every call compiles once.
  Each run starts from the vector ``certify.certificate`` draws with ``key``
  (default ``PRNGKey(0)``) and stops on its own residual test, ``tol``
  relative to ``max |lambda|``. A block runs until its slowest member
  converges and reorthogonalizes when any member needs it, so more lanes
  are not faster on a CPU (BUILD_NOTES.md); fewer if the problems'
  ``memory_budget_bytes`` cannot hold their Lanczos bases.

  Args:
    problems: members of one shape (``shape_key``), at their points.
    tol, max_iters, key: as in ``lanczos.lanczos_extreme_eigs``.
    lanes: members per program call.

  Returns:
    One ``lanczos.ExtremeEigs`` per problem, in order.

  Raises:
    ValueError: on mixed shapes or data, or bad arguments.
  """
  first = check_population(problems, "extreme_eigs_many")
  if not (tol > 0 and max_iters >= 1 and lanes >= 1):
    raise ValueError(f"extreme_eigs_many: need tol > 0, max_iters >= 1 and "
                     f"lanes >= 1, got tol={tol}, max_iters={max_iters}, "
                     f"lanes={lanes}")
  flats = jnp.asarray(np.stack([np.asarray(p.flat) for p in problems]),
                      EXACT_DTYPE)
  v0 = jax.random.normal(jax.random.PRNGKey(0) if key is None else key,
                         (first.n_params,), EXACT_DTYPE)
  per_member = (max_iters + 8) * 8 * first.n_params  # basis and vectors
  found = []
  for _, real, block in blocks(len(problems), per_member, min(
      first.memory_budget_bytes, lanes * per_member)):
    operator = jax.tree_util.Partial(_members_hvp(first.objective),
                                     flats[block], first.params, first.x,
                                     first.y)
    found += lanczos.extreme_eigs_of_population(
        operator, jnp.tile(v0, (len(block), 1)), max_iters=max_iters,
        tol=tol)[:real]
  return found


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
