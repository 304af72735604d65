"""The MLP family as a ``flax.linen`` module, and the conventions any model follows.

A network with H hidden layers of widths d_1..d_H computes

    Z^(l) = h^(l-1) W^(l) + b^(l),   h^(l) = sigma(Z^(l)),   l = 1..H,
    Yhat  = h^(H) W^(H+1) + b^(H+1),

with h^(0) = X (m x d_x) and W^(l) of shape (d_{l-1}, d_l) (docs/theory.md,
"Setup and notation"). Biases are all on or all off (``bias``). The output
layer is always linear, which is what the analysis needs.

With ``skip=True`` a linear skip connection from the input to the output is
added, Yhat = h^(H) W^(H+1) + b^(H+1) + X S, S of shape (d_x, d_y) without a
bias. The output stays linear in [h^(H), X, 1], and the block of S in D(theta)
is X kron I_{d_y}, so col([X 1] kron I) lies in col(D) at every theta: the
structure where the subspace bound (C) must hold (docs/theory.md, "(C)
Subspace bound").

Parameters are flax variables, ``{"params": {"layer_1": {"kernel": W1,
"bias": b1}, ..., "layer_{H+1}": {...}}}`` (no ``"bias"`` without biases),
plus ``"skip": {"kernel": S}`` with ``skip=True``.

Conventions for any model the analysis takes (``lminima.Problem.for_module``):
``module.apply(variables, x)`` returns Yhat (m, d_y) through a linear output
layer, and the module may define

* ``features(x)``: the design matrix of that output layer, i.e. the features
  entering it with a column of ones appended when it has a bias, so that
  Yhat = features(x) @ B for some B. Needed for the last-layer identities.
* ``kink_inputs(x)``: the arguments of every non-differentiable activation
  (the pre-activations of relu units), shape (m, k): k per sample; a
  certificate calls the point non-differentiable when one is within its
  tolerance of 0.
* for kink decisions (``lminima.critical.kinks``), a piecewise-linear
  activation's two slopes ``kink_slopes = (below, above)`` and the smooth
  pieces of the network: ``piece(xs)`` and ``piece_kink_inputs(xs)``, the
  output and the kinked arguments when every kinked activation is replaced by
  the fixed slope given for it, ``xs = [X, S]`` with S (m, k) in the order of
  ``kink_inputs``. On the closure of the region where S is the activation
  pattern, the piece's loss equals the loss. A sample's output and
  arguments depend on its own row of ``xs`` only (no batch statistics):
  the decisions compute them on the rows that matter.
* ``bias``: a bool attribute, whether the output layer has a bias (default
  True for models without it).

Initialization (``init_params``): ``W^(l)_ij ~ N(0, gain^2 / d_{l-1})`` with
``gain = sqrt(2)`` for relu and leaky_relu, 1 otherwise; the output layer uses
gain 1; biases start at 0. The draws are a function of the key alone (one
split per layer), so a seed gives the same network whatever else is trained
beside it. The skip kernel is drawn like the output layer, ``S_ij ~ N(0,
1 / d_x)``, from ``fold_in(key, SKIP_STREAM)``, a stream apart from the
layers' split, so a skip model's layers start where the plain model's do.
``module.init(key, x)`` works too (same distribution, flax's own
per-parameter keys, also unchanged by the skip).

Members of different widths train in one padded network:
``lminima.core.padding``.

Example:
  >>> import jax
  >>> model = MLP(d_in=3, widths=(4, 4), d_out=2, activation="tanh")
  >>> variables = model.init_params(jax.random.PRNGKey(0))
  >>> model.apply(variables, jax.numpy.ones((5, 3))).shape
  (5, 2)
  >>> model.n_params, model.apply(variables, jax.numpy.ones((5, 3)),
  ...                             method="features").shape
  (46, (5, 5))
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lminima.dtypes import TRAIN_DTYPE

Params = Any  # flax variables {"params": {...}} or any pytree of arrays

LEAKY_RELU_SLOPE = 0.01

ACTIVATIONS: Mapping[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "leaky_relu": lambda z: jnp.where(z >= 0, z, LEAKY_RELU_SLOPE * z),
    "tanh": jnp.tanh,
    "softplus": jax.nn.softplus,
    "sigmoid": jax.nn.sigmoid,
    "identity": lambda z: z,
}

HOMOGENEOUS_ACTIVATIONS = ("relu", "leaky_relu", "identity")
"""Positively homogeneous: sigma(a z) = a sigma(z) for a > 0."""

KINKED_ACTIVATIONS = ("relu", "leaky_relu")
"""Not differentiable at z = 0: certificates check the distance to the kink."""

SKIP = "skip"
"""Name of the skip connection's Dense submodule (``MLP(skip=True)``)."""

SKIP_STREAM = 1
"""``init_params`` draws the skip kernel from ``fold_in(key, SKIP_STREAM)``."""


def get_activation(name: str) -> Callable[[jax.Array], jax.Array]:
  """Returns the activation function called ``name`` (see ``ACTIVATIONS``)."""
  try:
    return ACTIVATIONS[name]
  except KeyError:
    raise ValueError(f"unknown activation {name!r}; choose one of "
                     f"{sorted(ACTIVATIONS)}") from None


def init_gain(activation: str) -> float:
  """Fan-in gain: sqrt(2) for the rectifiers, 1 for everything else."""
  return float(np.sqrt(2.0)) if activation in KINKED_ACTIVATIONS else 1.0


def layer_name(l: int) -> str:
  """Name of layer l (1-based; H+1 is the output layer) in the variables."""
  return f"layer_{l}"


class MLP(nn.Module):
  """A fully connected network with a linear output layer.

  Hashable (a flax module is a frozen dataclass), so it can be a static jit
  argument.

  Attributes:
    d_in: input dimension d_x.
    widths: hidden widths (d_1, ..., d_H); ``()`` is a linear model.
    d_out: output dimension d_y.
    activation: one of ``ACTIVATIONS``.
    bias: whether every layer has a bias.
    skip: add the linear skip connection X S (no bias) to the output.
  """
  d_in: int
  widths: tuple[int, ...]
  d_out: int
  activation: str = "tanh"
  bias: bool = True
  skip: bool = False

  def __post_init__(self):
    object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
    for name, value in (("d_in", self.d_in), ("d_out", self.d_out)):
      if int(value) <= 0:
        raise ValueError(f"{name} must be positive, got {value}")
    if any(w <= 0 for w in self.widths):
      raise ValueError(f"hidden widths must be positive, got {self.widths}")
    get_activation(self.activation)
    if not isinstance(self.skip, (bool, np.bool_)):
      raise ValueError(f"skip must be True or False, got {self.skip!r}")
    object.__setattr__(self, "skip", bool(self.skip))
    super().__post_init__()

  @property
  def depth(self) -> int:
    """Number of hidden layers H."""
    return len(self.widths)

  @property
  def layer_sizes(self) -> tuple[int, ...]:
    """(d_0, d_1, ..., d_{H+1})."""
    return (self.d_in, *self.widths, self.d_out)

  @property
  def n_params(self) -> int:
    """Exact parameter count: sum_l d_{l-1} d_l (+ d_l with biases), plus
    d_x d_y with the skip."""
    sizes = self.layer_sizes
    return sum(a * b + (b if self.bias else 0)
               for a, b in zip(sizes[:-1], sizes[1:])) + (
                   self.d_in * self.d_out if self.skip else 0)

  @nn.compact
  def forward(self, x: jax.Array, masks: Sequence[jax.Array] | None = None,
              slopes: jax.Array | None = None
              ) -> tuple[jax.Array, list[jax.Array], list[jax.Array]]:
    """Returns ``(yhat, pre_activations, hidden)``.

    ``pre_activations[l-1] = Z^(l)`` and ``hidden[l-1] = h^(l)`` for the hidden
    layers l = 1..H (after masking when ``masks`` is given). With ``slopes``
    (m, d_1 + ... + d_H), h^(l) = Z^(l) * slopes[:, layer l's columns]: the
    smooth piece of that activation pattern.
    """
    sigma = get_activation(self.activation)
    h, pre, hidden = x, [], []
    offsets = np.cumsum((0, *self.widths))
    for l, width in enumerate(self.widths, start=1):
      z = nn.Dense(width, use_bias=self.bias, name=layer_name(l),
                   kernel_init=_fan_in_normal(init_gain(self.activation)),
                   param_dtype=TRAIN_DTYPE)(h)
      h = (sigma(z) if slopes is None
           else z * slopes[:, offsets[l - 1]:offsets[l]].astype(z.dtype))
      if masks is not None:
        h = h * masks[l - 1]
      pre.append(z)
      hidden.append(h)
    yhat = nn.Dense(self.d_out, use_bias=self.bias,
                    name=layer_name(self.depth + 1),
                    kernel_init=_fan_in_normal(1.0),
                    param_dtype=TRAIN_DTYPE)(h)
    if self.skip:
      # Unmasked and width-free: padded programs leave it as it is.
      yhat = yhat + nn.Dense(self.d_out, use_bias=False, name=SKIP,
                             kernel_init=_fan_in_normal(1.0),
                             param_dtype=TRAIN_DTYPE)(x)
    return yhat, pre, hidden

  def __call__(self, x: jax.Array,
               masks: Sequence[jax.Array] | None = None) -> jax.Array:
    """Network output Yhat, shape (m, d_out)."""
    return self.forward(x, masks)[0]

  def features(self, x: jax.Array) -> jax.Array:
    """Design of the output layer: [h^(H), X (with the skip), 1 (with bias)].

    h^(H) is X when H = 0. Yhat = features @ [W^(H+1); S; b^(H+1)], so the
    output stays linear in the features with the skip too.
    """
    _, _, hidden = self.forward(x)
    h = hidden[-1] if hidden else x
    if self.skip:
      h = jnp.concatenate([h, x.reshape(x.shape[0], -1).astype(h.dtype)],
                          axis=1)
    if self.bias:
      h = jnp.concatenate([h, jnp.ones((h.shape[0], 1), h.dtype)], axis=1)
    return h

  def hidden(self, x: jax.Array) -> list[jax.Array]:
    """[h^(0) = X, h^(1), ..., h^(H)]."""
    return [x, *self.forward(x)[2]]

  def kink_inputs(self, x: jax.Array) -> jax.Array:
    """Every hidden pre-activation [Z^(1), ..., Z^(H)], (m, d_1 + ... + d_H),
    for relu/leaky_relu nets, else (m, 0)."""
    _, pre, _ = self.forward(x)
    if self.activation not in KINKED_ACTIVATIONS or not pre:
      return jnp.zeros((x.shape[0], 0), x.dtype)
    return jnp.concatenate(pre, axis=1)

  @property
  def kink_slopes(self) -> tuple[float, float] | None:
    """(slope below, slope above) the kink of a piecewise-linear activation,
    else None."""
    return {"relu": (0.0, 1.0),
            "leaky_relu": (LEAKY_RELU_SLOPE, 1.0)}.get(self.activation)

  def piece(self, xs: jax.Array) -> jax.Array:
    """Yhat of the smooth piece: ``xs = [X, S]``, every hidden activation
    replaced by the slope in S (the module docstring)."""
    return self._piece_forward(xs)[0]

  def piece_kink_inputs(self, xs: jax.Array) -> jax.Array:
    """[Z^(1), ..., Z^(H)] of the smooth piece ``xs = [X, S]``."""
    return jnp.concatenate(self._piece_forward(xs)[1], axis=1)

  def _piece_forward(self, xs: jax.Array):
    k = sum(self.widths)
    return self.forward(xs[:, :xs.shape[1] - k], slopes=xs[:, xs.shape[1] - k:])

  @nn.nowrap
  def apply_features_major(self, variables: Params, x: jax.Array,
                           masks: Sequence[jax.Array] | None = None
                           ) -> jax.Array:
    """``self.apply(variables, x, masks)``, each layer computed on
    transposed activations: ``h^(l)T = sigma(W^(l)T h^(l-1)T + b^(l))``.

    The same function up to the summation order of its matmuls. The
    training programs use it: with the sample axis as the long, contiguous
    one, XLA:CPU runs narrow layers faster than in the row-major
    ``nn.Dense`` form (``benchmarks/bench_layout.py``).

    Example:
      >>> import jax
      >>> model = MLP(d_in=3, widths=(4,), d_out=2, skip=True)
      >>> variables = model.init_params(jax.random.PRNGKey(0))
      >>> x = jax.numpy.ones((5, 3))
      >>> bool(jax.numpy.allclose(model.apply_features_major(variables, x),
      ...                         model.apply(variables, x), atol=1e-6))
      True
    """
    params = variables["params"]
    x = x.reshape(x.shape[0], -1)

    def dense_t(name, h, sample_axis=1):
      """(W^T h^T + b) for h^T given features-major (sample_axis 1) or h
      sample-major (0, the input, read without transposing it)."""
      z_t = jax.lax.dot_general(params[name]["kernel"], h,
                                (((0,), (1 - sample_axis,)), ((), ())))
      if "bias" in params[name]:
        z_t = z_t + params[name]["bias"][:, None]
      return z_t

    sigma = get_activation(self.activation)
    h_t, sample_axis = x, 0
    for l in range(1, self.depth + 1):
      h_t = sigma(dense_t(layer_name(l), h_t, sample_axis))
      sample_axis = 1
      if masks is not None:
        h_t = h_t * masks[l - 1][:, None]
    yhat_t = dense_t(layer_name(self.depth + 1), h_t, sample_axis)
    if self.skip:
      yhat_t = yhat_t + dense_t(SKIP, x, 0)
    return yhat_t.T

  @nn.nowrap
  def init_params(self, key: jax.Array, dtype=TRAIN_DTYPE,
                  true_widths: Sequence[int] | jax.Array | None = None
                  ) -> Params:
    """Seeded fan-in Gaussian weights, zero biases (module docstring).

    With ``true_widths`` (at most ``widths``, possibly traced), the initial
    parameters of the network of those hidden widths, embedded in this one:
    ``padding.pad_params(padding.widen(self, true_widths).init_params(key,
    dtype), self)`` (``lminima.core.padding``).
    JAX's threefry draws element i of a flat draw from (key, i) alone, so the
    (f, g) kernel ``normal(k, (f, g))`` is the first f g entries of the flat
    draw at this model's (F, G), read row-major in rows of g. One compiled
    program thus initializes members of every width.

    Example:
      >>> from lminima.core.padding import pad_params, widen
      >>> wide = MLP(d_in=2, widths=(5,), d_out=1)
      >>> narrow = wide.init_params(jax.random.PRNGKey(0),
      ...                           true_widths=jnp.array([3]))
      >>> same = pad_params(widen(wide, (3,)).init_params(
      ...     jax.random.PRNGKey(0)), wide)
      >>> leaves = jax.tree_util.tree_leaves
      >>> all(bool(jnp.all(a == b)) for a, b in zip(leaves(narrow),
      ...                                           leaves(same)))
      True
    """
    sizes = self.layer_sizes
    true_sizes = (sizes if true_widths is None else
                  (self.d_in, *(true_widths[l] for l in range(self.depth)),
                   self.d_out))
    keys = jax.random.split(key, len(sizes) - 1)
    gain = init_gain(self.activation)
    params = {}
    for l, (k, fan_in, fan_out) in enumerate(zip(keys, sizes[:-1], sizes[1:])):
      layer_gain = gain if l < self.depth else 1.0
      if true_widths is None:
        scale = float(layer_gain / np.sqrt(fan_in))
        kernel = scale * jax.random.normal(k, (fan_in, fan_out), dtype)
      else:
        kernel = _embedded_kernel(k, (fan_in, fan_out), true_sizes[l],
                                  true_sizes[l + 1], layer_gain, dtype)
      layer = {"kernel": kernel}
      if self.bias:
        layer["bias"] = jnp.zeros((fan_out,), dtype)
      params[layer_name(l + 1)] = layer
    if self.skip:
      # Its own stream: the layers' keys are those of the plain model.
      params[SKIP] = {"kernel": float(1.0 / np.sqrt(self.d_in)) *
                      jax.random.normal(jax.random.fold_in(key, SKIP_STREAM),
                                        (self.d_in, self.d_out), dtype)}
    return {"params": params}

  @nn.nowrap
  def check_params(self, variables: Params) -> None:
    """Raises ValueError unless ``variables`` has this model's layer shapes.

    Batched (vmapped) variables carry leading axes; trailing dims are compared.
    """
    params = variables.get("params") if isinstance(variables, Mapping) else None
    n_layers = len(self.layer_sizes) - 1
    names = {layer_name(l) for l in range(1, n_layers + 1)}
    if self.skip:
      names.add(SKIP)
    if not isinstance(params, Mapping) or set(params) != names:
      got = sorted(params) if isinstance(params, Mapping) else type(
          variables).__name__
      extra = ", 'skip'" if self.skip else ""
      raise ValueError(f"expected flax variables {{'params': {{'layer_1', ..., "
                       f"'layer_{n_layers}'{extra}}}}} for MLP(d_in="
                       f"{self.d_in}, widths={self.widths}, d_out={self.d_out}"
                       f", skip={self.skip}), got {got}")
    sizes = self.layer_sizes
    wanted = []
    for l, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:]), start=1):
      want = {"kernel": (fan_in, fan_out)}
      if self.bias:
        want["bias"] = (fan_out,)
      wanted.append((layer_name(l), want))
    if self.skip:
      wanted.append((SKIP, {"kernel": (self.d_in, self.d_out)}))
    for name, want in wanted:
      got = {k: tuple(np.shape(v)) for k, v in params[name].items()}
      if set(got) != set(want) or any(
          got[k][-len(s):] != s for k, s in want.items()):
        raise ValueError(f"{name}: expected shapes {want}, got {got}")


def _embedded_kernel(key: jax.Array, shape: tuple[int, int], fan_in, fan_out,
                     gain: float, dtype) -> jax.Array:
  """``gain / sqrt(fan_in) * normal(key, (fan_in, fan_out))`` in the top-left
  of a zero ``shape`` kernel, for traced ``fan_in`` and ``fan_out``.

  The scale is looked up in a table of every possible fan-in, computed in
  float64 and rounded to ``dtype`` as the static path rounds it.
  """
  rows = jnp.arange(shape[0])[:, None]
  cols = jnp.arange(shape[1])[None, :]
  flat = jax.random.normal(key, (shape[0] * shape[1],), dtype)
  inside = (rows < fan_in) & (cols < fan_out)
  drawn = flat[jnp.where(inside, rows * fan_out + cols, 0)]
  scales = (gain / np.sqrt(np.maximum(np.arange(shape[0] + 1), 1))).astype(
      np.dtype(dtype))
  return jnp.where(inside, jnp.asarray(scales)[fan_in] * drawn,
                   jnp.zeros((), dtype))


def _fan_in_normal(gain: float):
  return nn.initializers.variance_scaling(gain ** 2, "fan_in", "normal")


def params_to_arrays(variables: Params) -> dict[str, np.ndarray]:
  """Flat ``{"layer_1/kernel": array, "layer_1/bias": ..., ...}`` for ``np.savez``.

  Keys are the paths of the variables' ``"params"`` collection joined by "/".
  """
  flat = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(
      variables["params"])[0]:
    flat["/".join(str(getattr(k, "key", k)) for k in path)] = np.asarray(leaf)
  return flat


def params_from_arrays(arrays: Mapping[str, np.ndarray]) -> Params:
  """Inverse of ``params_to_arrays`` (accepts an open ``np.load`` archive)."""
  params: dict[str, Any] = {}
  for key in arrays.keys():
    *scopes, leaf = key.split("/")
    node = params
    for scope in scopes:
      node = node.setdefault(scope, {})
    node[leaf] = np.asarray(arrays[key])
  return {"params": params}


def cast_params(variables: Params, dtype) -> Params:
  """Returns ``variables`` with every leaf cast to ``dtype``."""
  return jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), variables)
