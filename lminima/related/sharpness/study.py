"""The small-batch vs large-batch experiment (Keskar et al. 2017).

``run(config)`` is the experiment behind ``scripts/sharpness.py``: it trains
``num_seeds`` seeds per batch size in one population each, measures train
loss, test accuracy, the epsilon-sharpness and the Hessian measures
(``lminima.related.sharpness.measures``) of every member, and writes
``results.jsonl``, ``interpolation.json``, ``interpolation.png`` and
``report.md`` (``lminima.related.sharpness.report``). Its settings are
``lminima.related.sharpness.config.get_config`` (docs/theory.md#sharpness).

Example (the held-out split of the smoke config):
  >>> from lminima import configs
  >>> config = configs.load("sharpness", "smoke")
  >>> train_set, test_set = load_split(config)
  >>> train_set.m, test_set.m, train_set.provenance["part"]
  (200, 100, 'train')
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Callable

import jax
import ml_collections
import numpy as np

from lminima import data as data_lib
from lminima.core import provenance
from lminima.core.problem import Problem
from lminima.related.sharpness.measures import (epsilon_sharpness,
                                                hessian_measures)
from lminima.related.sharpness.measures import random_subspace
from lminima.study import records
from lminima.train import driver
from lminima.train import population
from lminima.related.sharpness.config import (FIGURE_FILE, INTERPOLATION_FILE,
                                      REPORT_FILE, RESULTS_FILE, ROW_FIELDS,
                                      batch_sizes, validate_config)
from lminima.related.sharpness.report import plot_interpolation, write_report


def load_split(config: ml_collections.ConfigDict
               ) -> tuple[data_lib.Dataset, data_lib.Dataset]:
  """Disjoint train and test sets from one stratified sample.

  ``load(dataset, n=n_train + n_test, seed=data_seed, standardize=False)``
  is split per class in sample order (the test set takes the last images of
  each class, class shares proportional). Pixels stay in [0, 1]:
  per-feature standardization on the training set would blow up test pixels
  that are rarely nonzero in training.
  """
  full = data_lib.load(config.dataset, n=config.n_train + config.n_test,
                       seed=config.data_seed, standardize=False)
  labels = np.argmax(full.y, axis=1)
  counts = np.bincount(labels, minlength=full.d_y)
  quotas = config.n_test * counts // full.m
  for c in np.argsort(-(config.n_test * counts % full.m), kind="stable"):
    if quotas.sum() == config.n_test:
      break
    quotas[c] += 1
  test = np.zeros(full.m, bool)
  for c in range(full.d_y):
    members = np.flatnonzero(labels == c)
    test[members[len(members) - quotas[c]:]] = True
  split = dict(full.provenance, n_train=int((~test).sum()),
               n_test=int(test.sum()),
               split="per class, last images of the sample held out")
  return (data_lib.Dataset(full.x[~test], full.y[~test],
                           dict(split, part="train")),
          data_lib.Dataset(full.x[test], full.y[test],
                           dict(split, part="test")))


def _accuracy(yhat: np.ndarray, y: np.ndarray) -> float:
  return float(np.mean(np.argmax(yhat, axis=1) == np.argmax(y, axis=1)))


def analyse_member(result: population.MemberResult, train_set: data_lib.Dataset,
                   test_set: data_lib.Dataset,
                   config: ml_collections.ConfigDict,
                   subspace: np.ndarray | None) -> dict[str, Any]:
  """Float64 measurements at a trained member's point: row fields."""
  problem = Problem.for_module(result.model, result.params, train_set.x,
                               train_set.y,
                               normalization=config.normalization)
  test_problem = Problem.for_module(result.model, result.params, test_set.x,
                                    test_set.y,
                                    normalization=config.normalization)
  seed = result.member.seed
  key = jax.random.PRNGKey(seed)
  sharp = []
  for eps in config.eps:
    for matrix in ((None, subspace) if subspace is not None else (None,)):
      sharp.append(epsilon_sharpness(
          problem, float(eps), subspace=matrix, key=key,
          method=config.sharpness_method,
          max_iters=config.sharpness_iters).to_dict())
  measures = hessian_measures(problem, key=key,
                              lanczos_iters=config.lanczos_iters,
                              trace_matvecs=config.trace_matvecs)
  return {
      "train_loss": problem.loss, "grad_norm": problem.grad_norm,
      "train_accuracy": _accuracy(problem.yhat(), train_set.y),
      "test_loss": test_problem.loss,
      "test_accuracy": _accuracy(test_problem.yhat(), test_set.y),
      "sharpness": sharp, **dataclasses.asdict(measures)}


def _interpolate(sb: population.MemberResult, lb: population.MemberResult,
                 train_set: data_lib.Dataset, test_set: data_lib.Dataset,
                 config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Loss and accuracy along f(alpha x_LB + (1 - alpha) x_SB), alpha in
  [-1, 2]."""
  problems = {name: Problem.for_module(sb.model, sb.params, ds.x, ds.y,
                                       normalization=config.normalization)
              for name, ds in (("train", train_set), ("test", test_set))}
  x_sb = problems["train"].flat
  x_lb = problems["train"].at(lb.params).flat
  alphas = np.linspace(-1.0, 2.0, config.interp_points)
  curves = {f"{name}_{what}": [] for name in problems
            for what in ("loss", "accuracy")}
  for alpha in alphas:
    flat = alpha * x_lb + (1 - alpha) * x_sb
    for name, problem in problems.items():
      at = problem.at(problem.unravel(flat))
      curves[f"{name}_loss"].append(at.loss)
      curves[f"{name}_accuracy"].append(_accuracy(at.yhat(), problem.y))
  return {"alpha": alphas.tolist(), "seed_small": sb.member.seed,
          "seed_large": lb.member.seed, **curves}


def run(config: ml_collections.ConfigDict, workdir: str | None = None,
        log: Callable[[str], None] = print) -> list[dict[str, Any]]:
  """Runs the small-batch vs large-batch experiment; returns its rows.

  Trains ``num_seeds`` members per batch size (one population each), appends
  one row per member to ``<workdir>/results.jsonl`` (schema ``ROW_FIELDS``),
  and writes ``interpolation.json``, ``interpolation.png`` (seed pairs
  trained at both sizes; the first pair where neither diverged) and
  ``report.md``.

  Args:
    config: ``lminima.related.sharpness.config.get_config()`` or a config
      file's (``lminima/configs/sharpness.py``).
    workdir: where results go; None: ``config.workdir``.
    log: where one-line progress messages go.

  Raises:
    ValueError: for a bad config; ``records.WorkdirError`` when the workdir
      already holds results.
  """
  config = records.with_workdir(config, workdir)
  validate_config(config)
  workdir = config.workdir
  os.makedirs(workdir, exist_ok=True)
  results_path = os.path.join(workdir, RESULTS_FILE)
  if records.read_rows(results_path):
    raise records.WorkdirError(f"{results_path} already holds results; use a "
                               f"new --workdir (or delete that one)")
  settings = {k: v for k, v in config.to_dict().items()
              if k not in ("workdir", "progress")}
  with open(os.path.join(workdir, records.CONFIG_FILE), "w") as f:
    json.dump(config.to_dict(), f, indent=1, default=str)
  train_set, test_set = load_split(config)
  log(f"data: {config.dataset}, {train_set.m} train / {test_set.m} test")
  sizes = batch_sizes(config)
  results: dict[int, list[population.MemberResult]] = {}
  subspace = None
  for role, size in zip(("small", "large"), sizes):
    steps = config.epochs * (train_set.m // size)
    tconfig = population.TrainConfig(
        activation=config.activation, bias=config.bias,
        normalization=config.normalization, optimizer=config.optimizer,
        learning_rate=config.learning_rate, steps=steps,
        batch_size=size if size < train_set.m else None,
        chunk_steps=min(250, steps))
    members = [population.Member(config.depth, config.width, seed)
               for seed in range(config.num_seeds)]
    start = time.perf_counter()
    trained = driver.train_population(train_set, members, tconfig)
    log(f"batch {size}: trained {len(members)} seeds x {steps} steps in "
        f"{time.perf_counter() - start:.1f} s")
    results[size] = trained
    for result in trained:
      start = time.perf_counter()
      row = {
          "batch_size": size, "batch_role": role,
          "seed": result.member.seed, "dataset": train_set.provenance,
          "depth": config.depth, "width": config.width,
          "activation": config.activation, "bias": config.bias,
          "normalization": config.normalization,
          "optimizer": {"name": config.optimizer,
                        "learning_rate": config.learning_rate,
                        "steps": steps, "batch_size": size},
          "epochs": config.epochs, "n_params": result.model.n_params,
          "loss": records.json_float(result.loss),
          "diverged": bool(result.diverged), "steps": int(result.steps),
          "train_wall_s": float(result.wall_s),
          "versions": provenance.library_versions(), "config": settings,
      }
      if not result.diverged:
        if subspace is None and config.subspace_dim:
          subspace = random_subspace(
              result.model.n_params, config.subspace_dim,
              jax.random.PRNGKey(config.subspace_seed))
        row.update(analyse_member(result, train_set, test_set, config,
                                  subspace))
      row["analysis_wall_s"] = time.perf_counter() - start
      records.append_row(results_path, row, schema=ROW_FIELDS)
    log(f"batch {size}: measured in {results_path}")
  rows = records.read_rows(results_path)
  interpolation = None
  pairs = [(a, b) for a, b in zip(*results.values())
           if not (a.diverged or b.diverged)]
  if pairs:
    interpolation = _interpolate(*pairs[0], train_set, test_set, config)
    with open(os.path.join(workdir, INTERPOLATION_FILE), "w") as f:
      json.dump(interpolation, f)
    plot_interpolation(interpolation, sizes,
                       os.path.join(workdir, FIGURE_FILE))
  else:
    log("every seed diverged at one batch size: no interpolation figure")
  write_report(rows, config, os.path.join(workdir, REPORT_FILE),
               interpolation)
  return rows
