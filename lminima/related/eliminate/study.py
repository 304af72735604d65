"""The elimination experiment: plain vs augmented networks over seeds.

The experiment behind ``scripts/eliminate.py``. For every loss, width and
seed, ``run_member`` trains and refines a plain MLP and the same MLP
augmented by ``lminima.related.eliminate.augmented`` (one row per ``VARIANTS``
entry), certifies the refined points and, for augmented ones, records where the
eliminator went. ``run(config)`` does every member (resumably) into
``<workdir>/results.jsonl`` and writes ``report.md``
(``lminima.related.eliminate.report``);
docs/theory.md#eliminating-bad-local-minima.

Example:
  >>> from lminima import configs
  >>> config = configs.load("eliminate", "smoke")
  >>> validate_config(config)
  >>> config.widths, config.num_seeds, len(config_fingerprint(config))
  ((2,), 2, 16)
  >>> dataset = load_data(config, "cross_entropy")
  >>> dataset.y.shape, float(dataset.y.sum())
  ((30, 3), 30.0)
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from typing import Any, Callable

import jax
import ml_collections
import numpy as np

from lminima import data as data_lib
from lminima.core import models
from lminima.core import provenance
from lminima.core import tolerances as tolerances_lib
from lminima.critical import certify
from lminima.critical import refinement
from lminima.study import records
from lminima.related.eliminate.augmented import (Augmented, Penalty,
                                                 augment_params,
                                                 eliminator_grads,
                                                 eliminator_summary,
                                                 init_eliminator)
from lminima.related.eliminate.training import train
from lminima.core.problem import LOSSES, ModuleMethod, Objective, Problem
from lminima.related.eliminate.report import VARIANTS, write_report

REPORT_FILE = "report.md"

ROW_FIELDS = frozenset({
    # identity and provenance
    "loss_fn", "variant", "depth", "width", "seed", "activation", "lam",
    "n_params", "dataset", "config", "config_fingerprint", "versions",
    "wall_s",
    # training (float32; absent for augmented_from_plain)
    "loss", "diverged", "steps",
    # refinement (float64)
    "loss_start", "grad_norm_start", "loss_refined", "grad_norm_refined",
    "refine_iters", "refine_stop_reason", "param_norm_start",
    "param_norm_refined",
    # certificate of the refined point
    "verdict", "lambda_min", "lambda_max", "index", "n_flat", "grad_tol",
    "eig_tol", "proof", "probe_decrease", "tolerances",
    # augmented only: the eliminator at the refined point (eliminator_summary)
    "grad_a_start", "start_verdict", "a_abs_max", "a_bound", "b_min",
    "b_max", "w_norm", "exponent_max", "contribution_max", "fit_loss",
    "base_loss",
    # refinement continued without the escape stop
    "continue_iters", "loss_continued", "grad_norm_continued",
    "param_norm_continued", "stop_reason_continued", "a_abs_max_continued",
    "b_max_continued", "contribution_max_continued",
})
"""Every field an eliminate results.jsonl row may hold."""

# Fields that change no number: where results go and how loudly.
_NOT_IN_FINGERPRINT = ("workdir", "progress")


def get_config() -> ml_collections.ConfigDict:
  """The experiment's default settings (the config file
  ``lminima/configs/eliminate.py`` adds its variants).

  ``data`` are the options of ``lminima.data.synthetic`` without d_y: the
  squared loss fits ``d_y = 1`` targets, cross-entropy ``num_classes``
  classes, the argmax of ``num_classes`` synthetic targets drawn with noise
  ``ce_noise`` (so that the classes overlap).
  """
  config = ml_collections.ConfigDict()
  config.data = ml_collections.ConfigDict({"m": 30, "d_x": 2, "seed": 0})
  config.num_classes = 3
  config.ce_noise = 1.0
  config.losses = ("squared", "cross_entropy")
  config.depth = 1
  config.widths = (1, 2, 4, 8)
  config.num_seeds = 8
  config.activation = "tanh"
  config.normalization = "mean"
  config.lam = 0.1
  config.w_scale = 0.1
  config.steps = 2000
  config.learning_rate = 0.01
  config.refine_max_iters = 200
  config.escape_ratio = 5.0
  config.continue_iters = 300
  # Refinement's and the certificate's tolerances (lminima.core.tolerances).
  config.tolerances = tolerances_lib.DEFAULT.to_dict()
  config.workdir = "runs/eliminate"
  config.progress = True
  return config


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError with a one-line message for an unusable config."""
  widths = tuple(config.widths)
  if not widths or any(isinstance(w, bool) or int(w) != w or w <= 0
                       for w in widths):
    raise ValueError(f"--widths must be positive integers, got {widths}")
  losses_ = tuple(config.losses)
  if not losses_ or any(name not in LOSSES for name in losses_):
    raise ValueError(f"--losses must be among {sorted(LOSSES)}, got "
                     f"{losses_}")
  for name in ("m", "d_x"):
    if int(config.data[name]) <= 0:
      raise ValueError(f"--{name} must be positive, got {config.data[name]}")
  for name in ("num_seeds", "steps", "depth"):
    if int(config[name]) <= 0:
      raise ValueError(f"--{name} must be positive, got {config[name]}")
  for name in ("refine_max_iters", "continue_iters"):
    if int(config[name]) < 0:
      raise ValueError(f"--{name} must be >= 0, got {config[name]}")
  for name in ("lam", "learning_rate"):
    if not (math.isfinite(config[name]) and config[name] > 0):
      raise ValueError(f"--{name} must be positive, got {config[name]}")
  if not config.escape_ratio > 1:
    raise ValueError(f"--escape_ratio must be > 1, got {config.escape_ratio}")
  tolerances_lib.Tolerances(**config.tolerances)
  if config.num_classes < 2:
    raise ValueError(f"--num_classes must be >= 2, got {config.num_classes}")
  models.get_activation(config.activation)
  if config.normalization not in ("mean", "sum"):
    raise ValueError(f"--normalization must be mean or sum, got "
                     f"{config.normalization!r}")
  if not config.workdir:
    raise ValueError("--workdir is empty")


def config_fingerprint(config: ml_collections.ConfigDict) -> str:
  """Hash of everything that changes a number."""
  fields = {k: v for k, v in config.to_dict().items()
            if k not in _NOT_IN_FINGERPRINT}
  text = json.dumps(fields, sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_data(config: ml_collections.ConfigDict, loss_fn: str
              ) -> data_lib.Dataset:
  """The data of one loss: regression targets or one-hot classes."""
  options = dict(config.data)
  if loss_fn == "squared":
    return data_lib.synthetic(d_y=1, **options)
  raw = data_lib.synthetic(d_y=config.num_classes, noise=config.ce_noise,
                           **options)
  labels = np.argmax(raw.y, axis=1)
  provenance_ = dict(raw.provenance, targets="one_hot_argmax",
                     num_classes=int(config.num_classes))
  return data_lib.Dataset(x=raw.x, y=np.eye(config.num_classes)[labels],
                          provenance=provenance_)


def _refine_and_certify(problem: Problem, config: ml_collections.ConfigDict
                        ) -> tuple[Problem, dict[str, Any]]:
  """Refines (LM), certifies and continues; returns the refined problem and
  its row fields."""
  tol = tolerances_lib.Tolerances(**config.tolerances)
  result = refinement.refine(problem, method="lm", tol=tol,
                             max_iters=config.refine_max_iters,
                             escape_ratio=config.escape_ratio)
  refined = problem.at(result.params)
  cert = certify.certificate(refined, tol=tol)
  fields = {
      "loss_start": problem.loss, "grad_norm_start": problem.grad_norm,
      "loss_refined": result.loss, "grad_norm_refined": result.grad_norm,
      "refine_iters": result.iters, "refine_stop_reason": result.stop_reason,
      "param_norm_start": result.param_norm_start,
      "param_norm_refined": result.param_norm}
  fields.update({k: v for k, v in cert.to_dict().items() if k in (
      "verdict", "lambda_min", "lambda_max", "index", "n_flat", "grad_tol",
      "eig_tol", "proof", "probe_decrease", "tolerances")})
  augmented = isinstance(problem.objective.apply_fn, Augmented)
  if augmented and result.stop_reason != "non_finite":
    fields.update(eliminator_summary(refined))
  if config.continue_iters and result.stop_reason not in ("non_finite",
                                                          "grad_tol"):
    more = refinement.refine(refined, method="lm", tol=tol,
                             max_iters=config.continue_iters,
                             escape_ratio=None)
    fields.update(continue_iters=more.iters, loss_continued=more.loss,
                  grad_norm_continued=more.grad_norm,
                  param_norm_continued=more.param_norm,
                  stop_reason_continued=more.stop_reason)
    if augmented and more.stop_reason != "non_finite":
      later = eliminator_summary(refined.at(more.params))
      fields.update(a_abs_max_continued=later["a_abs_max"],
                    b_max_continued=later["b_max"],
                    contribution_max_continued=later["contribution_max"])
  return refined, fields


def run_member(loss_fn: str, width: int, seed: int, dataset: data_lib.Dataset,
               config: ml_collections.ConfigDict) -> list[dict[str, Any]]:
  """The three rows (``VARIANTS``) of one (loss, width, seed)."""
  model = models.MLP(dataset.d_x, (int(width),) * int(config.depth),
                     dataset.d_y, config.activation)
  base_apply = ModuleMethod(model)
  key = jax.random.PRNGKey(seed)
  base_init = model.init_params(key)
  eliminator = init_eliminator(jax.random.fold_in(key, 1), dataset.d_x,
                               dataset.d_y, w_scale=config.w_scale)
  penalty = Penalty(float(config.lam))
  plain_objective = Objective(base_apply, loss_fn, config.normalization)
  augmented_objective = Objective(Augmented(base_apply), loss_fn,
                                  config.normalization, penalty)
  common = {"loss_fn": loss_fn, "depth": int(config.depth),
            "width": int(width), "seed": int(seed),
            "activation": config.activation, "dataset": dataset.provenance,
            "config": config.to_dict(),
            "config_fingerprint": config_fingerprint(config),
            "versions": provenance.library_versions()}
  rows = []
  plain_refined = None
  plain_verdict = None
  for variant in VARIANTS:
    start = time.perf_counter()
    row = dict(common, variant=variant)
    if variant == "plain":
      objective, params, lam = plain_objective, base_init, None
    else:
      objective, lam = augmented_objective, float(config.lam)
      base = base_init if variant == "augmented" else plain_refined
      params = augment_params(base, eliminator)
    row["lam"] = lam
    row["n_params"] = int(sum(np.size(leaf) for leaf in
                              jax.tree_util.tree_leaves(params)))
    if variant == "augmented_from_plain":
      row["start_verdict"] = plain_verdict
      if plain_refined is None:  # the plain member diverged
        row["diverged"] = True
        rows.append(row)
        continue
    else:
      trained = train(objective, params, dataset.x, dataset.y,
                      steps=config.steps, learning_rate=config.learning_rate)
      row.update(loss=trained.loss, diverged=trained.diverged,
                 steps=int(config.steps))
      params = trained.params
    if not row.get("diverged", False):
      problem = Problem(objective.apply_fn, params, dataset.x, dataset.y,
                        loss=loss_fn, normalization=config.normalization,
                        penalty=objective.penalty)
      if variant == "augmented_from_plain":
        row["grad_a_start"] = float(np.max(np.abs(
            eliminator_grads(problem)[0])))
      refined, fields = _refine_and_certify(problem, config)
      row.update(fields)
      if variant == "plain":
        plain_refined, plain_verdict = refined.params, row["verdict"]
    row["wall_s"] = time.perf_counter() - start
    rows.append(row)
  return rows


def run(config: ml_collections.ConfigDict, workdir: str | None = None,
        log: Callable[[str], None] = print) -> list[dict[str, Any]]:
  """Runs the experiment; returns every row of the workdir, writes the report.

  Resumable: (loss, width, seed) members whose rows are all recorded are
  skipped; a workdir holding another configuration is refused
  (``records.WorkdirError``).

  Args:
    config: ``get_config()`` or a config file's (``lminima/configs/
      eliminate.py``).
    workdir: where results go; None: ``config.workdir``.
    log: where one-line progress messages go.
  """
  config = records.with_workdir(config, workdir)
  validate_config(config)
  workdir = config.workdir
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, records.RESULTS_FILE)
  fingerprint = config_fingerprint(config)
  existing = records.read_rows(path)
  if {r.get("config_fingerprint") for r in existing} - {fingerprint}:
    raise records.WorkdirError(
        f"{path} holds results of a different configuration; use a new "
        "--workdir (or delete that one)")
  recorded: dict[tuple, set[str]] = {}
  for r in existing:
    recorded.setdefault((r["loss_fn"], r["width"], r["seed"]),
                        set()).add(r["variant"])
  with open(os.path.join(workdir, records.CONFIG_FILE), "w") as f:
    json.dump(config.to_dict(), f, indent=1, default=str)
  for loss_fn in config.losses:
    dataset = load_data(config, loss_fn)
    for width in config.widths:
      for seed in range(config.num_seeds):
        if recorded.get((loss_fn, width, seed), set()) >= set(VARIANTS):
          continue
        start = time.perf_counter()
        for row in run_member(loss_fn, width, seed, dataset, config):
          records.append_row(path, row, schema=ROW_FIELDS)
        if config.progress:
          log(f"{loss_fn} width {width} seed {seed}: "
              f"{time.perf_counter() - start:.1f} s")
  rows = records.read_rows(path)
  write_report(rows, os.path.join(workdir, REPORT_FILE))
  return rows


# ---------------------------------------------------------------------------
# The report.
