"""One exact problem: a model with a linear output layer, a point, a data set.

``Problem`` is the float64 objective

    L(theta) = c ||f(theta; X) - Y||_F^2,   c = losses.loss_scale(normalization, m),

of one model ``f = apply_fn`` at one point ``theta`` (a parameter pytree) on
one training set (docs/theory.md, "Setup and notation"). It is validated and
cast once; every analysis (``refine``, ``certificate``, the theory functions,
the classical comparisons that need a network, the spectrum) reads it, and it
caches what several of them need: L and its gradient, the flat view of the
parameters and its ordering (``jax.flatten_util.ravel_pytree``; docs/theory.md,
"Orderings"), the Hessian-vector operator, the dense Hessian, the derivative
matrix D(theta) and the features entering the output layer.

The loss is the squared loss by default, the one every identity is about;
``loss="cross_entropy"`` (softmax cross-entropy) and a ``penalty(params)``
added to it serve objectives beyond the paper's (refinement, certificates and
spectra work for any of them; ``lminima.theory.identities`` refuses all but the
plain squared loss).

Compiled pieces are keyed by the ``Objective`` (model, loss, normalization,
penalty) and the array shapes, so the problems of all members of one shape share one compilation:
pass the same ``apply_fn`` object (``for_module`` does: flax modules compare
by value).

Example:
  >>> import jax, numpy as np
  >>> from lminima.core.models import MLP
  >>> model = MLP(d_in=2, widths=(3,), d_out=1)
  >>> x = np.random.default_rng(0).standard_normal((6, 2))
  >>> problem = Problem.for_module(model, model.init_params(
  ...     jax.random.PRNGKey(0)), x, x[:, :1] ** 2)
  >>> problem.n_params, problem.dense_hessian().shape
  (13, (13, 13))
  >>> bool(problem.loss > 0), problem.features().shape
  (True, (6, 4))
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from lminima.core import checks
from lminima.core import derivative
from lminima.core import hessian
from lminima.core.losses import loss_scale, softmax_cross_entropy, squared_loss
from lminima.dtypes import EXACT_DTYPE

DEFAULT_MEMORY_BUDGET_BYTES = 2**30
"""Largest dense object (D(theta), the Hessian) built unless told otherwise."""

ApplyFn = Callable[[Any, jax.Array], jax.Array]

LOSSES = {"squared": squared_loss, "cross_entropy": softmax_cross_entropy}
"""Losses of the output: ``name -> fn(yhat, y, normalization)``."""

# Hessian columns are H e_i, vmapped in blocks: up to _ONE_BLOCK_MAX_PARAMS
# columns in one block (one loop body to compile), above it blocks of
# _HESSIAN_BLOCK keep the tangent working set in cache (docs/design.md,
# "Numerics").
_HESSIAN_BLOCK = 64
_ONE_BLOCK_MAX_PARAMS = 256


@dataclasses.dataclass(frozen=True)
class Objective:
  """The static part of a problem: L(theta) = loss(apply_fn(theta; X), Y)
  (+ penalty(theta)); hashable, the key of the compiled pieces."""
  apply_fn: ApplyFn
  loss: str = "squared"
  normalization: str = "mean"
  penalty: Callable[[Any], jax.Array] | None = None

  def __call__(self, params: Any, x: jax.Array, y: jax.Array) -> jax.Array:
    value = LOSSES[self.loss](self.apply_fn(params, x), y, self.normalization)
    if self.penalty is not None:
      value = value + self.penalty(params)
    return value


@dataclasses.dataclass(frozen=True)
class ModuleMethod:
  """``(variables, x) -> module.apply(variables, x, method=method)``.

  Hashable by value (module and method name), so problems built from equal
  modules share compiled code.
  """
  module: Any
  method: str | None = None

  def __call__(self, variables: Any, x: jax.Array) -> jax.Array:
    if self.method is None:
      return self.module.apply(variables, x)
    return self.module.apply(variables, x, method=self.method)


class Problem:
  """The float64 objective (the squared loss by default) of one model at one point.

  Attributes:
    apply_fn: ``(params, x) -> yhat`` of shape (m, d_y), linear output layer.
    params: the point theta, float64 pytree.
    x: inputs, float64 ``jax.Array`` with m rows (any trailing shape).
    y: targets, float64 (m, d_y).
    normalization: ``"sum"`` or ``"mean"``; ``c`` its squared-loss constant.
    loss: ``"squared"`` (default) or ``"cross_entropy"``; ``penalty`` an
      optional ``params -> scalar`` added to it; ``objective`` the three
      with ``apply_fn``.
    features_fn: ``(params, x) -> F`` (m, p), the design of the output layer
      (features entering it, plus a ones column when it has a bias); or None.
    kinks_fn: ``(params, x) ->`` flat array of the arguments of
      non-differentiable activations; or None for smooth models.
    intercept: whether the output layer has a bias (classical comparisons
      then fit an intercept too).
    module: the flax module behind ``apply_fn`` (``for_module``), else None.
    memory_budget_bytes: largest dense D(theta) or Hessian built.
    flat: theta flattened (``ravel_pytree`` order); ``unravel`` its inverse.
    n_params, m, d_y: sizes.
  """

  def __init__(self, apply_fn: ApplyFn, params: Any, x: Any, y: Any, *,
               normalization: str = "mean", loss: str = "squared",
               penalty: Callable[[Any], jax.Array] | None = None,
               features_fn: ApplyFn | None = None,
               kinks_fn: ApplyFn | None = None, intercept: bool = True,
               module: Any = None,
               memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES):
    x = np.asarray(x, np.float64)
    if x.ndim < 2 or x.shape[0] == 0:
      raise ValueError(f"x must have shape (m, ...) with m >= 1 samples, got "
                       f"{x.shape}")
    if not np.all(np.isfinite(x)):
      raise ValueError("x contains NaN or inf")
    y = checks.float64_matrix(y, "y")
    if y.shape[0] != x.shape[0]:
      raise ValueError(f"y has {y.shape[0]} rows but x has {x.shape[0]}")
    self.c = loss_scale(normalization, x.shape[0])
    if loss not in LOSSES:
      raise ValueError(f"unknown loss {loss!r}; choose one of {list(LOSSES)}")
    self.objective = Objective(apply_fn, loss, normalization, penalty)
    if not memory_budget_bytes > 0:
      raise ValueError(f"memory_budget_bytes must be positive, got "
                       f"{memory_budget_bytes}")
    self.apply_fn, self.features_fn, self.kinks_fn = (apply_fn, features_fn,
                                                       kinks_fn)
    self.normalization, self.intercept, self.module = (normalization,
                                                       bool(intercept), module)
    self.memory_budget_bytes = int(memory_budget_bytes)
    self.x, self.y = jnp.asarray(x), jnp.asarray(y)
    self.m, self.d_y = y.shape
    self._set_point(params)
    out = self._shape_of(apply_fn, "apply_fn")
    if out.shape != y.shape:
      raise ValueError(f"apply_fn(params, x) has shape {out.shape}, but y has "
                       f"shape {y.shape}")
    if features_fn is not None:
      shape = self._shape_of(features_fn, "features_fn").shape
      if len(shape) != 2 or shape[0] != self.m:
        raise ValueError(f"features_fn(params, x) must have shape ({self.m}, "
                         f"p), got {shape}")

  @classmethod
  def for_module(cls, module: Any, variables: Any, x: Any, y: Any, *,
                 normalization: str = "mean", **kwargs: Any) -> Problem:
    """The problem of a flax module, reading its conventions.

    ``module.features`` and ``module.kink_inputs``, where defined, become
    ``features_fn`` and ``kinks_fn``; a boolean ``module.bias`` sets
    ``intercept`` (lminima.core.models, module docstring). The MLP family is one
    instance: ``Problem.for_module(MLP(...), variables, x, y)``.
    """
    if hasattr(module, "check_params"):
      module.check_params(variables)
    bias = getattr(module, "bias", True)
    kwargs.setdefault("intercept", bias if isinstance(bias, bool) else True)
    method = lambda name: (ModuleMethod(module, name)
                           if callable(getattr(module, name, None)) else None)
    return cls(ModuleMethod(module), variables, x, y,
               normalization=normalization, features_fn=method("features"),
               kinks_fn=method("kink_inputs"), module=module, **kwargs)

  def at(self, params: Any) -> Problem:
    """The same objective and data at another point (data not re-checked)."""
    other = object.__new__(Problem)
    other.__dict__.update({k: v for k, v in self.__dict__.items()
                           if not k.startswith("_cache")})
    other._set_point(params)
    return other

  def _set_point(self, params: Any) -> None:
    checks.finite_tree(params, "params")
    if hasattr(self, "params") and (jax.tree_util.tree_structure(params)
                                    != jax.tree_util.tree_structure(
                                        self.params)):
      raise ValueError("params must have the structure of the problem's "
                       "params")
    self.params = jax.tree_util.tree_map(
        lambda a: jnp.asarray(a, EXACT_DTYPE), params)
    self.flat, self.unravel = hessian.flatten_params(self.params)
    self.n_params = int(self.flat.size)
    self._cache: dict[str, Any] = {}

  def _shape_of(self, fn: ApplyFn, name: str):
    try:
      return jax.eval_shape(fn, self.params, self.x)
    except Exception as error:  # report the contract, keep the cause
      raise ValueError(f"{name}(params, x) failed on params and x of shapes "
                       f"{jax.tree_util.tree_map(jnp.shape, self.params)}, "
                       f"{self.x.shape}: {error}") from error

  def cached(self, key: str, compute: Callable[[], Any]) -> Any:
    """Memoizes ``compute()`` under ``key`` for this point (not across ``at``)."""
    if key not in self._cache:
      self._cache[key] = compute()
    return self._cache[key]

  # -- the objective at any flat point ---------------------------------------

  def loss_and_grad_at(self, flat: Any) -> tuple[float, np.ndarray]:
    """L and the flat gradient at the flat point ``flat``."""
    loss, grad = _loss_and_flat_grad(self.objective,
                                     jnp.asarray(flat, EXACT_DTYPE),
                                     self.params, self.x, self.y)
    return float(loss), np.asarray(grad)

  def hvp_operator_at(self, flat: Any) -> jax.tree_util.Partial:
    """Flat ``v -> H v`` at ``flat``; a pytree, so jitted solvers take it."""
    return jax.tree_util.Partial(
        _flat_hvp(self.objective),
        jnp.asarray(flat, EXACT_DTYPE), self.params, self.x, self.y)

  def dense_hessian_at(self, flat: Any) -> np.ndarray:
    """The symmetrized float64 Hessian (n_params, n_params) at ``flat``."""
    nbytes = 8 * self.n_params ** 2
    if nbytes > self.memory_budget_bytes:
      raise ValueError(f"the dense Hessian needs {nbytes} bytes (8 n_params^2,"
                       f" n_params={self.n_params}) > memory budget "
                       f"{self.memory_budget_bytes}; use the matrix-free path")
    return np.asarray(_dense_hessian(
        self.objective, jnp.asarray(flat, EXACT_DTYPE),
        self.params, self.x, self.y))

  # -- cached quantities at the problem's own point --------------------------

  @property
  def loss(self) -> float:
    """L(theta)."""
    return self._value_and_grad()[0]

  @property
  def grad(self) -> np.ndarray:
    """grad L(theta), flat."""
    return self._value_and_grad()[1]

  @property
  def grad_norm(self) -> float:
    """||grad L(theta)||_2."""
    return float(np.linalg.norm(self.grad))

  @property
  def reference_loss(self) -> float:
    """L_ref: the loss of the zero predictor (no penalty), c ||Y||_F^2 for
    the squared loss; the scale of the loss's rounding
    (``lminima.core.tolerances``). Depends on the data only."""
    if "_reference_loss" not in self.__dict__:
      self._reference_loss = float(LOSSES[self.objective.loss](
          jnp.zeros_like(self.y), self.y, self.normalization))
    return self._reference_loss

  def _value_and_grad(self):
    return self.cached("loss_and_grad",
                        lambda: self.loss_and_grad_at(self.flat))

  def hvp_operator(self) -> jax.tree_util.Partial:
    """Flat Hessian operator at theta."""
    return self.cached("hvp", lambda: self.hvp_operator_at(self.flat))

  def dense_hessian(self) -> np.ndarray:
    """Dense Hessian at theta (cached)."""
    return self.cached("hessian", lambda: self.dense_hessian_at(self.flat))

  def yhat(self) -> np.ndarray:
    """Model output (m, d_y) at theta."""
    return self.cached("yhat", lambda: np.asarray(
        _apply(self.apply_fn, self.params, self.x)))

  def features(self) -> np.ndarray:
    """Design F of the output layer at theta (m, p), cached.

    Raises:
      ValueError: if the problem has no ``features_fn``.
    """
    if self.features_fn is None:
      raise ValueError("this problem has no features_fn: give the model a "
                       "`features` method (see lminima.core.models) or pass "
                       "features_fn=")
    return self.cached("features", lambda: np.asarray(
        _apply(self.features_fn, self.params, self.x)))

  def kink_inputs(self) -> np.ndarray | None:
    """The arguments of non-differentiable activations at theta (cached), or
    None without ``kinks_fn``."""
    if self.kinks_fn is None:
      return None
    return self.cached("kinks", lambda: np.asarray(
        _apply(self.kinks_fn, self.params, self.x)))

  def min_abs_kink_input(self) -> float | None:
    """min |z| over the arguments of non-differentiable activations, or None."""
    values = self.kink_inputs()
    return (float(np.min(np.abs(values)))
            if values is not None and values.size else None)

  def column_slices(self) -> dict[str, slice]:
    """Flat-vector range of every parameter leaf, named by its path.

    Names join the pytree keys with "/", without a leading ``params``
    collection (e.g. ``"layer_1/kernel"``), in ``ravel_pytree`` order.
    """
    def compute():
      slices, start = {}, 0
      for path, leaf in jax.tree_util.tree_flatten_with_path(self.params)[0]:
        keys = [str(getattr(k, "key", getattr(k, "idx", k))) for k in path]
        if len(keys) > 1 and keys[0] == "params":
          keys = keys[1:]
        slices["/".join(keys)] = slice(start, start + int(np.size(leaf)))
        start += int(np.size(leaf))
      return slices
    return self.cached("slices", compute)

  def derivative(self):
    """D(theta) (``lminima.core.derivative.DerivativeMatrix``), cached."""
    return self.cached("derivative",
                        lambda: derivative.derivative_matrix(self))


# ---------------------------------------------------------------------------
# Compiled pieces, one per Objective and array shapes.


@functools.partial(jax.jit, static_argnums=0)
def _loss_and_flat_grad(objective, flat, like, x, y):
  unravel = hessian.flatten_params(like)[1]
  return jax.value_and_grad(lambda f: objective(unravel(f), x, y))(flat)


@functools.partial(jax.jit, static_argnums=0)
def _dense_hessian(objective, flat, like, x, y):
  unravel = hessian.flatten_params(like)[1]
  _, matvec = jax.linearize(jax.grad(lambda f: objective(unravel(f), x, y)),
                            flat)
  dim = flat.shape[0]
  return hessian.dense_from_operator(
      matvec, dim,
      chunk_size=dim if dim <= _ONE_BLOCK_MAX_PARAMS else _HESSIAN_BLOCK)


@functools.lru_cache(maxsize=64)
def _flat_hvp(objective) -> Callable[..., jax.Array]:
  """Jitted ``(flat, like, x, y, v) -> H v``; one function object per key.

  The stable identity makes ``Partial(fn, flat, like, x, y)`` an operator whose
  tree structure depends only on shapes, so jitted Lanczos compiles once per
  shape rather than once per member.
  """
  @jax.jit
  def flat_hvp(flat, like, x, y, v):
    unravel = hessian.flatten_params(like)[1]
    flat_loss = lambda f: objective(unravel(f), x, y)
    return jax.jvp(jax.grad(flat_loss), (flat,), (v,))[1]
  return flat_hvp


@functools.partial(jax.jit, static_argnums=0)
def _apply(fn, params, x):
  return fn(params, x)
