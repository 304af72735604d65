"""Elimination of bad local minima (Kawaguchi & Kaelbling 2020).

A model transform and an objective transform, for any model ``f(theta; x)``
with outputs k = 1..d_y and any loss l(yhat, y) convex and differentiable in
the output (the squared loss, softmax cross-entropy). The augmented model adds
to every output unit one neuron fed from the input,

    f~_k(theta~; x) = f_k(theta; x) + a_k exp(w_k . x + b_k),
    theta~ = (theta, a, w, b),   a, b in R^{d_y},   w = [w_1 .. w_{d_y}] (d_x, d_y),

and the augmented objective adds a penalty on a (lam > 0):

    L~(theta~) = loss(f~(theta~; X), Y) + lam/2 ||a||^2.

With g_ik = d loss / d yhat_ik and e_ik = exp(w_k . x_i + b_k) > 0,

    dL~/da_k = sum_i g_ik e_ik + lam a_k,     dL~/db_k = a_k sum_i g_ik e_ik,

so at EVERY point ``dL~/db_k = a_k (dL~/da_k - lam a_k)``; solving for a_k,

    |a_k| <= |dL~/da_k| / lam + sqrt(|dL~/db_k| / lam)      (``a_bound``),

and at a critical point a = 0. At a local minimum, in addition, perturbing
(a_k, w_k) shows sum_i g_ik e_ik p(x_i) = 0 for every polynomial p, hence
g = 0 on distinct inputs: every local minimum attains the per-sample minimum
of the loss (zero residual for the squared loss), so it is a global minimum of
the original objective. The converse reading matters in practice: where no
parameters attain that minimum (a network that cannot interpolate its data,
cross-entropy with one-hot targets), L~ has no local minimum at all: L~
keeps decreasing along b_k -> inf, a_k -> 0 with a_k e^{b_k} fixed (the fit
unchanged, the penalty -> 0), and bad minima move to infinity
(docs/theory.md#eliminating-bad-local-minima).

Parameters of the augmented model: ``{"base": <the base model's parameters,
e.g. flax variables>, "eliminator": {"a": (d_y,), "w": (d_x, d_y), "b":
(d_y,)}}``. Inputs must be flat, shape (m, d_x). ``init_eliminator`` starts
at a = 0, so the augmented model equals the base there.

Overflow: exp(w . x + b) overflows to inf above 709.78 in float64 (88.72 in
float32). Nothing is clipped (that would change the objective); an overflowed
loss or gradient stops ``lminima.refine`` with ``"non_finite"`` and makes a
certificate ``not_critical``, and ``eliminator_summary`` reports the largest
exponent. Escapes along b -> inf reach the limit only after b ~ 700.

The module also holds the experiment behind ``scripts/eliminate.py``
(``get_config``, ``run``, ``write_report``): plain and augmented networks over
seeds and widths, refined, certified and compared.

Example:
  >>> import jax, numpy as np
  >>> import lminima
  >>> from lminima.models import MLP
  >>> x = np.random.default_rng(0).standard_normal((8, 2))
  >>> y = np.sin(x[:, :1])
  >>> model = MLP(d_in=2, widths=(2,), d_out=1)
  >>> problem = augmented_problem(model, model.init_params(
  ...     jax.random.PRNGKey(0)), x, y, lam=0.1, key=jax.random.PRNGKey(1))
  >>> base = lminima.Problem.for_module(model, problem.params["base"], x, y)
  >>> bool(abs(problem.loss - base.loss) < 1e-15)  # a = 0 at the start
  True
  >>> record = eliminator_summary(problem)
  >>> record["a_abs_max"], bool(record["a_bound"] >= 0)
  (0.0, True)
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import time
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from lminima import TRAIN_DTYPE
from lminima import certify
from lminima import data as data_lib
from lminima import models
from lminima import provenance
from lminima import records
from lminima import refinement
from lminima.problem import LOSSES, ModuleMethod, Objective, Problem

ApplyFn = Callable[[Any, jax.Array], jax.Array]

BASE, ELIMINATOR = "base", "eliminator"
"""Keys of the augmented parameters."""


# ---------------------------------------------------------------------------
# The transforms.


def eliminator_output(eliminator: Any, x: jax.Array) -> jax.Array:
  """``a * exp(x @ w + b)``, shape (m, d_y): the added neurons' outputs.

  Raises:
    ValueError: if ``x`` is not (m, d_x) with d_x the rows of ``w``.
  """
  w = eliminator["w"]
  if x.ndim != 2 or x.shape[1] != w.shape[0]:
    raise ValueError(f"the eliminator needs flat inputs (m, {w.shape[0]}), "
                     f"got shape {x.shape}; flatten x first")
  return eliminator["a"] * jnp.exp(x @ w + eliminator["b"])


@dataclasses.dataclass(frozen=True)
class Augmented:
  """The augmented model ``(params, x) -> base(params["base"], x) + a *
  exp(x @ w + b)`` (module docstring).

  Hashable when ``base`` is (a ``ModuleMethod`` of a flax module, a function),
  so it can key ``Problem``'s compiled pieces.

  Attributes:
    base: ``(base_params, x) -> yhat`` of shape (m, d_y).
  """
  base: ApplyFn

  @classmethod
  def for_module(cls, module: nn.Module, method: str | None = None
                 ) -> Augmented:
    """The augmented model of a flax module (``module.apply`` as the base)."""
    return cls(ModuleMethod(module, method))

  def __call__(self, params: Any, x: jax.Array) -> jax.Array:
    return (self.base(params[BASE], x)
            + eliminator_output(params[ELIMINATOR], x))


@dataclasses.dataclass(frozen=True)
class Penalty:
  """``params -> lam/2 ||a||^2`` on the eliminator's a (hashable).

  Example:
    >>> float(Penalty(0.5)({"eliminator": {"a": jnp.array([2.0])}}))
    1.0
  """
  lam: float

  def __post_init__(self):
    if not (isinstance(self.lam, (int, float)) and math.isfinite(self.lam)
            and self.lam > 0):
      raise ValueError(f"lam must be a positive finite number, got "
                       f"{self.lam!r}")

  def __call__(self, params: Any) -> jax.Array:
    return 0.5 * self.lam * jnp.sum(jnp.square(params[ELIMINATOR]["a"]))


def init_eliminator(key: jax.Array, d_in: int, d_out: int, *,
                    w_scale: float = 0.1, dtype=TRAIN_DTYPE) -> dict[str, Any]:
  """a = 0, b = 0, ``w_ij ~ N(0, w_scale^2 / d_in)``.

  With a = 0 the augmented model equals its base.
  """
  if int(d_in) <= 0 or int(d_out) <= 0:
    raise ValueError(f"d_in and d_out must be positive, got {d_in}, {d_out}")
  if not w_scale >= 0:
    raise ValueError(f"w_scale must be >= 0, got {w_scale}")
  w = w_scale / np.sqrt(d_in) * jax.random.normal(key, (d_in, d_out), dtype)
  return {"a": jnp.zeros((d_out,), dtype), "b": jnp.zeros((d_out,), dtype),
          "w": w}


def augment_params(base_params: Any, eliminator: dict[str, Any]
                   ) -> dict[str, Any]:
  """The augmented parameters ``{"base": ..., "eliminator": ...}``."""
  return {BASE: base_params, ELIMINATOR: dict(eliminator)}


def augmented_problem(base: nn.Module | ApplyFn, base_params: Any, x: Any,
                      y: Any, *, lam: float, key: jax.Array | None = None,
                      eliminator: dict[str, Any] | None = None,
                      w_scale: float = 0.1, loss: str = "squared",
                      normalization: str = "mean", **kwargs: Any) -> Problem:
  """The float64 ``Problem`` of L~ = loss(f~) + lam/2 ||a||^2.

  Args:
    base: a flax module (its ``apply`` is the base) or ``(params, x) -> yhat``.
    base_params: the base model's parameters (flax variables for a module).
    x: flat inputs (m, d_x).
    y: targets (m, d_y).
    lam: the penalty weight, > 0.
    key: PRNG key of ``init_eliminator`` (default ``PRNGKey(0)``); ignored
      when ``eliminator`` is given.
    eliminator: ``{"a", "w", "b"}`` to start from instead.
    w_scale: ``init_eliminator``'s scale of w.
    loss: ``"squared"`` or ``"cross_entropy"``.
    normalization: ``"mean"`` or ``"sum"``.
    **kwargs: passed to ``Problem``.

  Raises:
    ValueError: one line, for non-flat x, a bad lam, or eliminator shapes that
      do not match (d_x, d_y).
  """
  penalty = Penalty(lam)
  x = np.asarray(x, np.float64)
  if x.ndim != 2:
    raise ValueError(f"augmented_problem: x must be flat, shape (m, d_x), got "
                     f"{x.shape}; reshape it to (m, -1)")
  d_out = np.shape(y)[1] if np.ndim(y) == 2 else None
  if d_out is None:
    raise ValueError(f"augmented_problem: y must be (m, d_y), got shape "
                     f"{np.shape(y)}")
  if eliminator is None:
    eliminator = init_eliminator(jax.random.PRNGKey(0) if key is None else key,
                                 x.shape[1], d_out, w_scale=w_scale)
  want = {"a": (d_out,), "b": (d_out,), "w": (x.shape[1], d_out)}
  got = {k: tuple(np.shape(v)) for k, v in dict(eliminator).items()}
  if got != want:
    raise ValueError(f"augmented_problem: eliminator shapes {got}, expected "
                     f"{want} for x {x.shape} and y {np.shape(y)}")
  apply_fn = (Augmented.for_module(base) if isinstance(base, nn.Module)
              else Augmented(base))
  return Problem(apply_fn, augment_params(base_params, eliminator), x, y,
                 normalization=normalization, loss=loss, penalty=penalty,
                 **kwargs)


def _check_augmented(problem: Problem) -> float:
  """The problem's lam; ValueError unless it is an augmented objective."""
  objective = problem.objective
  if not (isinstance(objective.apply_fn, Augmented)
          and isinstance(objective.penalty, Penalty)):
    raise ValueError("not an augmented problem: build it with "
                     "lminima.eliminate.augmented_problem")
  return objective.penalty.lam


def eliminator_grads(problem: Problem) -> tuple[np.ndarray, np.ndarray]:
  """``(dL~/da, dL~/db)`` at the problem's point, each of shape (d_y,)."""
  _check_augmented(problem)
  grads = problem.unravel(jnp.asarray(problem.grad))[ELIMINATOR]
  return np.asarray(grads["a"]), np.asarray(grads["b"])


def a_bound(problem: Problem) -> np.ndarray:
  """Per output unit, ``|dL~/da_k| / lam + sqrt(|dL~/db_k| / lam)``.

  An upper bound on ``|a_k|`` at every point (from ``lam a_k^2 = a_k dL~/da_k
  - dL~/db_k``; module docstring), 0 at a critical point.
  """
  lam = _check_augmented(problem)
  grad_a, grad_b = eliminator_grads(problem)
  return np.abs(grad_a) / lam + np.sqrt(np.abs(grad_b) / lam)


def eliminator_summary(problem: Problem) -> dict[str, float | None]:
  """What the eliminator does at the problem's point.

  Returns:
    ``a_abs_max`` (max |a_k|), ``a_bound`` (max of ``a_bound``), ``b_min``,
    ``b_max``, ``w_norm`` (Frobenius), ``exponent_max`` (max of w_k . x_i +
    b_k; overflow above 709.78), ``contribution_max`` (max |a_k e_ik|, the
    added neurons' largest output: 0 at a critical point, O(residual) on an
    escape path), ``fit_loss`` (L~ without the penalty) and ``base_loss`` (the
    base model alone, same loss). Non-finite values are None.
  """
  _check_augmented(problem)
  eliminator = jax.tree_util.tree_map(np.asarray,
                                      problem.params[ELIMINATOR])
  x = np.asarray(problem.x)
  exponent = x @ eliminator["w"] + eliminator["b"]
  with np.errstate(over="ignore", invalid="ignore"):
    contribution = np.abs(eliminator["a"] * np.exp(exponent))
  objective = problem.objective
  base = Objective(objective.apply_fn.base, objective.loss,
                   objective.normalization)
  base_loss = base(problem.params[BASE], problem.x, problem.y)
  fit_loss = problem.loss - float(objective.penalty(problem.params))
  values = {
      "a_abs_max": np.max(np.abs(eliminator["a"])),
      "a_bound": np.max(a_bound(problem)),
      "b_min": np.min(eliminator["b"]), "b_max": np.max(eliminator["b"]),
      "w_norm": np.linalg.norm(eliminator["w"]),
      "exponent_max": np.max(exponent),
      "contribution_max": np.max(contribution),
      "fit_loss": fit_loss, "base_loss": base_loss}
  return {k: records.json_float(v) for k, v in values.items()}


# ---------------------------------------------------------------------------
# Training any objective (float32, full batch, Adam).


@dataclasses.dataclass(frozen=True)
class TrainResult:
  """``params`` (float32) after ``steps`` Adam steps, the objective there, and
  whether it (or a parameter) is NaN/inf."""
  params: Any
  loss: float
  diverged: bool


@functools.partial(jax.jit, static_argnums=(0, 4, 5))
def _adam(objective, params, x, y, steps, learning_rate):
  optimizer = optax.adam(learning_rate)

  def step(carry, _):
    params, state = carry
    grads = jax.grad(objective)(params, x, y)
    updates, state = optimizer.update(grads, state, params)
    return (optax.apply_updates(params, updates), state), None

  (params, _), _ = jax.lax.scan(step, (params, optimizer.init(params)), None,
                                length=steps)
  return params, objective(params, x, y)


def train(objective: Objective, params: Any, x: Any, y: Any, *,
          steps: int = 2000, learning_rate: float = 0.01) -> TrainResult:
  """Full-batch Adam on any ``Objective`` (plain or augmented), in float32.

  One compiled program per objective, shapes and (steps, learning_rate).
  """
  if steps <= 0 or not learning_rate > 0:
    raise ValueError(f"train: need steps > 0 and learning_rate > 0, got "
                     f"steps={steps}, learning_rate={learning_rate}")
  cast = lambda a: jnp.asarray(a, TRAIN_DTYPE)
  params, loss = _adam(objective, jax.tree_util.tree_map(cast, params),
                       cast(x), cast(y), int(steps), float(learning_rate))
  params = jax.tree_util.tree_map(np.asarray, params)
  finite = all(np.all(np.isfinite(leaf))
               for leaf in jax.tree_util.tree_leaves(params))
  return TrainResult(params=params, loss=float(loss),
                     diverged=not (finite and math.isfinite(float(loss))))


# ---------------------------------------------------------------------------
# The experiment: plain vs augmented over losses, widths and seeds.

VARIANTS = ("plain", "augmented", "augmented_from_plain")
"""``plain``: the base network trained and refined. ``augmented``: the same
initial base plus a fresh eliminator (a = 0), trained and refined on L~.
``augmented_from_plain``: L~ refined from the plain member's refined point
with a = 0 (no training): does it leave a bad minimum, and where to?"""

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
    "eig_tol",
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


def get_config(variant: str = "default") -> ml_collections.ConfigDict:
  """The experiment's settings; ``"smoke"`` is a tiny run (under a minute).

  ``data`` are the options of ``lminima.data.synthetic`` without d_y: the
  squared loss fits ``d_y = 1`` targets, cross-entropy ``num_classes``
  classes, the argmax of ``num_classes`` synthetic targets drawn with noise
  ``ce_noise`` (so that the classes overlap).
  """
  if variant not in ("default", "smoke"):
    raise ValueError(f"unknown config variant {variant!r}; choose default or "
                     "smoke")
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
  config.cert_grad_tol = 1e-8
  config.workdir = "runs/eliminate"
  config.progress = True
  if variant == "smoke":
    config.widths = (2,)
    config.num_seeds = 2
    config.steps = 300
    config.refine_max_iters = 40
    config.continue_iters = 20
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
  for name in ("lam", "learning_rate", "cert_grad_tol"):
    if not (math.isfinite(config[name]) and config[name] > 0):
      raise ValueError(f"--{name} must be positive, got {config[name]}")
  if not config.escape_ratio > 1:
    raise ValueError(f"--escape_ratio must be > 1, got {config.escape_ratio}")
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
  result = refinement.refine(problem, method="lm",
                             max_iters=config.refine_max_iters,
                             escape_ratio=config.escape_ratio)
  refined = problem.at(result.params)
  cert = certify.certificate(refined, grad_tol=config.cert_grad_tol)
  fields = {
      "loss_start": problem.loss, "grad_norm_start": problem.grad_norm,
      "loss_refined": result.loss, "grad_norm_refined": result.grad_norm,
      "refine_iters": result.iters, "refine_stop_reason": result.stop_reason,
      "param_norm_start": result.param_norm_start,
      "param_norm_refined": result.param_norm}
  fields.update({k: getattr(cert, k) for k in (
      "verdict", "lambda_min", "lambda_max", "index", "n_flat", "grad_tol",
      "eig_tol")})
  augmented = isinstance(problem.objective.apply_fn, Augmented)
  if augmented and result.stop_reason != "non_finite":
    fields.update(eliminator_summary(refined))
  if config.continue_iters and result.stop_reason not in ("non_finite",
                                                          "grad_tol"):
    more = refinement.refine(refined, method="lm",
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


def run(config: ml_collections.ConfigDict,
        log: Callable[[str], None] = print) -> list[dict[str, Any]]:
  """Runs the experiment; returns every row of the workdir, writes the report.

  Resumable: (loss, width, seed) members whose rows are all recorded are
  skipped; a workdir holding another configuration is refused
  (``records.WorkdirError``).
  """
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

REACH_RTOL = 1e-6
"""A value reaches a best value ``v`` when it is <= v + REACH_RTOL (|v| + 1e-6)."""


def _reaches(value: float | None, best: float | None) -> bool:
  return (value is not None and best is not None
          and value <= best + REACH_RTOL * (abs(best) + 1e-6))


def best_plain_values(rows: list[dict[str, Any]]
                      ) -> dict[tuple[str, int], tuple[float | None, bool]]:
  """Per (loss, width): the best plain value and whether it is certified.

  The smallest refined value of a plain member certified ``local_min``; if
  no plain member certifies, the smallest refined plain value (flagged False).
  """
  best: dict[tuple[str, int], tuple[float | None, bool]] = {}
  for key in sorted({(r["loss_fn"], r["width"]) for r in rows}):
    plain = [r for r in rows if (r["loss_fn"], r["width"]) == key
             and r["variant"] == "plain"
             and r.get("loss_refined") is not None]
    certified = [r["loss_refined"] for r in plain
                 if r.get("verdict") == "local_min"]
    if certified:
      best[key] = (min(certified), True)
    elif plain:
      best[key] = (min(r["loss_refined"] for r in plain), False)
    else:
      best[key] = (None, False)
  return best


def latest_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """The last row of each (loss, width, seed, variant), in first-seen order
  (a member rerun after a kill between its rows is counted once)."""
  latest: dict[tuple, dict[str, Any]] = {}
  for r in rows:
    latest[(r["loss_fn"], r["width"], r["seed"], r["variant"])] = r
  return list(latest.values())


def _median(values: list[Any]) -> float | None:
  values = [v for v in values if v is not None]
  return float(np.median(values)) if values else None


def _fmt(value: Any, spec: str = ".4g") -> str:
  return "-" if value is None else format(value, spec)


def _counts(values: list[Any]) -> str:
  out: dict[str, int] = {}
  for v in values:
    out[str(v)] = out.get(str(v), 0) + 1
  return ", ".join(f"{k} {n}" for k, n in sorted(out.items())) or "-"


def _grows(rows: list[dict[str, Any]], before: str, after: str,
           by: Callable[[float, float], bool]) -> str:
  """``"k/n"``: of the n rows holding both fields, k where ``by(before,
  after)``."""
  pairs = [(r[before], r[after]) for r in rows
           if r.get(before) is not None and r.get(after) is not None]
  return f"{sum(by(u, v) for u, v in pairs)}/{len(pairs)}" if pairs else "-"


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """One entry per (loss, width, variant): counts, medians and reach counts.

  ``reach`` counts members whose refined value (of their own objective) is at
  most the best plain value (``best_plain_values``); ``cert_reach`` those of
  them certified ``local_min``; ``below`` those strictly under it;
  ``base_reach`` augmented members whose base network alone (eliminator
  dropped) reaches it. ``b_grows`` and ``norm_grows`` count members whose
  max b (by more than 1e-3) or parameter norm (by more than 1%) grew during
  the continued refinement.
  """
  rows = latest_rows(rows)
  best = best_plain_values(rows)
  table = []
  for (loss_fn, width), (best_value, certified) in best.items():
    for variant in VARIANTS:
      group = [r for r in rows if (r["loss_fn"], r["width"], r["variant"])
               == (loss_fn, width, variant)]
      if not group:
        continue
      done = [r for r in group if r.get("loss_refined") is not None]
      reach = [r for r in done if _reaches(r["loss_refined"], best_value)]
      table.append({
          "loss_fn": loss_fn, "width": width, "variant": variant,
          "n": len(group), "best": best_value, "best_certified": certified,
          "diverged": sum(bool(r.get("diverged")) for r in group),
          "loss_median": _median([r.get("loss") for r in group]),
          "refined_median": _median([r["loss_refined"] for r in done]),
          "refined_min": min((r["loss_refined"] for r in done), default=None),
          "verdicts": _counts([r.get("verdict") for r in done]),
          "stops": _counts([r.get("refine_stop_reason") for r in done]),
          "reach": len(reach),
          "cert_reach": sum(r.get("verdict") == "local_min" for r in reach),
          "below": sum(r["loss_refined"] < best_value
                       - REACH_RTOL * (abs(best_value) + 1e-6)
                       for r in reach),
          "base_reach": (sum(_reaches(r.get("base_loss"), best_value)
                             for r in done)
                         if variant != "plain" else None),
          "a_median": _median([r.get("a_abs_max") for r in done]),
          "a_bound_median": _median([r.get("a_bound") for r in done]),
          "b_median": _median([r.get("b_max") for r in done]),
          "b_continued_median": _median([r.get("b_max_continued")
                                         for r in done]),
          "b_grows": _grows(done, "b_max", "b_max_continued",
                            lambda u, v: v > u + 1e-3),
          "contribution_median": _median([r.get("contribution_max")
                                          for r in done]),
          "param_norm_median": _median([r.get("param_norm_refined")
                                        for r in done]),
          "param_norm_continued_median": _median(
              [r.get("param_norm_continued") for r in done]),
          "norm_grows": _grows(done, "param_norm_refined",
                               "param_norm_continued",
                               lambda u, v: v > 1.01 * u),
          "loss_continued_median": _median([r.get("loss_continued")
                                            for r in done]),
      })
  return table


TABLE_HEADER = (
    "| loss | width | variant | n | best plain (cert.) | final loss med. | "
    "refined med. | refined min | verdicts | refine stops | "
    "reach (cert.) / below | base reach |")

ESCAPE_HEADER = (
    "| loss | width | variant | med. abs(a) / bound | med. max b -> "
    "continued | b grows | med. max contribution | med. norm -> continued | "
    "norm grows | med. value continued |")


def _rule(header: str) -> str:
  return "|" + "---|" * (header.count("|") - 1)


def table_markdown(table: list[dict[str, Any]]) -> str:
  """Values, verdicts and reach counts: the table BUILD_NOTES.md quotes."""
  lines = [TABLE_HEADER, _rule(TABLE_HEADER)]
  for e in table:
    best = f"{_fmt(e['best'], '.6g')} ({'yes' if e['best_certified'] else 'no'})"
    lines.append(
        f"| {e['loss_fn']} | {e['width']} | {e['variant']} | {e['n']} | "
        f"{best} | {_fmt(e['loss_median'])} | "
        f"{_fmt(e['refined_median'], '.6g')} | "
        f"{_fmt(e['refined_min'], '.6g')} | {e['verdicts']} | "
        f"{e['stops']} | {e['reach']} ({e['cert_reach']}) / {e['below']} | "
        f"{_fmt(e['base_reach'], 'd')} |")
  return "\n".join(lines) + "\n"


def escape_markdown(table: list[dict[str, Any]]) -> str:
  """The eliminator and the parameter norm at the refined point and after the
  continued refinement (where do the points go?)."""
  lines = [ESCAPE_HEADER, _rule(ESCAPE_HEADER)]
  for e in table:
    lines.append(
        f"| {e['loss_fn']} | {e['width']} | {e['variant']} | "
        f"{_fmt(e['a_median'], '.2g')} / {_fmt(e['a_bound_median'], '.2g')} "
        f"| {_fmt(e['b_median'], '.3g')} -> "
        f"{_fmt(e['b_continued_median'], '.3g')} | {e['b_grows']} | "
        f"{_fmt(e['contribution_median'], '.2g')} | "
        f"{_fmt(e['param_norm_median'], '.3g')} -> "
        f"{_fmt(e['param_norm_continued_median'], '.3g')} | "
        f"{e['norm_grows']} | {_fmt(e['loss_continued_median'], '.6g')} |")
  return "\n".join(lines) + "\n"


def write_report(rows: list[dict[str, Any]], path: str) -> str:
  """Writes the markdown report of ``rows`` to ``path``; returns its text."""
  table = summarize(rows)
  config = rows[0]["config"] if rows else {}
  versions = rows[0]["versions"] if rows else {}
  text = [
      "# Eliminating bad local minima: plain vs augmented",
      "",
      "Kawaguchi & Kaelbling (2020); lminima.eliminate, "
      "docs/theory.md#eliminating-bad-local-minima.",
      "",
      f"- config: `{json.dumps(config, sort_keys=True, default=str)}`",
      f"- versions: `{json.dumps(versions, sort_keys=True)}`",
      f"- machine: `{json.dumps(provenance.machine_info(), sort_keys=True)}`",
      f"- rows: {len(rows)}; wall time of the rows "
      f"{sum(r.get('wall_s') or 0.0 for r in rows):.0f} s",
      "",
      "`best plain` is the smallest refined value of a plain member certified "
      "local_min for that (loss, width) (`no`: none certified, the smallest "
      "plain value instead). Values are each variant's own objective "
      "(augmented: L~, penalty included). `reach` counts members at or below "
      "the best plain value (in parentheses: those also certified local_min), "
      "`below` those strictly under it; `base reach` counts augmented members "
      "whose base network alone, eliminator dropped, reaches it. Medians over "
      "members.",
      "",
      table_markdown(table),
      "Where the points go: abs(a) (with its bound from the gradient), max b "
      "and `contribution`, the largest abs(a_k exp(w_k.x_i + b_k)) (0 at a "
      "critical point, which has a = 0), at the refined point; `continued` "
      f"after up to {config.get('continue_iters', '-')} more LM iterations "
      "without the escape stop (members that stopped at grad_tol are not "
      "continued). `grows`: members whose max b (norm) grew, of those "
      "continued.",
      "",
      escape_markdown(table),
  ]
  out = "\n".join(text)
  with open(path, "w") as f:
    f.write(out)
  return out
