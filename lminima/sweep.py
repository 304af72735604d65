"""The depth x width x seed grid: train, refine, certify, explain, record.

``run(config)`` is the library function behind ``scripts/depth_width.py``:

1. load the data set (``lminima.data.load``);
2. for each depth, train all missing (width, seed) members as one population
   (``lminima.train.train_population``, float32);
3. for each trained member, build its float64 ``lminima.Problem`` on the same
   training data, refine it to a critical point (``lminima.refine``), certify
   it (``lminima.certificate``), save the refined parameters, and compute the
   theory quantities and classical optima (``lminima.theory.theory_record``);
4. append the member's row (``lminima.records``) at once (flushed), so a killed
   run loses at most the member in progress; a rerun with the same workdir skips
   the members already recorded;
5. write ``summary.csv`` and ``loss_vs_width.png`` from all recorded rows.

A workdir belongs to one configuration: rerunning with a different one (other
than the grid itself, which may grow) is refused rather than mixing results.

Example (a tiny grid, a few seconds on a laptop CPU):
  >>> config = get_config()
  >>> config.depths, config.widths, config.num_seeds = (1,), (4,), 1
  >>> config.workdir = "/tmp/lminima_example"
  >>> config.steps, config.progress = 200, False
  >>> rows = run(config, log=lambda _: None)
  >>> len(rows), rows[0]["depth"], rows[0]["verdict"] in records.VERDICTS
  (1, 1, True)
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Any, Callable

import ml_collections
import numpy as np
import tqdm

from lminima import certify
from lminima import data as data_lib
from lminima import losses
from lminima import models
from lminima import population
from lminima import provenance
from lminima import records
from lminima import refinement
from lminima import report
from lminima import theory
from lminima import train
from lminima.problem import Problem

# Fields that may change between runs sharing a workdir: the grid can grow, and
# where results go or how loudly they are reported does not change a number.
_NOT_IN_FINGERPRINT = ("depths", "widths", "num_seeds", "workdir", "progress")


WorkdirError = records.WorkdirError

def get_config() -> ml_collections.ConfigDict:
  """Default sweep: synthetic data, depths 1-3, widths 2-16, 3 seeds.

  Finishes in under a minute on a 2-core CPU, compilation included.
  """
  defaults = population.TrainConfig()
  config = ml_collections.ConfigDict()
  config.dataset = "synthetic"
  # Source options for lminima.data.load (e.g. n, classes, grayscale).
  config.data_options = ml_collections.ConfigDict(
      {"m": 100, "d_x": 5, "d_y": 2, "seed": 0}, type_safe=False)
  config.data_dir = ""
  config.depths = (1, 2, 3)
  config.widths = (2, 4, 8, 16)
  config.num_seeds = 3
  for name in ("activation", "bias", "normalization", "optimizer",
               "learning_rate", "steps"):
    config[name] = getattr(defaults, name)
  config.batch_size = 0  # 0: full batch.
  config.width_strategy = "auto"
  config.certify = True
  config.refine_method = "auto"  # lm (dense) up to 5000 params, else newton_mr
  config.refine_grad_tol = 1e-10
  config.refine_max_iters = 200
  config.dense_max_params = 3000
  config.theory = True
  config.memory_budget_bytes = 2**30
  config.workdir = "runs/depth_width"
  config.progress = True
  return config


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError with a one-line message for an unusable config."""
  for name in ("depths", "widths"):
    values = tuple(config[name])
    if not values:
      raise ValueError(f"--{name} is empty; give at least one value")
    if any(int(v) != v or v <= 0 for v in values):
      raise ValueError(f"--{name} must be positive integers, got {values}")
  if config.num_seeds <= 0:
    raise ValueError(f"--num_seeds must be positive, got {config.num_seeds}")
  if config.steps <= 0:
    raise ValueError(f"--steps must be positive, got {config.steps}")
  if config.batch_size < 0:
    raise ValueError(f"--batch_size must be >= 0 (0 = full batch), "
                     f"got {config.batch_size}")
  if not config.learning_rate > 0:
    raise ValueError(
        f"--learning_rate must be positive, got {config.learning_rate}")
  models.get_activation(config.activation)
  losses.loss_scale(config.normalization, 1)
  if config.width_strategy not in ("auto", "per_width", "masked"):
    raise ValueError(f"--width_strategy must be auto, per_width or masked, "
                     f"got {config.width_strategy!r}")
  if config.refine_max_iters < 0:
    raise ValueError(f"--refine_max_iters must be >= 0, got "
                     f"{config.refine_max_iters}")
  if not config.workdir:
    raise ValueError("--workdir is empty")


def load_data(config: ml_collections.ConfigDict) -> data_lib.Dataset:
  options = dict(config.data_options)
  if config.data_dir:
    options["data_dir"] = config.data_dir
  return data_lib.load(config.dataset, **options)


def train_config(config: ml_collections.ConfigDict
                 ) -> population.TrainConfig:
  return population.TrainConfig(
      activation=config.activation, bias=config.bias,
      normalization=config.normalization, optimizer=config.optimizer,
      learning_rate=config.learning_rate, steps=config.steps,
      batch_size=config.batch_size or None)


def config_fingerprint(config: ml_collections.ConfigDict) -> str:
  """Hash of everything that changes a member's numbers."""
  fields = {k: v for k, v in config.to_dict().items()
            if k not in _NOT_IN_FINGERPRINT}
  text = json.dumps(fields, sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def member_row(result: population.MemberResult, data: data_lib.Dataset,
               config: ml_collections.ConfigDict,
               fingerprint: str) -> dict[str, Any]:
  """The end-of-training part of a results.jsonl row."""
  member = result.member
  return {
      "depth": member.depth, "width": member.width, "seed": member.seed,
      "dataset": data.provenance, "activation": config.activation,
      "bias": config.bias, "normalization": config.normalization,
      "optimizer": {"name": config.optimizer,
                    "learning_rate": config.learning_rate,
                    "steps": config.steps,
                    "batch_size": config.batch_size or None,
                    "width_strategy": config.width_strategy},
      "n_params": result.model.n_params,
      "loss": records.json_float(result.loss),
      "grad_norm": records.json_float(result.grad_norm),
      "diverged": bool(result.diverged), "steps": int(result.steps),
      "train_wall_s": float(result.wall_s),
      "config_fingerprint": fingerprint,
      "versions": provenance.library_versions(),
  }


def analyse_member(result: population.MemberResult, data: data_lib.Dataset,
                   config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Refines, certifies and explains one trained member; returns row fields.

  Saves the refined float64 parameters (``records.params_path``).
  """
  fields: dict[str, Any] = {}
  if result.diverged:
    return fields
  problem = Problem.for_module(
      result.model, result.params, data.x, data.y,
      normalization=config.normalization,
      memory_budget_bytes=config.memory_budget_bytes)
  if config.certify:
    refined = refinement.refine(
        problem, method=config.refine_method,
        grad_tol=config.refine_grad_tol, max_iters=config.refine_max_iters)
    problem = problem.at(refined.params)
    cert = certify.certificate(problem,
                               dense_max_params=config.dense_max_params)
    member = result.member
    path = records.params_path(config.workdir, member.depth, member.width,
                               member.seed)
    np.savez(path, **models.params_to_arrays(problem.params))
    fields.update(
        loss_refined=refined.loss, grad_norm_refined=refined.grad_norm,
        refine_iters=refined.iters, refine_stop_reason=refined.stop_reason,
        refine_method=refined.method,
        param_norm_start=refined.param_norm_start,
        param_norm_refined=refined.param_norm,
        params_file=os.path.relpath(path, config.workdir),
        cert_method=cert.method)
    # The certificate's loss, gradient norm and size are the refined ones.
    fields.update({k: v for k, v in cert.to_dict().items()
                   if k not in ("loss", "grad_norm", "n_params", "method")})
  if config.theory:
    fields.update(theory.theory_record(problem, seed=result.member.seed))
  return fields


def run(config: ml_collections.ConfigDict,
        log: Callable[[str], None] = print) -> list[dict[str, Any]]:
  """Runs the sweep described by ``config``; returns all rows of the workdir.

  Args:
    config: see ``get_config``.
    log: where one-line progress messages go.

  Returns:
    Every row of ``results.jsonl`` (earlier runs' rows included), in file order.
  """
  validate_config(config)
  workdir = config.workdir
  os.makedirs(os.path.join(workdir, records.PARAMS_DIR), exist_ok=True)
  results_path = os.path.join(workdir, records.RESULTS_FILE)
  fingerprint = config_fingerprint(config)
  existing = records.read_rows(results_path)
  foreign = {r.get("config_fingerprint") for r in existing} - {fingerprint}
  if foreign:
    raise WorkdirError(
        f"{results_path} holds results of a different configuration; use a "
        f"new --workdir (or delete that one) to run this one")
  done = {(r["depth"], r["width"], r["seed"]) for r in existing}

  data = load_data(config)
  tconfig = train_config(config)
  log(f"data: {data.provenance} (m={data.m}, d_x={data.d_x}, d_y={data.d_y})")
  with open(os.path.join(workdir, records.CONFIG_FILE), "w") as f:
    json.dump(config.to_dict(), f, indent=1, default=str)

  for depth in config.depths:
    members = [population.Member(depth=depth, width=w, seed=s)
               for w in config.widths for s in range(config.num_seeds)
               if (depth, w, s) not in done]
    if not members:
      log(f"depth {depth}: all {len(config.widths) * config.num_seeds} "
          f"members already recorded, skipped")
      continue
    log(f"depth {depth}: training {len(members)} members "
        f"(widths {tuple(config.widths)}, {config.num_seeds} seeds)")
    start = time.perf_counter()
    with tqdm.tqdm(total=config.steps, desc=f"train depth {depth}",
                   unit="step", disable=not config.progress) as bar:
      def progress(done_steps, total_steps, bar=bar):
        bar.total = total_steps
        bar.update(done_steps - bar.n)
      trained = train.train_population(
          data, members, tconfig, width_strategy=config.width_strategy,
          progress=progress)
    train_s = time.perf_counter() - start
    for result in tqdm.tqdm(trained, desc=f"certify depth {depth}",
                            unit="member", disable=not config.progress):
      start = time.perf_counter()
      row = member_row(result, data, config, fingerprint)
      row.update(analyse_member(result, data, config))
      row["wall_s"] = float(result.wall_s + time.perf_counter() - start)
      records.append_row(results_path, row)
    log(f"depth {depth}: trained in {train_s:.1f} s, rows in {results_path}")

  rows = records.read_rows(results_path)
  summary = report.summarize(rows)
  report.write_summary_csv(summary,
                           os.path.join(workdir, records.SUMMARY_FILE))
  report.plot_loss_vs_width(
      rows, summary, os.path.join(workdir, records.FIGURE_FILE),
      title=f"{config.dataset}, {config.activation}, median over "
            f"{config.num_seeds} seeds")
  return rows
