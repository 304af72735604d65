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

``lminima.related.eliminate.training`` trains any ``Objective``, plain or
augmented (full-batch Adam, float32). The experiment behind
``scripts/eliminate.py`` that uses them (plain and augmented networks over
seeds and widths, refined, certified and compared) is
``lminima.related.eliminate.study``; its report is
``lminima.related.eliminate.report``.

Example:
  >>> import jax, numpy as np
  >>> import lminima
  >>> from lminima.core.models import MLP
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
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lminima.core.problem import ModuleMethod, Objective, Problem
from lminima.dtypes import TRAIN_DTYPE
from lminima.study import records

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
                     "lminima.related.eliminate.augmented.augmented_problem")
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
