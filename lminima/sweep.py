"""The depth x width x seed grid: train, refine, certify, explain, record.

``run(config)`` is the library function behind ``scripts/depth_width.py``:

1. load the data set (``lminima.data.load``);
2. for each depth, train all missing (width, seed) members as one population
   (``lminima.train.train_population``, float32);
3. for each trained member, in float64 on the same training data: refine to a
   critical point (``lminima.certify.refine``), certify it
   (``lminima.certify.certificate``), save the refined parameters as
   ``params/depth{d}_width{w}_seed{s}.npz``, and compute the theory quantities
   and classical optima (``lminima.theory.theory_record``);
4. append the member's row to ``results.jsonl`` at once (flushed), so a killed
   run loses at most the member in progress; a rerun with the same workdir skips
   the members already recorded;
5. write ``summary.csv`` and ``loss_vs_width.png`` from all recorded rows.

A workdir belongs to one configuration: rerunning with a different one (other
than the grid itself, which may grow) is refused rather than mixing results.

Example (a tiny grid, a few seconds on a laptop CPU):
  >>> config = get_config()
  >>> config.depths, config.widths, config.num_seeds = (1,), (4,), 1
  >>> config.workdir = "/tmp/lminima_example"
  >>> rows = run(config, log=lambda _: None)  # doctest: +SKIP
  >>> len(rows), rows[0]["depth"]  # doctest: +SKIP
  (1, 1)
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
import tqdm

from lminima import certify
from lminima import data as data_lib
from lminima import losses
from lminima import models
from lminima import provenance
from lminima import report
from lminima import theory
from lminima import train

RESULTS_FILE = "results.jsonl"
SUMMARY_FILE = "summary.csv"
FIGURE_FILE = "loss_vs_width.png"
PARAMS_DIR = "params"

# Fields that may change between runs sharing a workdir: the grid can grow, and
# where results go or how loudly they are reported does not change a number.
_NOT_IN_FINGERPRINT = ("depths", "widths", "num_seeds", "workdir", "progress")


class WorkdirError(ValueError):
  """The workdir holds results of another configuration."""


def get_config() -> ml_collections.ConfigDict:
  """Default sweep: synthetic data, depths 1-3, widths 2-16, 3 seeds.

  Finishes in under a minute on a 2-core CPU, compilation included.
  """
  config = ml_collections.ConfigDict()
  config.dataset = "synthetic"
  # Source options for lminima.data.load (e.g. n, classes, grayscale).
  config.data_options = ml_collections.ConfigDict(
      {"m": 100, "d_x": 5, "d_y": 2, "seed": 0}, type_safe=False)
  config.data_dir = ""
  config.depths = (1, 2, 3)
  config.widths = (2, 4, 8, 16)
  config.num_seeds = 3
  config.activation = "tanh"
  config.bias = True
  config.normalization = "mean"
  config.optimizer = "adam"
  config.learning_rate = 0.01
  config.steps = 3000
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


def train_config(config: ml_collections.ConfigDict) -> train.TrainConfig:
  return train.TrainConfig(
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


def params_path(workdir: str, depth: int, width: int, seed: int) -> str:
  return os.path.join(workdir, PARAMS_DIR,
                      f"depth{depth}_width{width}_seed{seed}.npz")


def member_row(result: train.MemberResult, data: data_lib.Dataset,
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
      "loss": _json_float(result.loss),
      "grad_norm": _json_float(result.grad_norm),
      "diverged": bool(result.diverged), "steps": int(result.steps),
      "train_wall_s": float(result.wall_s),
      "config_fingerprint": fingerprint,
      "versions": provenance.library_versions(),
  }


def analyse_member(result: train.MemberResult, data: data_lib.Dataset,
                   config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Refines, certifies and explains one trained member; returns row fields.

  Saves the refined float64 parameters (layer names as keys) to the workdir.
  """
  fields: dict[str, Any] = {}
  if result.diverged:
    return fields
  model, params = result.model, result.params
  if config.certify:
    refined = certify.refine(
        model, params, data.x, data.y, normalization=config.normalization,
        method=config.refine_method, grad_tol=config.refine_grad_tol,
        max_iters=config.refine_max_iters)
    cert = certify.certificate(
        model, refined.params, data.x, data.y,
        normalization=config.normalization,
        dense_max_params=config.dense_max_params)
    params = refined.params
    member = result.member
    path = params_path(config.workdir, member.depth, member.width, member.seed)
    np.savez(path, **models.params_to_arrays(params))
    fields.update(
        loss_refined=_json_float(refined.loss),
        grad_norm_refined=_json_float(refined.grad_norm),
        refine_iters=refined.iters, refine_stop_reason=refined.stop_reason,
        refine_method=refined.method,
        param_norm_start=refined.param_norm_start,
        param_norm_refined=refined.param_norm,
        lambda_min=cert.lambda_min, lambda_max=cert.lambda_max,
        index=cert.index, n_flat=cert.n_flat, verdict=cert.verdict,
        cert_method=cert.method, certificate=cert.to_dict(),
        params_file=os.path.relpath(path, config.workdir))
  if config.theory:
    fields.update(theory.theory_record(
        model, params, data.x, data.y, normalization=config.normalization,
        seed=result.member.seed,
        memory_budget_bytes=config.memory_budget_bytes))
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
  os.makedirs(os.path.join(workdir, PARAMS_DIR), exist_ok=True)
  results_path = os.path.join(workdir, RESULTS_FILE)
  fingerprint = config_fingerprint(config)
  existing = report.read_results(results_path)
  foreign = {r.get("config_fingerprint") for r in existing} - {fingerprint}
  if foreign:
    raise WorkdirError(
        f"{results_path} holds results of a different configuration; use a "
        f"new --workdir (or delete that one) to run this one")
  done = {(r["depth"], r["width"], r["seed"]) for r in existing}

  data = load_data(config)
  tconfig = train_config(config)
  log(f"data: {data.provenance} (m={data.m}, d_x={data.d_x}, d_y={data.d_y})")
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump(config.to_dict(), f, indent=1, default=str)

  for depth in config.depths:
    members = [train.Member(depth=depth, width=w, seed=s)
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
      _append_row(results_path, row)
    log(f"depth {depth}: trained in {train_s:.1f} s, rows in {results_path}")

  rows = report.read_results(results_path)
  summary = report.summarize(rows)
  report.write_summary_csv(summary, os.path.join(workdir, SUMMARY_FILE))
  report.plot_loss_vs_width(
      rows, summary, os.path.join(workdir, FIGURE_FILE),
      title=f"{config.dataset}, {config.activation}, median over "
            f"{config.num_seeds} seeds")
  return rows


def load_member(workdir: str, depth: int, width: int, seed: int
                ) -> tuple[models.MLP, Any, data_lib.Dataset, dict[str, Any]]:
  """The refined member (depth, width, seed) of a finished sweep.

  Returns ``(model, params, data, row)``: the float64 refined parameters from
  ``params/``, and the training data rebuilt from the row's provenance.
  """
  rows = [r for r in report.read_results(os.path.join(workdir, RESULTS_FILE))
          if (r["depth"], r["width"], r["seed"]) == (depth, width, seed)]
  if not rows:
    raise WorkdirError(f"no member depth={depth} width={width} seed={seed} in "
                       f"{workdir}; run scripts/depth_width.py there first")
  row = rows[-1]
  if not row.get("params_file"):
    raise WorkdirError(f"member depth={depth} width={width} seed={seed} has no "
                       f"refined parameters (diverged, or run with "
                       f"--nocertify)")
  with np.load(os.path.join(workdir, row["params_file"])) as arrays:
    params = models.params_from_arrays(arrays)
  data = data_lib.load(**row["dataset"])
  model = models.MLP(data.d_x, (width,) * depth, data.d_y, row["activation"],
                     row["bias"])
  model.check_params(params)
  return model, params, data, row


def _append_row(path: str, row: dict[str, Any]) -> None:
  with open(path, "a") as f:
    f.write(json.dumps(row, default=_json_default) + "\n")
    f.flush()
    os.fsync(f.fileno())


def _json_float(value: Any) -> float | None:
  """NaN/inf become null: JSON has no spelling for them."""
  value = float(value)
  return value if np.isfinite(value) else None


def _json_default(value: Any) -> Any:
  if isinstance(value, (np.generic, jax.Array)):
    return value.item() if np.ndim(value) == 0 else np.asarray(value).tolist()
  raise TypeError(f"cannot store {type(value).__name__} in a result row")
