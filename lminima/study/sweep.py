"""The depth x width x seed grid: train, refine, certify, explain, record.

``run(config, workdir)`` is the library function behind
``scripts/depth_width.py``:

1. validate the config (``study_config.validate_config``: one-line errors
   naming the field), take the workdir's lock (``records.lock_workdir``: a
   second process on the same workdir, or the same shard, is refused) and
   repair a torn last line of its results file
   (``records.repair_results_file``);
2. load the data set (``lminima.data.load``, or the ``data`` passed, e.g. a
   user's arrays from ``lminima.data.from_arrays``) and check what needs the
   data (batch size, the memory the grid needs:
   ``lminima.study.memory``) before any training;
3. for each depth with members still to record, train the depth's whole
   population, i.e. every (width, seed) of the grid at that depth, as one
   population (``lminima.train.driver.train_population``, float32), and keep the
   members still to record. Training the same population as an uninterrupted
   run, whatever was recorded before, is what makes a resumed or sharded run
   give the same numbers: float32 results of a padded program depend on who
   else is in it (the rounding of its batched kernels), and the plan of
   programs depends on the population (and the cost model, which is stored
   in the workdir, ``records.COST_MODEL_FILE``, so that every process plans
   alike);
4. for each kept member, build its float64 ``lminima.Problem`` on the same
   training data, refine it to a critical point (``lminima.refine``), certify
   it (``lminima.certificate``), save the refined parameters, and compute the
   theory quantities and classical optima
   (``lminima.theory.quantities.theory_record``). A member whose refinement,
   certificate or theory raises is recorded with the fields computed so far and
   its ``error``; the sweep goes on;
5. append the member's row (``lminima.study.records``) at once (flushed), so a
   killed run loses at most the member in progress; a rerun with the same
   workdir skips the members already recorded;
6. with ``min_certified`` set, run coverage rounds
   (``lminima.study.coverage``): the cells short of certified minima get
   more seeds, trained and recorded as in 3-5, round after round;
7. write the report (``lminima.study.report.write_report``: report.md with the
   claims table, summary.csv, claims.json and the figures) from the rows of
   every results file of the workdir.

Shards. ``config.shard = "i/N"`` runs the members k = i, i + N, ... of the
grid listed in (depth, width, seed) order, appending to
``results.shard-i-of-N.jsonl``; shards may run at once (on other hosts
sharing the workdir) and the summary merges every results file. Each shard
trains the whole population of every depth it has members in (training is
the cheap part; refinement and certificates, the dominant cost, are split).

A workdir belongs to one configuration: rerunning with a different one (other
than the grid itself, which may grow, the shard, the progress display and
the memory limit) is refused rather than mixing results. A member's numbers
are those of an uninterrupted run of the configuration (grid included) that
recorded it.

Example (a tiny grid):
  >>> config = get_config()
  >>> config.depths, config.widths, config.num_seeds = (1,), (4,), 1
  >>> import tempfile
  >>> config.workdir = tempfile.mkdtemp()
  >>> config.steps, config.progress = 200, False
  >>> rows = run(config, log=lambda _: None)
  >>> len(rows), rows[0]["depth"], rows[0]["outcome"] in claims.OUTCOMES
  (1, 1, True)
"""

from __future__ import annotations

import collections
import json
import os
import time
from typing import Any, Callable, Sequence

import ml_collections
import numpy as np

from lminima import data as data_lib
from lminima.core import files
from lminima.core import models
from lminima.core import provenance
from lminima.core.problem import Problem
from lminima.critical.outcomes import decide_member
from lminima.study import claims
from lminima.study import config as study_config
from lminima.study.coverage import coverage_round
from lminima.study import eta as eta_lib
from lminima.study.progress import Progress
from lminima.study import records
from lminima.study import report
from lminima.theory import quantities
from lminima.train import driver
from lminima.train import population
# The configuration lives in lminima.study.config; its public names are the
# sweep's.
from lminima.study.config import (ConfigError, DATA_FIELDS, check_against_data,
                                  config_fingerprint, get_config, grid,
                                  load_data, parse_shard, process_shard,
                                  shard_members, train_config,
                                  validate_config)

WorkdirError = records.WorkdirError

__all__ = ["ConfigError", "WorkdirError", "analyse_member",
           "check_against_data", "config_fingerprint", "get_config", "grid",
           "load_data", "member_row", "parse_shard", "process_shard", "run",
           "shard_members", "train_config", "validate_config"]


def member_row(result: population.MemberResult, data: data_lib.Dataset,
               config: ml_collections.ConfigDict,
               fingerprint: str) -> dict[str, Any]:
  """The end-of-training part of a results.jsonl row."""
  member = result.member
  return {
      "depth": member.depth, "width": member.width, "seed": member.seed,
      "dataset": data.provenance, "activation": config.activation,
      "bias": config.bias, "skip": config.skip,
      "normalization": config.normalization,
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
                   config: ml_collections.ConfigDict,
                   fields: dict[str, Any] | None = None) -> dict[str, Any]:
  """Refines, certifies and explains one trained member; returns row fields.

  Saves the refined float64 parameters (``records.params_path``). The fields
  are added to ``fields`` (a new dict by default) as they are computed, so a
  caller that catches an exception keeps those computed before it.
  """
  fields = {} if fields is None else fields
  if result.diverged:
    return fields
  problem = Problem.for_module(
      result.model, result.params, data.x, data.y,
      normalization=config.normalization,
      memory_budget_bytes=config.memory_budget_bytes)
  tol = study_config.tolerances(config)
  fields.update(tolerances=tol.to_dict(),
                loss_reference=problem.reference_loss)
  if config.certify:
    decision = decide_member(
        problem, tol=tol,
        method=config.refine_method, max_iters=config.refine_max_iters,
        fate_iters=config.fate_iters,
        dense_max_params=config.dense_max_params)
    fields.update(decision.to_row())
    problem = problem.at(decision.params)
    fields.update(loss_refined=problem.loss,
                  grad_norm_refined=problem.grad_norm,
                  param_norm_refined=float(np.linalg.norm(problem.flat)))
    member = result.member
    path = records.params_path(config.workdir, member.depth, member.width,
                               member.seed)
    np.savez(path, **models.params_to_arrays(problem.params))
    fields["params_file"] = os.path.relpath(path, config.workdir)
  if config.theory:
    fields.update(quantities.theory_record(problem, seed=result.member.seed))
  return fields


def _error_text(error: BaseException, limit: int = 500) -> str:
  text = " ".join(f"{type(error).__name__}: {error}".split())
  return text if len(text) <= limit else text[:limit - 3] + "..."


def run(config: ml_collections.ConfigDict, workdir: str | None = None,
        log: Callable[[str], None] = print,
        data: data_lib.Dataset | None = None,
        on_member: Callable[[int, float], None] | None = None
        ) -> list[dict[str, Any]]:
  """Runs the sweep described by ``config``; returns all rows of the workdir.

  Args:
    config: see ``get_config``.
    workdir: where results go; None: ``config.workdir``.
    log: where one-line progress messages go.
    data: the training set, e.g. a user's arrays
      (``lminima.data.from_arrays``); None loads ``config.dataset``. Given
      data replace the config's data fields (dataset, data_options,
      data_dir), and their provenance enters the workdir's fingerprint.
    on_member: called after each member is recorded with the number of
      members recorded in this run and the estimated seconds left
      (``lminima.study.eta``); with it, or with ``config.progress``, the sweep
      first times one LM iteration per (depth, width).

  Returns:
    Every row of the workdir's results files (earlier runs' and other
    shards' rows included), in (depth, width, seed) order.

  Raises:
    ConfigError: a bad config value (before anything runs).
    WorkdirError: the workdir cannot be written, another process runs it,
      or it holds another configuration's results.
    data.DataError: the data cannot be loaded.
  """
  config = records.with_workdir(config, workdir)
  validate_config(config)
  if data is not None and not isinstance(data, data_lib.Dataset):
    raise TypeError(f"data must be a lminima.data.Dataset (e.g. from "
                    f"lminima.data.from_arrays), got {type(data).__name__}")
  shard = parse_shard(config.shard)
  workdir = config.workdir
  try:
    os.makedirs(os.path.join(workdir, records.PARAMS_DIR), exist_ok=True)
  except OSError as e:
    raise WorkdirError(f"workdir {workdir} cannot be written "
                       f"({type(e).__name__}: {e.strerror or e})") from None
  with records.lock_workdir(workdir, shard):
    return _run_locked(config, log, data, shard, on_member)


def _run_locked(config: ml_collections.ConfigDict,
                log: Callable[[str], None], data: data_lib.Dataset | None,
                shard: tuple[int, int],
                on_member: Callable[[int, float], None] | None
                ) -> list[dict[str, Any]]:
  workdir = config.workdir
  results_path = records.results_path(workdir, shard)
  records.check_writable(workdir)
  records.repair_results_file(results_path)
  given_data = data is not None
  fingerprint = config_fingerprint(config, data)
  existing = records.read_workdir_rows(workdir)
  foreign = {r.get("config_fingerprint") for r in existing} - {fingerprint}
  if foreign:
    raise WorkdirError(
        f"{workdir} holds results of a different configuration; use a "
        f"new --workdir (or delete that one) to run this one")
  if data is None:
    data = load_data(config)
  check_against_data(config, data)
  done = {records.member_key(r) for r in existing}
  tconfig = train_config(config)
  log(f"data: {data.provenance} (m={data.m}, d_x={data.d_x}, d_y={data.d_y})")
  saved = config.to_dict()
  if given_data:
    saved = {k: v for k, v in saved.items() if k not in DATA_FIELDS}
    saved["data"] = data.provenance

  def write_config(path):
    with open(path, "w") as f:
      json.dump(saved, f, indent=1, default=str)
  files.write_atomic(os.path.join(workdir, records.CONFIG_FILE),
                       write_config)

  mine = shard_members(config)
  todo = [m for m in mine
          if (m.depth, m.width, m.seed) not in done]
  if shard[1] > 1:
    log(f"shard {shard[0]}/{shard[1]}: {len(mine)} of "
        f"{len(grid(config))} members, rows in {results_path}")
  cost_model = (records.workdir_cost_model(workdir, log)
                if todo and config.width_strategy == "auto" else None)
  rows_by_cell = collections.defaultdict(list)
  for row in existing:
    rows_by_cell[(row["depth"], row["width"])].append(row)
  left_in_cell = collections.Counter((m.depth, m.width) for m in todo)
  estimate = None
  if todo and config.certify and (config.progress or on_member):
    training_s = None if cost_model is None else {
        depth: driver.predicted_seconds(
            data, [m for m in grid(config) if m.depth == depth], tconfig,
            width_strategy=config.width_strategy, cost_model=cost_model,
            workers=config.train_workers or None)
        for depth in {m.depth for m in todo}}
    estimate = eta_lib.Eta(
        eta_lib.iteration_seconds_by_cell(config, data, todo),
        [(m.depth, m.width) for m in todo], training_s,
        k0=eta_lib.budget_iterations(config.refine_max_iters,
                                     config.fate_iters,
                                     study_config.tolerances(config)))
  progress = Progress(len(todo), config.progress, log, estimate)
  recorded = 0

  def record(depth: int, members: list[population.Member],
             missing: list[population.Member], what: str) -> None:
    """Trains the population ``members`` of one depth and records the
    ``missing`` ones (rows appended as each finishes)."""
    nonlocal recorded
    progress.say(f"depth {depth}: training {len(members)} members "
                 f"({what}) for {len(missing)} to record")
    start = time.perf_counter()
    base = progress.base

    def on_train(done_steps, total_steps):
      progress.set(base + len(missing) * done_steps / max(total_steps, 1),
                   f"train depth {depth}")
    trained = driver.train_population(
        data, members, tconfig, width_strategy=config.width_strategy,
        progress=on_train, cost_model=cost_model,
        workers=config.train_workers or None)
    progress.base += len(missing)
    train_s = time.perf_counter() - start
    if progress.estimate is not None:
      progress.estimate.trained(depth, len(missing), train_s)
    wanted = {(m.depth, m.width, m.seed) for m in missing}
    for result in trained:
      member = result.member
      if (member.depth, member.width, member.seed) not in wanted:
        continue
      progress.set(progress.base, f"certify depth {depth} width "
                   f"{member.width} seed {member.seed}")
      start = time.perf_counter()
      row = member_row(result, data, config, fingerprint)
      fields: dict[str, Any] = {}
      try:
        analyse_member(result, data, config, fields)
      except Exception as error:  # pylint: disable=broad-except
        fields["error"] = _error_text(error)
        progress.say(f"warning: member depth {member.depth} width "
                     f"{member.width} seed {member.seed} failed: "
                     f"{fields['error']}")
      row.update(fields)
      analysis_s = time.perf_counter() - start
      row["wall_s"] = float(result.wall_s + analysis_s)
      records.append_row(results_path, row)
      if progress.estimate is not None:
        progress.estimate.analysed((member.depth, member.width), analysis_s)
      recorded += 1
      if on_member is not None:
        on_member(recorded, progress.estimate.remaining_s()
                  if progress.estimate else 0.0)
      progress.base += 1
      progress.set(progress.base)
      cell = (member.depth, member.width)
      rows_by_cell[cell].append(json.loads(records.encode_row(row)))
      left_in_cell[cell] -= 1
      if not left_in_cell[cell]:
        progress.say(report.cell_line(*cell, rows_by_cell[cell]))
    progress.say(f"depth {depth}: trained in {train_s:.1f} s, rows in "
                 f"{results_path}")

  try:
    for depth in config.depths:
      missing = [m for m in todo if m.depth == depth]
      if not missing:
        already = sum(m.depth == depth for m in mine)
        if already:
          progress.say(f"depth {depth}: all {already} members already "
                       "recorded, skipped")
        continue
      # The population of an uninterrupted run: the whole grid at this depth.
      record(depth, [m for m in grid(config) if m.depth == depth], missing,
             f"widths {tuple(config.widths)}, {config.num_seeds} seeds")
    round_index = 1
    while True:
      rows = records.read_workdir_rows(workdir)
      members = coverage_round(config, round_index, rows)
      if not members:
        break
      done = {records.member_key(r) for r in rows}
      missing = [m for m in members
                 if (m.depth, m.width, m.seed) not in done]
      cells = sorted({(m.depth, m.width) for m in members})
      seeds = sorted({m.seed for m in members})
      progress.say(f"coverage round {round_index}: {len(cells)} cells with "
                   f"fewer than {config.min_certified} certified minima "
                   f"get seeds {seeds[0]}-{seeds[-1]}")
      if missing:
        left_in_cell.update((m.depth, m.width) for m in missing)
        progress.extend(missing, config, data)
      for depth in sorted({m.depth for m in missing}):
        record(depth, [m for m in members if m.depth == depth],
               [m for m in missing if m.depth == depth],
               f"coverage round {round_index}, {len(seeds)} seeds")
      round_index += 1
  finally:
    progress.close()

  rows = records.read_workdir_rows(workdir)
  _totals(config, rows, log)
  if rows:
    written = report.write_report(
        workdir, title=f"{data.provenance.get('label', config.dataset)}, "
        f"{config.activation}")
    if not any(p.endswith(".png") for p in written):
      log(f"warning: no member finished training, so no figures "
          f"({records.FIGURE_FILE} not written)")
    log(f"report: {os.path.join(workdir, report.REPORT_FILE)}")
  return rows


def _totals(config: ml_collections.ConfigDict,
            rows: Sequence[dict[str, Any]], log: Callable[[str], None]
            ) -> None:
  """Logs the grid's totals (and the coverage rounds' members), with a
  warning when members diverged or failed, and says when all of them
  diverged."""
  keys = {(m.depth, m.width, m.seed) for m in grid(config)}
  cells = {(d, w) for d, w, _ in keys}
  extra = [r for r in rows if records.member_key(r) not in keys
           and (r["depth"], r["width"]) in cells
           and r["seed"] < config.max_members and config.min_certified]
  if extra:
    log(f"coverage: {len(extra)} more members in "
        f"{len({(r['depth'], r['width']) for r in extra})} cells short of "
        f"{config.min_certified} certified minima")
  rows = [r for r in rows if records.member_key(r) in keys]
  counts = collections.Counter(map(claims.outcome, rows))
  diverged, errors = counts["diverged"], counts["failed"]
  parts = [f"{counts[o]} {o}" for o in claims.OUTCOMES if counts[o]]
  log(f"grid: {len(rows)} of {len(keys)} members recorded"
      f"{': ' + ', '.join(parts) if parts else ''}")
  if rows and diverged == len(rows):
    log(f"warning: all {len(rows)} members diverged (optimizer "
        f"{config.optimizer}, learning_rate {config.learning_rate}); lower "
        "--learning_rate")
  elif diverged:
    log(f"warning: {diverged} of {len(rows)} members diverged")
  if errors:
    log(f"warning: {errors} members failed; their rows hold the error")
