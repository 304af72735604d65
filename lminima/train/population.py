"""What a training population is: its members, shared settings and results.

A *population* is a list of ``Member(depth, width, seed, learning_rate)``
sharing one ``TrainConfig``. Member i is the MLP with hidden widths
``(width,) * depth`` (``member_model``), initialized by
``member_model(...).init_params(jax.random.PRNGKey(seed), float32)`` and
trained in float32 on the squared loss

    L_i(theta) = c ||Yhat_i(theta) - Y||_F^2,  c = loss_scale(normalization, m),

with an optax optimizer (sgd, heavy-ball momentum or adam) at its own learning
rate. With ``batch_size=B`` each step uses B rows of a per-member permutation
of the data (a fresh permutation per epoch, derived from the seed; the last
``m mod B`` rows of each permutation are skipped) and the unbiased estimate

    c * (m / B) * sum_{i in batch} ||yhat_i - y_i||^2

of the full loss (``losses.squared_loss`` with ``total_m=m``).

Divergence. Member i is *diverged* when, after an update, its loss (the
full-batch loss, or the minibatch estimate) or gradient is NaN/inf, or its
loss exceeds ``divergence_factor * L_i(theta_0)``. From then on its parameters
(those of that evaluation) and optimizer state are frozen and it is flagged.

A member's result never depends on who else is in the population, up to
float32 rounding: its initial parameters and minibatch order are functions of
its seed alone, and members never mix (only the shapes of the batched kernels,
hence their rounding, depend on the company).

``training_flops`` counts the work of a member, which is what the planner
(``lminima.train.planner``) weighs against compile time.

Example:
  >>> config = TrainConfig(optimizer="sgd", learning_rate=0.05, steps=100)
  >>> member_model(3, 1, Member(depth=2, width=4, seed=0), config).widths
  (4, 4)
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from lminima.core import models
from lminima.core.losses import NORMALIZATIONS

OPTIMIZERS = ("sgd", "momentum", "adam")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Settings shared by every member of a population.

  These defaults are the project's training defaults (the sweep reads them
  from here).

  Attributes:
    activation: hidden activation, one of ``models.ACTIVATIONS``.
    bias: whether every layer has a bias.
    skip: whether every member has the linear skip connection X S from the
      input to the output (``models.MLP``); S does not depend on the width,
      so padded programs carry it as it is.
    normalization: ``"mean"`` or ``"sum"`` (``losses.loss_scale``).
    optimizer: ``"sgd"``, ``"momentum"`` (heavy ball) or ``"adam"`` (optax
      defaults b1=0.9, b2=0.999, eps=1e-8).
    learning_rate: step size of members whose own ``learning_rate`` is None.
    momentum: heavy-ball coefficient of ``"momentum"``, in [0, 1).
    steps: optimizer steps per member.
    batch_size: None for full-batch steps, else the minibatch size B <= m.
    chunk_steps: steps per compiled ``lax.scan`` call; losses are recorded and
      progress reported between chunks.
    divergence_factor: a member diverges when its loss exceeds this multiple of
      its initial loss (or is NaN/inf).

  Example:
    >>> config = TrainConfig()
    >>> config.optimizer, config.learning_rate, config.steps
    ('adam', 0.01, 3000)
  """
  activation: str = "tanh"
  bias: bool = True
  skip: bool = False
  normalization: str = "mean"
  optimizer: str = "adam"
  learning_rate: float = 0.01
  momentum: float = 0.9
  steps: int = 3000
  batch_size: int | None = None
  chunk_steps: int = 250
  divergence_factor: float = 1e4

  def __post_init__(self):
    models.get_activation(self.activation)
    if not isinstance(self.skip, bool):
      raise ValueError(f"skip must be True or False, got {self.skip!r}")
    if self.normalization not in NORMALIZATIONS:
      raise ValueError(f"unknown normalization {self.normalization!r}; choose "
                       f"one of {NORMALIZATIONS}")
    if self.optimizer not in OPTIMIZERS:
      raise ValueError(f"unknown optimizer {self.optimizer!r}; choose one of "
                       f"{OPTIMIZERS}")
    check_learning_rate(self.learning_rate, "TrainConfig.learning_rate")
    if not 0.0 <= self.momentum < 1.0:
      raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
    for name in ("steps", "chunk_steps"):
      value = getattr(self, name)
      if isinstance(value, bool) or int(value) != value or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if self.batch_size is not None and (
        isinstance(self.batch_size, bool) or
        int(self.batch_size) != self.batch_size or self.batch_size < 1):
      raise ValueError(
          f"batch_size must be None or a positive integer, got "
          f"{self.batch_size!r}")
    if not (math.isfinite(self.divergence_factor) and
            self.divergence_factor > 1):
      raise ValueError(f"divergence_factor must be finite and > 1, got "
                       f"{self.divergence_factor}")


@dataclasses.dataclass(frozen=True)
class Member:
  """One network of a population: ``depth`` hidden layers of ``width`` units.

  ``learning_rate=None`` uses ``TrainConfig.learning_rate``. ``depth=0`` is the
  linear model (its ``width`` is ignored).
  """
  depth: int
  width: int
  seed: int
  learning_rate: float | None = None

  def __post_init__(self):
    for name in ("depth", "width", "seed"):
      value = getattr(self, name)
      if isinstance(value, bool) or int(value) != value:
        raise ValueError(f"Member.{name} must be an integer, got {value!r}")
    if self.depth < 0:
      raise ValueError(f"Member.depth must be >= 0, got {self.depth}")
    if self.width < 1:
      raise ValueError(f"Member.width must be >= 1, got {self.width}")
    if self.learning_rate is not None:
      check_learning_rate(self.learning_rate, "Member.learning_rate")

  @property
  def true_width(self) -> int:
    """The width that shapes the network: ``width``, or 0 for depth 0."""
    return self.width if self.depth else 0


@dataclasses.dataclass
class MemberResult:
  """A trained member.

  Attributes:
    member: the ``Member``.
    model: ``MLP`` of the member's true widths.
    params: trained flax variables of ``model`` (numpy float32, unpadded).
    loss: full-batch training loss at ``params``.
    grad_norm: full-batch gradient norm ||grad L(params)||_2 (float32 maths).
    diverged: whether the member was frozen by the divergence test.
    steps: optimizer steps applied (fewer than ``TrainConfig.steps`` when
      diverged).
    loss_history: full-batch loss after each chunk.
    wall_s: the member's equal share of its program's wall time (compile
      included), scaled so that the shares of a population add up to the
      wall time of its training call (programs may run side by side).
  """
  member: Member
  model: models.MLP
  params: models.Params
  loss: float
  grad_norm: float
  diverged: bool
  steps: int
  loss_history: np.ndarray
  wall_s: float


def member_model(d_x: int, d_y: int, member: Member,
                 config: TrainConfig) -> models.MLP:
  """The MLP of ``member``: widths ``(width,) * depth``, activation, bias and
  skip from ``config``.

  Example:
    >>> member_model(3, 1, Member(2, 4, seed=0), TrainConfig()).widths
    (4, 4)
  """
  return models.MLP(d_in=d_x, widths=(member.width,) * member.depth,
                    d_out=d_y, activation=config.activation, bias=config.bias,
                    skip=config.skip)


def training_flops(model: models.MLP, batch: int, steps: int = 1) -> float:
  """FLOPs of ``steps`` training steps of ``model`` on ``batch`` samples.

  Forward: 2 * batch * sum_l d_{l-1} d_l (2 FLOPs per multiply-add of the
  matmuls, the skip's d_x d_y included; activations and biases are not
  counted). Backward ~ 2x forward
  (gradients with respect to weights and to hidden layers), so a step costs
  3x forward.

  Example:
    >>> training_flops(models.MLP(d_in=2, widths=(3,), d_out=1), batch=10)
    540.0
  """
  sizes = model.layer_sizes
  macs = sum(a * b for a, b in zip(sizes[:-1], sizes[1:])) + (
      model.d_in * model.d_out if model.skip else 0)
  return float(3 * 2 * batch * macs * steps)


def hidden_unit_samples(model: models.MLP, batch: int) -> float:
  """Hidden units times samples of one training step: the size of its
  elementwise work (activations and their derivatives), which
  ``training_flops`` does not count.

  Example:
    >>> hidden_unit_samples(models.MLP(d_in=2, widths=(3, 3), d_out=1), 10)
    60.0
  """
  return float(batch * sum(model.widths))


def check_learning_rate(value, name: str) -> None:
  """Raises ValueError unless ``value`` is a finite positive number."""
  if isinstance(value, bool) or not (
      isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
    raise ValueError(f"{name} must be a finite positive number, got {value!r}")
