"""Population training: many networks in one compiled program (DESIGN 2).

A *population* is a list of ``Member(depth, width, seed, learning_rate)``.
Member i is the MLP with hidden widths ``(width,) * depth`` (``member_model``),
initialized by ``member_model(...).init(jax.random.PRNGKey(seed), float32)``
and trained on the squared loss

    L_i(theta) = c ||Yhat_i(theta) - Y||_F^2,  c = loss_scale(normalization, m),

with an optax optimizer (sgd, momentum, adam) at its own learning rate. With
``batch_size=B`` each step uses B rows of a per-member permutation of the data
(a fresh permutation per epoch, derived from the seed; the last ``m mod B``
rows of each permutation are skipped) and the unbiased estimate
``c * (m / B) * sum_{i in batch} ||yhat_i - y_i||^2`` of the full loss.

Programs. Members are grouped into programs; each group is ONE jit-compiled
chunk function that ``vmap``s a training step over its members and
``lax.scan``s it over ``chunk_steps`` steps (plus one small compiled init
that draws the members' parameters and first gradients). The step loop is
rotated (update, then evaluate loss and gradient at the new parameters), so a
full-batch chunk ends with its loss and gradient already computed and the loss
history costs nothing extra. State buffers are donated, so a chunk updates them
in place; the host dispatches every chunk of every program before reading any
result, so compiling one program overlaps running the previous one. Different
depths are always different programs. Widths of one depth are either

* ``"per_width"``: one program per width (no wasted FLOPs, one compile each);
* ``"masked"``: one program per depth, every member embedded in the widest
  network with ``models.pad_params`` and 0/1 unit masks as in
  ``models.width_masks`` (padded weights start at zero and get exactly zero
  updates, so they stay zero under sgd, momentum and adam); or
* ``"auto"``: the cheapest split of the sorted widths into contiguous buckets
  (each bucket padded to its widest member) under the cost model below.
  ``per_width`` and ``masked`` are its two extreme splits.

Cost model (``CostModel``): a program of ``n`` members padded to width ``w``
and ``T`` steps is predicted to take

    t = compile_s + T * (step_s + n * F(w) / flops_per_s),

where ``F(w)`` is ``training_flops`` of one member for one step (forward and
backward, 2 FLOPs per multiply-add, backward = 2x forward). ``compile_s`` is the
per-program compile and dispatch overhead, ``step_s`` the fixed cost of one
scan step (loop and kernel launches: large on accelerators, tiny on CPU) and
``flops_per_s`` the throughput of the batched training step.
``DEFAULT_COST_MODELS["cpu"]`` was measured with ``calibrate_cost_model`` on a
2-core AMD EPYC (Zen 4, AVX-512) under jax 0.10.2; other backends are
calibrated on first use (a few tiny programs, about a second) and cached for
the process. On that CPU a compile costs about as much as training 8 members
of width 16 for 500 steps at m=1000, so "auto" merges the small widths and
keeps the wide ones apart (padding would multiply their FLOPs); where a step
costs about the same whatever the width (accelerators), the measured model
merges everything of one depth.

Divergence. Member i is *diverged* when, after an update, its loss (the
full-batch loss, or the minibatch estimate) or gradient is NaN/inf, or its
loss exceeds ``divergence_factor * L_i(theta_0)``. From then on its parameters
(those of that evaluation) and optimizer state are frozen (``jnp.where`` per
member) and it is flagged; the other members are computed exactly as if it
were healthy, since vmapped members never mix.

Results never depend on who else is in the population up to float32 rounding:
the initial parameters and the minibatch order of a member are functions of its
seed alone; only the batched kernels' shapes (hence rounding) differ.

Example:
  >>> from lminima import data
  >>> ds = data.synthetic(m=64, d_x=3, d_y=1, seed=0)
  >>> members = [Member(depth=1, width=8, seed=s) for s in range(3)]
  >>> config = TrainConfig(steps=50, chunk_steps=10)
  >>> results = train_population(ds, members, config)
  >>> [r.member.seed for r in results], len(results[0].loss_history)
  ([0, 1, 2], 5)
  >>> bool(results[0].loss < results[0].loss_history[0])
  True
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lminima import TRAIN_DTYPE
from lminima import models
from lminima.data import Dataset
from lminima.losses import NORMALIZATIONS, loss_scale

OPTIMIZERS = ("sgd", "momentum", "adam")
WIDTH_STRATEGIES = ("auto", "per_width", "masked")

# Minibatch orders are drawn from fold_in(PRNGKey(seed), _DATA_ORDER_STREAM),
# a stream separate from the initialization key PRNGKey(seed) itself.
_DATA_ORDER_STREAM = 1


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Settings shared by every member of a population.

  Attributes:
    activation: hidden activation, one of ``models.ACTIVATIONS``.
    bias: whether every layer has a bias.
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
  """
  activation: str = "tanh"
  bias: bool = True
  normalization: str = "mean"
  optimizer: str = "sgd"
  learning_rate: float = 0.05
  momentum: float = 0.9
  steps: int = 2000
  batch_size: int | None = None
  chunk_steps: int = 250
  divergence_factor: float = 1e4

  def __post_init__(self):
    models.get_activation(self.activation)
    if self.normalization not in NORMALIZATIONS:
      raise ValueError(f"unknown normalization {self.normalization!r}; choose "
                       f"one of {NORMALIZATIONS}")
    if self.optimizer not in OPTIMIZERS:
      raise ValueError(f"unknown optimizer {self.optimizer!r}; choose one of "
                       f"{OPTIMIZERS}")
    _check_learning_rate(self.learning_rate, "TrainConfig.learning_rate")
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
      _check_learning_rate(self.learning_rate, "Member.learning_rate")


@dataclasses.dataclass
class MemberResult:
  """A trained member.

  Attributes:
    member: the ``Member``.
    model: ``MLP`` of the member's true widths.
    params: trained parameters of ``model`` (numpy float32, unpadded).
    loss: full-batch training loss at ``params``.
    grad_norm: full-batch gradient norm ||grad L(params)||_2 (float32 maths).
    diverged: whether the member was frozen by the divergence test.
    steps: optimizer steps applied (fewer than ``TrainConfig.steps`` when
      diverged).
    loss_history: full-batch loss after each chunk.
    wall_s: the member's equal share of its program's wall time (compile
      included).
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


@dataclasses.dataclass(frozen=True)
class CostModel:
  """Predicted program time ``compile_s + T * (step_s + n F(w) / flops_per_s)``.

  Attributes:
    compile_s: per-program compile and dispatch overhead, seconds.
    step_s: fixed cost of one scan step of a program, seconds.
    flops_per_s: throughput of the batched training step, FLOP/s.
  """
  compile_s: float
  step_s: float
  flops_per_s: float

  def predict(self, n_members: int, flops_per_member_step: float,
              steps: int) -> float:
    """Predicted seconds for one program (module docstring)."""
    return self.compile_s + steps * (
        self.step_s + n_members * flops_per_member_step / self.flops_per_s)


DEFAULT_COST_MODELS: Mapping[str, CostModel] = {
    # Median of calibrate_cost_model() runs on a 2-core AMD EPYC (Zen 4,
    # AVX-512), jax 0.10.2, 2026-11-27, with other jobs sharing the cores.
    "cpu": CostModel(compile_s=1.0, step_s=1.4e-5, flops_per_s=3.6e10),
}


def member_model(d_x: int, d_y: int, member: Member,
                 config: TrainConfig) -> models.MLP:
  """The MLP of ``member``: widths ``(width,) * depth``, activation and bias
  from ``config``.

  Example:
    >>> member_model(3, 1, Member(2, 4, seed=0), TrainConfig()).widths
    (4, 4)
  """
  return models.MLP(d_in=d_x, widths=(member.width,) * member.depth,
                    d_out=d_y, activation=config.activation, bias=config.bias)


def training_flops(model: models.MLP, batch: int, steps: int = 1) -> float:
  """FLOPs of ``steps`` training steps of ``model`` on ``batch`` samples.

  Forward: 2 * batch * sum_l d_{l-1} d_l (2 FLOPs per multiply-add of the
  matmuls; activations and biases are not counted). Backward ~ 2x forward
  (gradients with respect to weights and to hidden layers), so a step costs
  3x forward.

  Example:
    >>> training_flops(models.MLP(d_in=2, widths=(3,), d_out=1), batch=10)
    540.0
  """
  sizes = model.layer_sizes
  macs = sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))
  return float(3 * 2 * batch * macs * steps)


def train_population(data: Dataset, members: Sequence[Member],
                     config: TrainConfig, *, width_strategy: str = "auto",
                     progress: Callable[[int, int], None] | None = None,
                     cost_model: CostModel | None = None
                     ) -> list[MemberResult]:
  """Trains every member and returns their results in the order of ``members``.

  Args:
    data: training set; cast to float32 for training.
    members: the population (duplicates allowed).
    config: shared settings.
    width_strategy: ``"auto"``, ``"per_width"`` or ``"masked"`` (module
      docstring).
    progress: called as each chunk's result arrives with ``(done, total)``
      counted in member-steps (one member advanced by one step). Results are
      read after every program has been dispatched (and so compiled).
    cost_model: overrides the backend's cost model for ``"auto"``.

  Returns:
    One ``MemberResult`` per member.

  Example:
    >>> from lminima import data
    >>> ds = data.synthetic(m=32, d_x=2, d_y=1)
    >>> out = train_population(ds, [Member(1, 4, 0), Member(1, 8, 0)],
    ...                        TrainConfig(steps=20, chunk_steps=10))
    >>> [r.model.widths for r in out], len(out[0].loss_history)
    ([(4,), (8,)], 2)
  """
  if width_strategy not in WIDTH_STRATEGIES:
    raise ValueError(f"unknown width_strategy {width_strategy!r}; choose one "
                     f"of {WIDTH_STRATEGIES}")
  batch = _batch_size(data, config)
  if cost_model is None and width_strategy == "auto":
    cost_model = backend_cost_model()
  groups = plan_groups(members, data.d_x, data.d_y, config,
                       width_strategy=width_strategy, batch=batch,
                       cost_model=cost_model)
  x = jnp.asarray(data.x, TRAIN_DTYPE)
  y = jnp.asarray(data.y, TRAIN_DTYPE)
  n_chunks = -(-config.steps // config.chunk_steps)
  # Equal chunks covering `steps`, so one compiled program runs every chunk;
  # the at most n_chunks - 1 surplus slots of the last chunk are no-ops.
  chunk_len = -(-config.steps // n_chunks)
  hyper = (np.int32(config.steps), np.float32(config.divergence_factor))
  # Dispatch every program first: execution is asynchronous, so compiling
  # program k + 1 overlaps running program k. Then collect in order.
  dispatched = []
  call_start = time.perf_counter()
  for group in groups:
    dispatch_start = time.perf_counter()
    group_members = [members[i] for i in group.member_indices]
    spec, state = _start_program(group_members, group.padded_model, config,
                                 x, y, batch, chunk_len)
    outputs = []
    for _ in range(n_chunks):
      state, end_loss, end_grad_norm = _run_chunk(state, x, y, *hyper,
                                                  spec=spec)
      outputs.append((end_loss, end_grad_norm))
    dispatched.append((group, group_members, state, outputs, dispatch_start))
  total = config.steps * len(members)
  done = 0
  previous_finished = call_start
  results: list[MemberResult | None] = [None] * len(members)
  for group, group_members, state, outputs, dispatch_start in dispatched:
    history = []
    for chunk, (end_loss, _) in enumerate(outputs):
      history.append(np.asarray(end_loss))  # waits for this chunk only
      if progress is not None:
        progress(done + min((chunk + 1) * chunk_len, config.steps) *
                 len(group_members), total)
    done += config.steps * len(group_members)
    params, diverged, applied, grad_norm = jax.device_get(
        (state.params, state.diverged, state.applied, outputs[-1][1]))
    # A program's wall time runs from the end of the previous one (or its own
    # dispatch, if later) to its end, so the shares add up to the call's.
    finished = time.perf_counter()
    wall_share = (finished - max(previous_finished, dispatch_start)) / len(
        group_members)
    previous_finished = finished
    history = np.stack(history, axis=1)
    for k, (i, member) in enumerate(zip(group.member_indices, group_members)):
      model = member_model(data.d_x, data.d_y, member, config)
      member_params = models.unpad_params(
          jax.tree_util.tree_map(lambda leaf: leaf[k], params), model)
      results[i] = MemberResult(
          member=member, model=model, params=member_params,
          loss=float(history[k, -1]), grad_norm=float(grad_norm[k]),
          diverged=bool(diverged[k]), steps=int(applied[k]),
          loss_history=history[k], wall_s=wall_share)
  return results  # type: ignore[return-value]


@dataclasses.dataclass(frozen=True)
class ProgramGroup:
  """Members trained by one compiled program.

  Attributes:
    padded_model: the network every member is embedded in (its widest).
    member_indices: positions of the members in the population.
    predicted_s: the cost model's prediction (None without a cost model).
  """
  padded_model: models.MLP
  member_indices: tuple[int, ...]
  predicted_s: float | None


def plan_groups(members: Sequence[Member], d_x: int, d_y: int,
                config: TrainConfig, *, width_strategy: str = "auto",
                batch: int, cost_model: CostModel | None = None
                ) -> list[ProgramGroup]:
  """Splits a population into programs (module docstring, "Programs").

  For each depth, the distinct widths w_1 < ... < w_k are split into
  contiguous buckets; a bucket is one program padded to its widest width.
  ``"per_width"`` takes singletons, ``"masked"`` one bucket, ``"auto"`` the
  split minimizing the summed ``cost_model.predict`` (dynamic programming over
  the k + 1 cut points, O(k^2)).

  Args:
    members: the population.
    d_x: input dimension.
    d_y: output dimension.
    config: shared settings (architecture, steps).
    width_strategy: ``"auto"``, ``"per_width"`` or ``"masked"``.
    batch: samples per step (m for full batch), for the FLOP counts.
    cost_model: required for ``"auto"``; used for ``predicted_s`` otherwise.

  Returns:
    Groups ordered by depth, then width.

  Example:
    >>> ms = [Member(1, w, 0) for w in (4, 8, 64)]
    >>> [g.padded_model.widths for g in plan_groups(
    ...     ms, 2, 1, TrainConfig(), width_strategy="masked", batch=100)]
    [(64,)]
  """
  if width_strategy not in WIDTH_STRATEGIES:
    raise ValueError(f"unknown width_strategy {width_strategy!r}; choose one "
                     f"of {WIDTH_STRATEGIES}")
  if width_strategy == "auto" and cost_model is None:
    raise ValueError('width_strategy="auto" needs a cost_model')
  if not members:
    raise ValueError("members is empty")
  for member in members:
    if not isinstance(member, Member):
      raise ValueError(f"expected Member, got {type(member).__name__}")
  # A linear model (depth 0) has no width: all its members share one network.
  by_depth: dict[int, dict[int, list[int]]] = {}
  for i, member in enumerate(members):
    width = member.width if member.depth else 0
    by_depth.setdefault(member.depth, {}).setdefault(width, []).append(i)

  def bucket_group(depth, widths, indices_by_width):
    indices = tuple(sorted(i for w in widths for i in indices_by_width[w]))
    padded = member_model(d_x, d_y, Member(depth, max(max(widths), 1), 0),
                          config)
    predicted = None if cost_model is None else cost_model.predict(
        len(indices), training_flops(padded, batch), config.steps)
    return ProgramGroup(padded, indices, predicted)

  groups = []
  for depth in sorted(by_depth):
    indices_by_width = by_depth[depth]
    widths = sorted(indices_by_width)
    if width_strategy == "per_width":
      cuts = list(range(len(widths) + 1))
    elif width_strategy == "masked":
      cuts = [0, len(widths)]
    else:
      cuts = _cheapest_cuts(
          [bucket_group(depth, widths[i:j], indices_by_width).predicted_s
           for j in range(len(widths) + 1) for i in range(j)], len(widths))
    groups += [bucket_group(depth, widths[a:b], indices_by_width)
               for a, b in zip(cuts[:-1], cuts[1:])]
  return groups


def _cheapest_cuts(costs: Sequence[float], k: int) -> list[int]:
  """Cut points 0 = c_0 < ... < c_r = k minimizing sum cost(c_{s-1}, c_s).

  ``costs`` lists cost(i, j) for j = 1..k, i = 0..j-1 in that order.
  """
  cost = {}
  it = iter(costs)
  for j in range(1, k + 1):
    for i in range(j):
      cost[i, j] = next(it)
  best = [0.0] + [math.inf] * k
  previous = [0] * (k + 1)
  for j in range(1, k + 1):
    for i in range(j):
      if best[i] + cost[i, j] < best[j]:
        best[j], previous[j] = best[i] + cost[i, j], i
  cuts = [k]
  while cuts[-1]:
    cuts.append(previous[cuts[-1]])
  return cuts[::-1]


def backend_cost_model() -> CostModel:
  """The cost model of the default JAX backend.

  ``DEFAULT_COST_MODELS`` where it has the backend, else
  ``calibrate_cost_model()`` once per process.
  """
  backend = jax.default_backend()
  if backend in DEFAULT_COST_MODELS:
    return DEFAULT_COST_MODELS[backend]
  return _calibrated_cost_model(backend)


@functools.cache
def _calibrated_cost_model(backend: str) -> CostModel:
  del backend  # the cache key: one calibration per backend
  return calibrate_cost_model()


def calibrate_cost_model(steps: int = 200) -> CostModel:
  """Measures a ``CostModel`` on the default backend (about a second).

  Runs two programs on synthetic data (m=512, d_x=8, d_y=2, tanh, sgd):
  compile time of a small program's init and chunk programs (``compile_s``);
  time per step of a tiny
  one, 1 member of width 4 (``step_s``); and time per step of a FLOP-heavy
  one, 8 members of depth 2 and width 128, whose excess over ``step_s`` gives
  ``flops_per_s``.

  Example:
    >>> calibrate_cost_model(steps=20).flops_per_s > 0
    True
  """
  m, d_x, d_y = 512, 8, 2
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((m, d_x)), TRAIN_DTYPE)
  y = jnp.asarray(rng.standard_normal((m, d_y)), TRAIN_DTYPE)
  config = TrainConfig(steps=steps, chunk_steps=steps)

  def program(depth, width, n):
    members = [Member(depth, width, seed) for seed in range(n)]
    model = member_model(d_x, d_y, members[0], config)
    args = (x, y, np.int32(steps), np.float32(config.divergence_factor))
    spec, state = _start_program(members, model, config, x, y, m, steps)
    start = time.perf_counter()
    # Ahead-of-time compiles are never cached: both programs are compiled anew.
    _init_state.lower(
        np.arange(n), np.ones(n, np.float32), np.float32(0), x, y, spec=spec,
        member_widths=(width,) * n).compile()
    compiled = _run_chunk.lower(state, *args, spec=spec).compile()
    compile_s = time.perf_counter() - start
    jax.block_until_ready(compiled(state, *args))  # warm-up
    _, state = _start_program(members, model, config, x, y, m, steps)
    jax.block_until_ready(state)
    start = time.perf_counter()
    jax.block_until_ready(compiled(state, *args))
    return compile_s, time.perf_counter() - start, training_flops(model, m,
                                                                 steps) * n

  compile_s, tiny_s, _ = program(1, 4, 1)
  _, heavy_s, heavy_flops = program(2, 128, 8)
  step_s = tiny_s / steps
  return CostModel(compile_s=compile_s, step_s=step_s,
                   flops_per_s=heavy_flops / max(heavy_s - tiny_s, 1e-9))


def _batch_size(data: Dataset, config: TrainConfig) -> int:
  batch = data.m if config.batch_size is None else config.batch_size
  if batch > data.m:
    raise ValueError(f"batch_size {batch} exceeds the {data.m} samples")
  return batch


def _make_optimizer(name: str) -> optax.GradientTransformation:
  """The optimizer ``name`` with its hyperparameters injected into its state.

  The values given here are placeholders: ``_init_state`` writes each
  member's learning rate (and the momentum) into the state, and ``update``
  reads them from there, so per-member rates are vmapped state. optax casts
  the hyperparameters to the parameters' dtype (float32).
  """
  if name == "sgd":
    return optax.inject_hyperparams(optax.sgd)(learning_rate=1.0)
  if name == "momentum":
    return optax.inject_hyperparams(optax.sgd)(learning_rate=1.0,
                                               momentum=0.0)
  return optax.inject_hyperparams(optax.adam)(learning_rate=1.0)


class _State(NamedTuple):
  """Per-member training state (leading member axis) and the shared step.

  The loop is rotated: ``loss`` and ``grads`` are the (minibatch) loss and
  gradient at the current ``params``, evaluated after the last update, so a
  full-batch chunk ends with its final loss and gradient already computed.
  """
  params: models.Params
  opt_state: optax.OptState
  grads: models.Params  # gradient of the next update, at params
  loss: jax.Array  # float32 (n,): loss at params (on the next update's batch)
  loss0: jax.Array  # float32 (n,): full-batch loss at the initial params
  diverged: jax.Array  # bool (n,)
  applied: jax.Array  # int32 (n,): optimizer steps applied
  width: jax.Array  # int32 (n,): true width (for the unit masks)
  data_key: jax.Array  # uint32 (n, 2): minibatch-order key
  step: jax.Array  # int32 (): update slots run by the program, shared


@dataclasses.dataclass(frozen=True)
class _ProgramSpec:
  """Everything that shapes a compiled program (its jit static key)."""
  model: models.MLP
  optimizer: str
  normalization: str
  m: int
  batch: int
  chunk_len: int
  masked: bool


def _loss_fn(spec: _ProgramSpec, params, width, x, y, scale):
  """``scale * ||f(x) - y||^2`` of one member (masked to its true width)."""
  masks = None
  if spec.masked:
    # models.width_masks with a traced width (it validates static widths).
    masks = [(jnp.arange(w) < width).astype(TRAIN_DTYPE)
             for w in spec.model.widths]
  residual = spec.model.apply(params, x, masks) - y
  return scale * jnp.sum(jnp.square(residual))


def _batch(spec: _ProgramSpec, data_key, step, x, y):
  """Rows of update ``step``: block ``step mod (m // B)`` of the permutation
  drawn from ``fold_in(data_key, epoch)``."""
  if spec.batch == spec.m:
    return x, y
  n_batches = spec.m // spec.batch
  order = jax.random.permutation(
      jax.random.fold_in(data_key, step // n_batches), spec.m)
  rows = jax.lax.dynamic_slice_in_dim(order, (step % n_batches) * spec.batch,
                                      spec.batch)
  return x[rows], y[rows]


def _batch_value_and_grad(spec, params, width, data_key, step, x, y):
  # c * (m / B) * (batch sum) estimates the full loss without bias.
  scale = loss_scale(spec.normalization, spec.m) * spec.m / spec.batch
  xb, yb = _batch(spec, data_key, step, x, y)
  return jax.value_and_grad(functools.partial(_loss_fn, spec))(
      params, width, xb, yb, scale)


def _full_value_and_grad(spec, params, width, x, y):
  return jax.value_and_grad(functools.partial(_loss_fn, spec))(
      params, width, x, y, loss_scale(spec.normalization, spec.m))


# The init program runs once per program, but its random sampling is slow to
# compile on CPU (seconds at the default LLVM optimization level; about 3x less
# at level 0), so it is compiled for compile time, not run time.
@functools.partial(
    jax.jit, static_argnames=("spec", "member_widths"),
    compiler_options={"xla_backend_optimization_level": 0})
def _init_state(seeds: jax.Array, learning_rates: jax.Array,
                momentum: jax.Array, x: jax.Array, y: jax.Array, *,
                spec: _ProgramSpec, member_widths: tuple[int, ...]) -> _State:
  """Initial state of a program's members, in one compiled call.

  Member k is ``model.init(PRNGKey(seeds[k]), float32)`` for the model of
  true width ``member_widths[k]``, embedded in ``spec.model`` by
  ``models.pad_params``; its loss and gradient are evaluated for the first
  update. Compiled, XLA may fold the init scale into the sampler, so a weight
  can differ from the eager ``model.init`` by 1 ulp (eager op-by-op init of
  every width costs seconds of compiling, which is why it is done here).
  """
  keys = jax.vmap(jax.random.PRNGKey)(seeds)
  parts, order = [], []
  for width in sorted(set(member_widths)):
    rows = [k for k, w in enumerate(member_widths) if w == width]
    true_model = models.widen(spec.model, (width,) * spec.model.depth)
    parts.append(jax.vmap(lambda key, true_model=true_model: models.pad_params(
        true_model.init(key, TRAIN_DTYPE), spec.model))(keys[np.array(rows)]))
    order += rows
  back = np.argsort(order)
  params = jax.tree_util.tree_map(
      lambda *leaves: jnp.concatenate(leaves)[back], *parts)
  optimizer = _make_optimizer(spec.optimizer)
  opt_state = jax.vmap(optimizer.init)(params)
  opt_state.hyperparams["learning_rate"] = learning_rates
  if "momentum" in opt_state.hyperparams:
    opt_state.hyperparams["momentum"] = jnp.broadcast_to(
        momentum, learning_rates.shape)
  widths = jnp.asarray(member_widths, jnp.int32)
  data_key = jax.vmap(jax.random.fold_in, in_axes=(0, None))(
      keys, _DATA_ORDER_STREAM)
  loss, grads = jax.vmap(
      functools.partial(_batch_value_and_grad, spec),
      in_axes=(0, 0, 0, None, None, None))(params, widths, data_key, 0, x, y)
  if spec.batch == spec.m:
    loss0 = loss
  else:
    loss0 = jax.vmap(functools.partial(_full_value_and_grad, spec),
                     in_axes=(0, 0, None, None))(params, widths, x, y)[0]
  n = len(member_widths)
  return _State(params=params, opt_state=opt_state, grads=grads, loss=loss,
                loss0=loss0, diverged=jnp.zeros((n,), bool),
                applied=jnp.zeros((n,), jnp.int32), width=widths,
                data_key=data_key, step=jnp.zeros((), jnp.int32))


def _start_program(members: Sequence[Member], padded: models.MLP,
                   config: TrainConfig, x: jax.Array, y: jax.Array,
                   batch: int, chunk_len: int) -> tuple[_ProgramSpec, _State]:
  """The program spec and initial state of ``members`` padded to ``padded``."""
  widths = tuple(m.width if m.depth else 0 for m in members)
  spec = _ProgramSpec(model=padded, optimizer=config.optimizer,
                      normalization=config.normalization, m=x.shape[0],
                      batch=batch, chunk_len=chunk_len,
                      masked=len(set(widths)) > 1)
  state = _init_state(
      np.array([m.seed for m in members]),
      np.array([config.learning_rate if m.learning_rate is None
                else m.learning_rate for m in members], np.float32),
      np.float32(config.momentum), x, y, spec=spec, member_widths=widths)
  return spec, state


def _chunk(state: _State, x: jax.Array, y: jax.Array,
           total_steps: jax.Array, divergence_factor: jax.Array, *,
           spec: _ProgramSpec) -> tuple[_State, jax.Array, jax.Array]:
  """``spec.chunk_len`` update slots of every member; returns the new state
  and the full-batch loss and gradient norm at the new parameters."""
  optimizer = _make_optimizer(spec.optimizer)

  def member_slot(params, opt_state, grads, loss, loss0, diverged, applied,
                  width, data_key, step):
    active = (step < total_steps) & ~diverged
    updates, new_opt_state = optimizer.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    select = lambda old, new: jnp.where(active, new, old)
    params = jax.tree_util.tree_map(select, params, new_params)
    opt_state = jax.tree_util.tree_map(select, opt_state, new_opt_state)
    applied = applied + active.astype(jnp.int32)
    loss, grads = _batch_value_and_grad(spec, params, width, data_key,
                                        step + 1, x, y)
    grad_sq = sum(jnp.sum(jnp.square(g))
                  for g in jax.tree_util.tree_leaves(grads))
    healthy = (jnp.isfinite(loss) & jnp.isfinite(grad_sq) &
               (loss <= divergence_factor * loss0))
    return params, opt_state, grads, loss, diverged | (active & ~healthy), \
        applied

  batched_slot = jax.vmap(member_slot, in_axes=(0,) * 9 + (None,))

  def scan_body(carry, _):
    params, opt_state, grads, loss, diverged, applied, step = carry
    carry = batched_slot(params, opt_state, grads, loss, state.loss0,
                         diverged, applied, state.width, state.data_key, step)
    return (*carry, step + 1), None

  (params, opt_state, grads, loss, diverged, applied, step), _ = jax.lax.scan(
      scan_body, (state.params, state.opt_state, state.grads, state.loss,
                  state.diverged, state.applied, state.step), None,
      length=spec.chunk_len)
  if spec.batch == spec.m:
    end_loss, end_grads = loss, grads
  else:
    end_loss, end_grads = jax.vmap(
        functools.partial(_full_value_and_grad, spec),
        in_axes=(0, 0, None, None))(params, state.width, x, y)
  end_grad_norm = jnp.sqrt(sum(
      jnp.sum(jnp.square(g), axis=tuple(range(1, g.ndim)))
      for g in jax.tree_util.tree_leaves(end_grads)))
  state = state._replace(params=params, opt_state=opt_state, grads=grads,
                         loss=loss, diverged=diverged, applied=applied,
                         step=step)
  return state, end_loss, end_grad_norm


_run_chunk = jax.jit(_chunk, static_argnames="spec", donate_argnames="state")


def _check_learning_rate(value, name: str) -> None:
  if isinstance(value, bool) or not (
      isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
    raise ValueError(f"{name} must be a finite positive number, got {value!r}")
