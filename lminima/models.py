"""Pure functional MLPs with a linear output layer (DESIGN 1.1).

A network with H hidden layers of widths d_1..d_H computes

    Z^(l) = h^(l-1) W^(l) + b^(l),   h^(l) = sigma(Z^(l)),   l = 1..H,
    Yhat  = h^(H) W^(H+1) + b^(H+1),

with h^(0) = X (m x d_x) and W^(l) of shape (d_{l-1}, d_l). Biases are all on
or all off (``bias`` flag). The output layer is always linear.

Parameters are a tuple with one dict per layer, ``({"w": W1, "b": b1}, ...,
{"w": W_{H+1}, "b": b_{H+1}})`` (no ``"b"`` key when biases are off). A tuple
keeps the layer order explicit under ``jax.tree_util`` flattening; the layer
names used on disk are ``layer_1 .. layer_{H+1}`` (see ``params_to_arrays``).

Initialization (fan-in scaling): ``W^(l)_ij ~ N(0, gain^2 / d_{l-1})`` with
``gain = sqrt(2)`` for relu and leaky_relu, 1 otherwise; biases start at 0.
The output layer uses gain 1.

Width masks: to train members of different widths in one padded program, a
member is embedded in a network of the largest widths, with 0/1 unit masks
``masks[l]`` of shape (d_l,) multiplied into h^(l). Padded weights are exactly
zero (``pad_params``) and, because masked units contribute nothing to the
output, their gradients are exactly zero too, so they stay zero under
sgd/momentum/adam.

Example:
  >>> import jax
  >>> model = MLP(d_in=3, widths=(4, 4), d_out=2, activation="tanh")
  >>> params = model.init(jax.random.PRNGKey(0))
  >>> model.apply(params, jax.numpy.ones((5, 3))).shape
  (5, 2)
  >>> model.n_params
  46
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lminima import TRAIN_DTYPE

Params = tuple  # tuple of per-layer dicts {"w": array, "b": array}

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
"""Positively homogeneous: sigma(a z) = a sigma(z) for a > 0 (DESIGN 1.3 B)."""

KINKED_ACTIVATIONS = ("relu", "leaky_relu")
"""Not differentiable at z = 0: certificates check the distance to the kink."""


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


@dataclasses.dataclass(frozen=True)
class MLP:
  """A fully connected network; hashable, so it can be a static jit argument.

  Attributes:
    d_in: input dimension d_x.
    widths: hidden widths (d_1, ..., d_H); ``()`` is a linear model.
    d_out: output dimension d_y.
    activation: one of ``ACTIVATIONS``.
    bias: whether every layer has a bias.
  """
  d_in: int
  widths: tuple[int, ...]
  d_out: int
  activation: str = "tanh"
  bias: bool = True

  def __post_init__(self):
    object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
    for name, value in (("d_in", self.d_in), ("d_out", self.d_out)):
      if int(value) <= 0:
        raise ValueError(f"{name} must be positive, got {value}")
    if any(w <= 0 for w in self.widths):
      raise ValueError(f"hidden widths must be positive, got {self.widths}")
    get_activation(self.activation)

  @property
  def depth(self) -> int:
    """Number of hidden layers H."""
    return len(self.widths)

  @property
  def layer_sizes(self) -> tuple[int, ...]:
    """(d_0, d_1, ..., d_{H+1})."""
    return (self.d_in, *self.widths, self.d_out)

  @property
  def layer_names(self) -> tuple[str, ...]:
    return tuple(f"layer_{l}" for l in range(1, self.depth + 2))

  @property
  def n_params(self) -> int:
    """Exact parameter count: sum_l d_{l-1} d_l (+ d_l with biases)."""
    sizes = self.layer_sizes
    return sum(a * b + (b if self.bias else 0)
               for a, b in zip(sizes[:-1], sizes[1:]))

  def init(self, key: jax.Array, dtype=TRAIN_DTYPE) -> Params:
    """Fan-in scaled Gaussian weights, zero biases (module docstring)."""
    sizes = self.layer_sizes
    keys = jax.random.split(key, len(sizes) - 1)
    gain = init_gain(self.activation)
    params = []
    for l, (k, fan_in, fan_out) in enumerate(zip(keys, sizes[:-1], sizes[1:])):
      scale = float((gain if l < self.depth else 1.0) / np.sqrt(fan_in))
      layer = {"w": scale * jax.random.normal(k, (fan_in, fan_out), dtype)}
      if self.bias:
        layer["b"] = jnp.zeros((fan_out,), dtype)
      params.append(layer)
    return tuple(params)

  def forward(self, params: Params, x: jax.Array,
              masks: Sequence[jax.Array] | None = None
              ) -> tuple[jax.Array, list[jax.Array], list[jax.Array]]:
    """Returns ``(yhat, pre_activations, hidden)``.

    ``pre_activations[l-1] = Z^(l)`` and ``hidden[l-1] = h^(l)`` for the hidden
    layers l = 1..H (after masking when ``masks`` is given).
    """
    self.check_params(params)
    sigma = get_activation(self.activation)
    h = x
    pre, hidden = [], []
    for l, layer in enumerate(params[:-1]):
      z = h @ layer["w"]
      if self.bias:
        z = z + layer["b"]
      h = sigma(z)
      if masks is not None:
        h = h * masks[l]
      pre.append(z)
      hidden.append(h)
    out = params[-1]
    yhat = h @ out["w"]
    if self.bias:
      yhat = yhat + out["b"]
    return yhat, pre, hidden

  def apply(self, params: Params, x: jax.Array,
            masks: Sequence[jax.Array] | None = None) -> jax.Array:
    """Network output Yhat, shape (m, d_out)."""
    return self.forward(params, x, masks)[0]

  def check_params(self, params: Params) -> None:
    """Raises ValueError unless ``params`` has this model's layer shapes."""
    sizes = self.layer_sizes
    if not isinstance(params, (tuple, list)) or len(params) != len(sizes) - 1:
      raise ValueError(f"expected {len(sizes) - 1} layers for {self}, got "
                       f"{type(params).__name__} of length "
                       f"{len(params) if hasattr(params, '__len__') else '?'}")
    for l, (layer, fan_in, fan_out) in enumerate(
        zip(params, sizes[:-1], sizes[1:]), start=1):
      want = {"w": (fan_in, fan_out)}
      if self.bias:
        want["b"] = (fan_out,)
      got = {k: tuple(np.shape(v)) for k, v in layer.items()}
      # Batched (vmapped) params carry leading axes; compare trailing dims.
      if set(got) != set(want) or any(
          got[k][-len(s):] != s for k, s in want.items()):
        raise ValueError(f"layer_{l}: expected shapes {want}, got {got}")


def widen(model: MLP, widths: Sequence[int]) -> MLP:
  """The same architecture with other hidden widths."""
  return dataclasses.replace(model, widths=tuple(widths))


def width_masks(true_widths: Sequence[int], max_widths: Sequence[int],
                dtype=TRAIN_DTYPE) -> tuple[jax.Array, ...]:
  """0/1 unit masks selecting the first ``true_widths[l]`` of ``max_widths[l]``."""
  if len(true_widths) != len(max_widths):
    raise ValueError(f"depth mismatch: {true_widths} vs {max_widths}")
  if any(t > m for t, m in zip(true_widths, max_widths)):
    raise ValueError(f"true widths {true_widths} exceed padded {max_widths}")
  return tuple((jnp.arange(m) < t).astype(dtype)
               for t, m in zip(true_widths, max_widths))


def pad_params(params: Params, padded: MLP) -> Params:
  """Embeds ``params`` in the larger ``padded`` model, padding with zeros."""
  sizes = padded.layer_sizes
  out = []
  for layer, fan_in, fan_out in zip(params, sizes[:-1], sizes[1:]):
    w = layer["w"]
    new = {"w": jnp.zeros((fan_in, fan_out), w.dtype)
                .at[:w.shape[0], :w.shape[1]].set(w)}
    if "b" in layer:
      b = layer["b"]
      new["b"] = jnp.zeros((fan_out,), b.dtype).at[:b.shape[0]].set(b)
    out.append(new)
  return tuple(out)


def unpad_params(params: Params, model: MLP) -> Params:
  """Inverse of ``pad_params``: the active block of each layer for ``model``."""
  sizes = model.layer_sizes
  out = []
  for layer, fan_in, fan_out in zip(params, sizes[:-1], sizes[1:]):
    new = {"w": layer["w"][:fan_in, :fan_out]}
    if "b" in layer:
      new["b"] = layer["b"][:fan_out]
    out.append(new)
  return tuple(out)


def params_to_arrays(params: Params) -> dict[str, np.ndarray]:
  """Flat ``{"layer_1/w": array, "layer_1/b": ..., ...}`` for ``np.savez``."""
  return {f"layer_{l}/{k}": np.asarray(v)
          for l, layer in enumerate(params, start=1) for k, v in layer.items()}


def params_from_arrays(arrays: Mapping[str, np.ndarray]) -> Params:
  """Inverse of ``params_to_arrays`` (accepts an open ``np.load`` archive)."""
  layers: dict[int, dict[str, np.ndarray]] = {}
  for key in arrays.keys():
    name, _, leaf = key.partition("/")
    if not name.startswith("layer_") or leaf not in ("w", "b"):
      raise ValueError(f"unexpected parameter key {key!r}")
    layers.setdefault(int(name[len("layer_"):]), {})[leaf] = np.asarray(
        arrays[key])
  if sorted(layers) != list(range(1, len(layers) + 1)):
    raise ValueError(f"layers must be numbered 1..L, got {sorted(layers)}")
  return tuple(layers[l] for l in range(1, len(layers) + 1))


def cast_params(params: Params, dtype) -> Params:
  """Returns ``params`` with every leaf cast to ``dtype``."""
  return jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), params)
