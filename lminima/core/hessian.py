"""Hessian operators: flat views, Hessian-vector products, dense Hessians.

Everything here works on a scalar loss ``loss_fn(params)`` and its Hessian
``H = d^2 L / d theta^2`` at one point, seen through the flat parameter vector
``theta = ravel_pytree(params)`` (``jax.flatten_util`` order of the params
tuple: layer 1 ``b`` then ``w``, layer 2 ..., keys sorted within a layer).

Hessian-vector products are forward-over-reverse,

  ``H v = d/dt grad L(theta + t v) |_{t=0}``,

a ``jax.jvp`` of ``jax.grad``: one forward and one backward pass carrying
tangents, with no Hessian materialized. For many products at one point
``hvp_operator`` linearizes ``grad L`` once, so each product only runs the
tangent (linear) half of the computation. The dense Hessian is assembled
column by column, ``H[:, i] = H e_i``, and symmetrized, ``(H + H^T) / 2``,
because roundoff makes the shared entries of ``H e_i`` and ``H e_j`` differ
slightly.

The operator contract shared by the spectral modules
(``lminima.linalg.lanczos``, ``lminima.linalg.slq``): a symmetric linear map
``matvec: (dim,) -> (dim,)`` (``Matvec``). ``as_operator`` views it as a
``jax.tree_util.Partial`` whose residuals are pytree leaves, so jitted solvers
take it as an ordinary argument and compile once per operator structure rather
than once per call; ``check_operator`` verifies the shape contract once per
operator signature.

Example:
  >>> import jax.numpy as jnp
  >>> a = jnp.array([[2.0, 1.0], [1.0, 3.0]])
  >>> loss = lambda p: 0.5 * p["x"] @ a @ p["x"]
  >>> params = {"x": jnp.array([1.0, -1.0])}
  >>> matvec, dim = hvp_operator(loss, params)
  >>> dim, matvec(jnp.array([1.0, 0.0])).tolist()
  (2, [2.0, 1.0])
  >>> dense_hessian(loss, params).tolist()
  [[2.0, 1.0], [1.0, 3.0]]
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.flatten_util import ravel_pytree

from lminima.core import checks
from lminima.dtypes import EXACT_DTYPE

Params = Any  # any pytree of arrays; lminima.core.models uses a tuple of dicts
Matvec = Callable[[jax.Array], jax.Array]


# ---------------------------------------------------------------------------
# Flat views and Hessian-vector products.


def flatten_params(params: Params
                   ) -> tuple[jax.Array, Callable[[jax.Array], Params]]:
  """Flat parameter vector and the inverse map (``jax.flatten_util``).

  Example:
    >>> import jax.numpy as jnp
    >>> flat, unravel = flatten_params(({"w": jnp.ones((2, 2))},))
    >>> flat.shape, unravel(flat)[0]["w"].shape
    ((4,), (2, 2))
  """
  return ravel_pytree(params)


def hvp(loss_fn: Callable[[Params], jax.Array], params: Params,
        v: Params) -> Params:
  """Hessian-vector product ``H v`` as a pytree shaped like ``params``.

  Forward-over-reverse: ``H v = jvp(grad L, (theta,), (v,))``, one forward
  and one backward pass with tangents, no Hessian materialized.

  Args:
    loss_fn: scalar loss of the parameter pytree.
    params: point theta at which H is taken.
    v: direction, a pytree with the structure and shapes of ``params``.

  Example:
    >>> import jax.numpy as jnp
    >>> loss = lambda p: jnp.sum(p ** 3)
    >>> hvp(loss, jnp.array([1.0, 2.0]), jnp.array([1.0, 1.0])).tolist()
    [6.0, 12.0]
  """
  param_tree = jax.tree_util.tree_structure(params)
  v_tree = jax.tree_util.tree_structure(v)
  if param_tree != v_tree:
    raise ValueError(f"v must have the pytree structure of params; got "
                     f"{v_tree} vs {param_tree}")
  for p, u in zip(jax.tree_util.tree_leaves(params),
                  jax.tree_util.tree_leaves(v)):
    if jnp.shape(p) != jnp.shape(u):
      raise ValueError(f"v leaf shape {jnp.shape(u)} != params leaf shape "
                       f"{jnp.shape(p)}")
  return jax.jvp(jax.grad(loss_fn), (params,), (v,))[1]


@functools.lru_cache(maxsize=16)
def _jitted_linearizer(loss_fn: Callable[[Params], jax.Array]):
  """One jitted linearization per loss function.

  Linearizing inside jit makes the returned operator's pytree structure (its
  linear jaxpr) identical at every point with the same parameter shapes, so
  solvers jitted on the operator compile once per loss function instead of
  once per point. The cache keeps at most 16 loss functions (and their
  closed-over data) alive.
  """
  def linearize(params):
    flat, unravel = flatten_params(params)
    flat_loss = lambda theta: loss_fn(unravel(theta))
    return jax.linearize(jax.grad(flat_loss), flat)[1]
  return jax.jit(linearize)


def hvp_operator(loss_fn: Callable[[Params], jax.Array], params: Params
                 ) -> tuple[Matvec, int]:
  """Flat Hessian operator ``v -> H v`` linearized once at ``params``.

  ``jax.linearize(jax.grad(flat_loss), theta)`` evaluates the forward and
  backward pass once and keeps the residuals; each later product runs only the
  linear tangent computation. The returned matvec is a
  ``jax.tree_util.Partial`` (residuals as leaves), so it can be passed to
  jitted functions and vmapped. Reuse the same ``loss_fn`` object at every
  point: the linearization is jitted per loss function and the operators it
  returns share one structure, so Lanczos (``lminima.linalg.lanczos``), SLQ and
  the trace estimators (``lminima.linalg.slq``) compile once for all points.

  Returns:
    ``(matvec, dim)`` with ``matvec: (dim,) -> (dim,)`` in the dtype of
    ``params`` and ``dim`` the number of parameters.

  Example:
    >>> import jax.numpy as jnp
    >>> matvec, dim = hvp_operator(lambda p: jnp.sum(p ** 3), jnp.ones(3))
    >>> dim, matvec(jnp.array([1.0, 0.0, 0.0])).tolist()
    (3, [6.0, 0.0, 0.0])
  """
  dim = int(flatten_params(params)[0].size)
  try:
    linearize = _jitted_linearizer(loss_fn)
  except TypeError:  # an unhashable callable: linearize without the cache
    linearize = _jitted_linearizer.__wrapped__(loss_fn)
  return linearize(params), dim


@functools.partial(jax.jit, static_argnames=("dim", "chunk_size"))
def _dense_from_operator(operator, *, dim: int, chunk_size: int) -> jax.Array:
  dtype = jax.eval_shape(operator, jax.ShapeDtypeStruct((dim,), EXACT_DTYPE)
                         ).dtype
  column = lambda i: operator(jax.nn.one_hot(i, dim, dtype=dtype))
  # lax.map with batch_size vmaps chunk_size basis vectors at a time, which
  # bounds the tangent memory by chunk_size copies of the network state.
  return lax.map(column, jnp.arange(dim), batch_size=min(chunk_size, dim))


def dense_hessian(loss_fn: Callable[[Params], jax.Array], params: Params, *,
                  chunk_size: int = 256) -> jax.Array:
  """The full (n, n) Hessian in float64, built column block by column block.

  Column i is ``H e_i`` from the linearized HVP; ``chunk_size`` columns are
  computed together (vmap), which bounds memory while using matrix-matrix
  products. Roundoff makes ``H e_i`` and ``H e_j`` differ slightly in their
  shared entries; the result is symmetrized, ``(H + H^T) / 2``.

  Args:
    loss_fn: scalar loss of the parameter pytree.
    params: float64 parameters without NaN/inf.
    chunk_size: columns per vmapped block.

  Raises:
    ValueError: if a leaf is not float64, params are not finite, or
      ``chunk_size < 1``.

  Example:
    >>> import jax.numpy as jnp
    >>> loss = lambda p: p[0] ** 2 * p[1]
    >>> dense_hessian(loss, jnp.array([1.0, 2.0])).tolist()
    [[4.0, 2.0], [2.0, 0.0]]
  """
  if chunk_size < 1:
    raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
  checks.float64_tree(params, "params")
  checks.finite_tree(params, "params")
  matvec, dim = hvp_operator(loss_fn, params)
  return dense_from_operator(matvec, dim, chunk_size=chunk_size)


def dense_from_operator(matvec: Matvec, dim: int, *,
                        chunk_size: int = 256) -> jax.Array:
  """The symmetrized matrix ``(A + A^T) / 2`` of a symmetric ``matvec``.

  Column i is ``matvec(e_i)``, ``chunk_size`` columns at a time. No input
  checks: this is the traceable core of ``dense_hessian``, for callers that
  validate their parameters themselves and compile the whole construction
  (e.g. once per network shape).

  Example:
    >>> import jax.numpy as jnp
    >>> a = jnp.array([[2.0, 1.0], [1.0, 3.0]])
    >>> dense_from_operator(lambda v: a @ v, 2).tolist()
    [[2.0, 1.0], [1.0, 3.0]]
  """
  matrix = _dense_from_operator(as_operator(matvec), dim=int(dim),
                                chunk_size=int(chunk_size))
  return 0.5 * (matrix + matrix.T)


# ---------------------------------------------------------------------------
# The operator contract of the spectral modules.


def as_operator(matvec: Matvec) -> jax.tree_util.Partial:
  """A pytree view of ``matvec`` so jitted solvers can take it as input.

  A ``jax.tree_util.Partial`` (e.g. from ``hvp_operator``) is returned as is;
  any other callable is wrapped with no arguments bound.

  Example:
    >>> op = as_operator(lambda v: 2.0 * v)
    >>> isinstance(op, jax.tree_util.Partial), as_operator(op) is op
    (True, True)
  """
  if isinstance(matvec, jax.tree_util.Partial):
    return matvec
  return jax.tree_util.Partial(matvec)


_CHECKED_OPERATORS: set = set()


def check_operator(matvec: Matvec, dim: int, dtype) -> None:
  """Raises ValueError unless ``matvec`` maps (dim,) to (dim,).

  The check traces the operator, so it is remembered per operator signature
  (pytree structure, leaf shapes, dim, dtype): operators from one loss
  function share a signature and are checked once.

  Example:
    >>> import jax.numpy as jnp
    >>> check_operator(lambda v: 2.0 * v, 3, jnp.float64)
    >>> check_operator(lambda v: v[:2], 3, jnp.float64)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: matvec must map shape (3,) to (3,), got (2,); pass the flat ...
  """
  if int(dim) < 1:
    raise ValueError(f"dim must be >= 1, got {dim}")
  leaves, treedef = jax.tree_util.tree_flatten(as_operator(matvec))
  signature = (treedef, tuple((jnp.shape(leaf), jnp.result_type(leaf))
                              for leaf in leaves), int(dim), np.dtype(dtype))
  if signature in _CHECKED_OPERATORS:
    return
  try:
    out = jax.eval_shape(matvec, jax.ShapeDtypeStruct((dim,), dtype))
  except Exception as error:  # report the shape contract, keep the cause
    raise ValueError(f"matvec must map a ({dim},) vector to a ({dim},) "
                     f"vector; calling it on shape ({dim},) failed") from error
  if getattr(out, "shape", None) != (dim,):
    raise ValueError(f"matvec must map shape ({dim},) to ({dim},), got "
                     f"{getattr(out, 'shape', type(out).__name__)}; pass the "
                     "flat operator from hvp_operator, not a pytree HVP")
  _CHECKED_OPERATORS.add(signature)
