"""The sweep's remaining time, from a model of its work calibrated as it runs.

A member costs its share of training (one population per depth) and its
analysis (refinement, certificate, continuation, theory), which dominates.
The model:

* analysis of a member of ``P`` parameters takes ``a + k * t_iter(P)``:
  ``t_iter(P)`` the measured seconds of the dense work of one
  Levenberg-Marquardt iteration at that size (the Hessian and its ``eigh``,
  ``iteration_seconds``, timed once per shape before the sweep starts),
  ``k`` the effective number of iterations per member and ``a`` the fixed
  cost of a member (theory record, saving, Python), both fitted by least
  squares to the members done, pulled toward the priors ``k0`` (by default
  ``ITERATIONS_PRIOR``; the sweep passes half its iteration budget,
  ``budget_iterations``) and ``OVERHEAD_PRIOR_S`` with the weight of
  ``PRIOR_MEMBERS`` members, so that the first, often quick, members do not
  set them alone (members that continue toward infinity take hundreds of
  iterations, converged ones tens);
* training a depth takes the training planner's predicted seconds
  (``lminima.train.driver.predicted_seconds``, from the calibrated cost model),
  scaled by the ratio of measured to predicted seconds of the depths
  trained so far; without a cost model, its members times the training
  seconds per member measured so far (``TRAIN_PRIOR_S`` before the first
  depth);
* the report takes ``REPORT_S``.

``Eta.remaining_s()`` is the sum over the work left. tests/test_eta.py
bounds its error on a small study.

Example:
  >>> eta = Eta({(1, 2): 0.01, (1, 4): 0.03}, [(1, 2), (1, 4)])
  >>> # 1 s to train, 2 x 0.1 s overhead, 150 iterations of 0.04 s, report
  >>> round(eta.remaining_s(), 6)
  8.2
  >>> eta.trained(1, n_members=2, seconds=0.4)
  >>> eta.analysed((1, 2), seconds=0.5)
  >>> 1.0 < eta.remaining_s() < 8.2
  True
"""

from __future__ import annotations

import timeit
from typing import Sequence

import jax
import ml_collections
import numpy as np

from lminima import data as data_lib
from lminima.core.problem import Problem
from lminima.core.tolerances import Tolerances
from lminima.critical.refinement import serial_blas
from lminima.study import config as study_config
from lminima.train import population

ITERATIONS_PRIOR = 150.0
"""Effective LM iterations per member before any member is measured, when
no budget is given."""

OVERHEAD_PRIOR_S = 0.1
"""Fixed seconds of a member's analysis before any member is measured."""

PRIOR_MEMBERS = 4.0
"""The weight of the priors, in members of average size."""

TRAIN_PRIOR_S = 0.5
"""Training seconds per member before any depth is measured."""

REPORT_S = 1.0
"""Seconds of the report (claims, trend tests, figures) at the end."""

# Matrix-free members: one iteration ~ this many Hessian-vector products.
_HVPS_PER_ITERATION = 100

# Timings of the dense work per shape; their minimum is used.
_TIMINGS = 5


def budget_iterations(refine_max_iters: int, fate_iters: int,
                      tol: Tolerances) -> float:
  """Half of the LM iterations a member may take (refinement and
  continuation), plus the descent probe's: the prior of ``k``."""
  return (0.5 * (refine_max_iters + fate_iters)
          + tol.probe_starts * tol.probe_iters)


def iteration_seconds(problem: Problem, lm_max_params: int = 5000) -> float:
  """Seconds of one LM iteration's dense work at the problem's size: a
  Hessian and its ``eigh`` (the least of ``_TIMINGS`` timings after a first
  call, which compiles); above ``lm_max_params`` (where refinement is matrix
  free) or over the memory budget, ``_HVPS_PER_ITERATION`` Hessian-vector products (a rough
  Newton-MR iteration)."""
  flat = problem.flat
  if (problem.n_params <= lm_max_params
      and 8 * problem.n_params ** 2 <= problem.memory_budget_bytes):
    def work():
      with serial_blas():
        np.linalg.eigh(problem.dense_hessian_at(flat))
    repeats = 1
  else:
    hvp = problem.hvp_operator()

    def work():
      np.asarray(hvp(flat))
    repeats = _HVPS_PER_ITERATION
  work()
  # The least of a few timings: a busy core (another job, a test worker)
  # only ever adds time, and one inflated sample would inflate every
  # estimate of the sweep.
  return repeats * min(timeit.repeat(work, number=1, repeat=_TIMINGS))


def iteration_seconds_by_cell(config: ml_collections.ConfigDict,
                              data: data_lib.Dataset,
                              members: Sequence[population.Member]
                              ) -> dict[tuple[int, int], float]:
  """``iteration_seconds`` of each (depth, width) of ``members``, at
  the member model's initial point (the dense work does not depend on it)."""
  tconfig = study_config.train_config(config)
  seconds = {}
  for member in members:
    cell = (member.depth, member.width)
    if cell not in seconds:
      model = population.member_model(data.d_x, data.d_y, member, tconfig)
      seconds[cell] = iteration_seconds(Problem.for_module(
          model, model.init_params(jax.random.PRNGKey(0)), data.x, data.y,
          normalization=config.normalization,
          memory_budget_bytes=config.memory_budget_bytes))
  return seconds


class Eta:
  """Remaining seconds of a sweep (module docstring).

  Args:
    iteration_s: ``t_iter`` of each (depth, width).
    todo: the (depth, width) of every member still to record (one entry
      per member).
    training_s: the planner's predicted training seconds of each depth to
      train, or None (the per-member fallback).
    k0: the prior of the iterations per member.
    a0: the prior of a member's fixed seconds.
  """

  def __init__(self, iteration_s: dict[tuple[int, int], float],
               todo: Sequence[tuple[int, int]],
               training_s: dict[int, float] | None = None,
               k0: float = ITERATIONS_PRIOR, a0: float = OVERHEAD_PRIOR_S):
    self._k0, self._a0 = float(k0), float(a0)
    self._training_s = training_s
    self._predicted_done = 0.0
    self._iteration_s = dict(iteration_s)
    self._typical_t = float(np.mean([iteration_s[c] for c in todo])
                            ) if todo else 0.0
    self._left = list(todo)
    self._untrained = {d for d, _ in todo}
    self._done: list[tuple[float, float]] = []  # (t_iter, seconds)
    self._train_s = self._trained = 0.0

  def trained(self, depth: int, n_members: int, seconds: float) -> None:
    """Records a depth's training (``n_members`` trained in ``seconds``)."""
    self._untrained.discard(depth)
    self._train_s += seconds
    self._trained += n_members
    if self._training_s is not None:
      self._predicted_done += self._training_s[depth]

  def analysed(self, cell: tuple[int, int], seconds: float) -> None:
    """Records one member's analysis."""
    self._left.remove(cell)
    self._done.append((self._iteration_s[cell], seconds))

  def member_model(self) -> tuple[float, float]:
    """``(a, k)``: the fit of ``seconds = a + k t_iter`` (module docstring):
    least squares with the ridge ``w (a - a0)^2 + w t^2 (k - k0)^2``, ``w``
    = ``PRIOR_MEMBERS``, ``t`` the typical ``t_iter``."""
    w, t = PRIOR_MEMBERS, self._typical_t
    ts = np.array([d[0] for d in self._done] + [0.0])
    ss = np.array([d[1] for d in self._done] + [0.0])
    gram = np.array([[len(self._done) + w, ts.sum()],
                     [ts.sum(), (ts ** 2).sum() + w * t * t]])
    rhs = np.array([ss.sum() + w * self._a0,
                    (ss * ts).sum() + w * t * t * self._k0])
    a, k = np.linalg.lstsq(gram, rhs, rcond=None)[0]  # singular if t = 0
    return float(max(a, 0.0)), float(max(k, 0.0))

  def for_more(self, iteration_s: dict[tuple[int, int], float],
               todo: Sequence[tuple[int, int]]) -> Eta:
    """The estimate of more members (a coverage round of the sweep): their
    analysis with the ``(a, k)`` fitted so far as priors, their training at
    the seconds per member measured so far."""
    a, k = self.member_model()
    more = Eta(iteration_s, todo, k0=k, a0=a)
    more._train_s, more._trained = self._train_s, self._trained
    return more

  def remaining_s(self) -> float:
    if not self._left:
      return 0.0
    a, k = self.member_model()
    if self._training_s is not None:
      scale = (self._train_s / self._predicted_done if self._predicted_done
               else 1.0)
      training = scale * sum(self._training_s[d] for d in self._untrained)
    else:
      per_member = (self._train_s / self._trained if self._trained
                    else TRAIN_PRIOR_S)
      training = per_member * sum(d in self._untrained
                                  for d, _ in self._left)
    return (REPORT_S + training + a * len(self._left)
            + k * sum(self._iteration_s[c] for c in self._left))
