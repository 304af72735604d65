"""The compiled program that trains one group of a population.

A program trains n members of one depth, embedded in one padded network
``spec.model`` (``lminima.train.planner`` decides who shares a program). Two
jit-compiled functions do the work:

* ``start_population`` (once per depth): draws every member's parameters from
  its seed, writes its learning rate into its optimizer state and evaluates
  the loss and gradient of its first update, for all members of a depth at
  once (their widths are traced); ``crop_state`` cuts a program's members out
  of it;
* ``run_chunk`` (the program): ``vmap`` over the members of a ``lax.scan`` of
  ``spec.chunk_len`` training steps. The state is donated, so a chunk updates
  it in place.

Rotated loop. A step is "update, then evaluate the loss and gradient at the
new parameters" (``State.loss``/``State.grads`` belong to the next update), so
a full-batch chunk ends with its final loss and gradient already computed and
the loss history costs nothing extra. A step whose slot lies past
``total_steps``, or whose member has diverged, leaves that member unchanged
(``jnp.where`` per member): chunks are all the same length, so one compiled
chunk serves every chunk of a run.

Width masks. When a program's members have different widths, member k is
embedded in the widest network with ``padding.pad_params`` (padded weights
exactly zero) and its forward pass multiplies hidden layer l by the 0/1 unit
mask ``padding.width_masks`` of its traced true width. Masked units contribute
nothing to the output, so the gradient of every padded weight is exactly zero
and padded weights stay zero under sgd, momentum and adam: the member follows
the trajectory of its unpadded network (up to the rounding of the larger
kernels). The skip kernel of ``MLP(skip=True)`` has the shape
(d_x, d_y) at every width, so it is carried unpadded and unmasked.

Minibatches (``minibatch``). Update t of a member uses block ``t mod (m // B)``
of the permutation of the m rows drawn from
``fold_in(data_key, t // (m // B))`` (a fresh permutation per epoch), where
``data_key = fold_in(PRNGKey(seed), 1)`` is a stream apart from the
initialization key ``PRNGKey(seed)``; the loss is the unbiased estimate
``losses.squared_loss(..., total_m=m)``.

Example:
  >>> import jax.numpy as jnp, numpy as np
  >>> from lminima import data
  >>> from lminima.train.population import Member, TrainConfig, member_model
  >>> ds = data.synthetic(m=32, d_x=2, d_y=1, seed=0)
  >>> x, y = jnp.asarray(ds.x, jnp.float32), jnp.asarray(ds.y, jnp.float32)
  >>> config = TrainConfig(optimizer="sgd", learning_rate=0.05, steps=10)
  >>> members = [Member(1, 3, seed=0), Member(1, 5, seed=1)]
  >>> padded = member_model(2, 1, members[1], config)
  >>> spec, state = start_program(members, padded, config, x, y, batch=32,
  ...                             chunk_len=10)
  >>> spec.masked
  True
  >>> state, loss, grad_norm = run_chunk(state, x, y, np.int32(10),
  ...                                    np.float32(1e4), spec=spec)
  >>> loss.shape, state.applied.tolist()
  ((2,), [10, 10])
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lminima.core import losses
from lminima.core import models, padding
from lminima.dtypes import TRAIN_DTYPE
from lminima.train.population import Member, TrainConfig

DATA_ORDER_STREAM = 1
"""Minibatch orders come from ``fold_in(PRNGKey(seed), DATA_ORDER_STREAM)``, a
stream apart from the initialization key ``PRNGKey(seed)`` itself."""


class State(NamedTuple):
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
class ProgramSpec:
  """Everything that shapes a compiled program (its jit static key).

  Attributes:
    model: the padded network every member is embedded in.
    optimizer: one of ``population.OPTIMIZERS``.
    normalization: ``"mean"`` or ``"sum"``.
    m: number of training samples.
    batch: samples per update (``m`` for full batch).
    chunk_len: update slots per ``run_chunk`` call.
    masked: whether members carry width masks (they differ in width).
  """
  model: models.MLP
  optimizer: str
  normalization: str
  m: int
  batch: int
  chunk_len: int
  masked: bool


def make_optimizer(name: str) -> optax.GradientTransformation:
  """The optimizer ``name`` with its hyperparameters injected into its state.

  The values given here are placeholders: ``start_population`` writes each
  member's learning rate (and the momentum) into the state, and ``update``
  reads them from there, so per-member rates are vmapped state. optax casts the
  hyperparameters to the parameters' dtype (float32).
  """
  if name == "sgd":
    return optax.inject_hyperparams(optax.sgd)(learning_rate=1.0)
  if name == "momentum":
    return optax.inject_hyperparams(optax.sgd)(learning_rate=1.0,
                                               momentum=0.0)
  return optax.inject_hyperparams(optax.adam)(learning_rate=1.0)


def minibatch(spec: ProgramSpec, data_key: jax.Array, step: jax.Array,
              x: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Rows of update ``step``: block ``step mod (m // B)`` of the permutation
  drawn from ``fold_in(data_key, step // (m // B))``; all rows at full batch."""
  if spec.batch == spec.m:
    return x, y
  n_batches = spec.m // spec.batch
  order = jax.random.permutation(
      jax.random.fold_in(data_key, step // n_batches), spec.m)
  rows = jax.lax.dynamic_slice_in_dim(order, (step % n_batches) * spec.batch,
                                      spec.batch)
  return x[rows], y[rows]


def _masks(spec: ProgramSpec, width: jax.Array):
  if not spec.masked:
    return None
  return padding.width_masks(jnp.full((spec.model.depth,), width),
                            spec.model.widths, TRAIN_DTYPE)


def _loss(spec: ProgramSpec, params, width, x, y, *, total_m=None):
  """One member's squared loss on (x, y), masked to its true width."""
  return losses.squared_loss(
      spec.model.apply_features_major(params, x, _masks(spec, width)), y,
      spec.normalization, total_m=total_m)


def batch_value_and_grad(spec: ProgramSpec, params: models.Params,
                         width: jax.Array, data_key: jax.Array,
                         step: jax.Array, x: jax.Array, y: jax.Array):
  """One member's loss estimate and gradient on the batch of update ``step``.

  The minibatch form of the loss (``total_m=m``) is used even at full batch,
  where it equals the full loss.
  """
  xb, yb = minibatch(spec, data_key, step, x, y)
  return jax.value_and_grad(functools.partial(_loss, spec, total_m=spec.m))(
      params, width, xb, yb)


def full_value_and_grad(spec: ProgramSpec, params: models.Params,
                        width: jax.Array, x: jax.Array, y: jax.Array):
  """One member's full-batch loss and gradient."""
  return jax.value_and_grad(functools.partial(_loss, spec))(params, width, x, y)


# The start program runs once per depth, but random sampling is slow to
# compile on CPU at the default LLVM optimization level, so it is compiled for
# compile time, not run time.
@functools.partial(
    jax.jit, static_argnames="spec",
    compiler_options={"xla_backend_optimization_level": 0})
def start_population(seeds: jax.Array, widths: jax.Array,
                     learning_rates: jax.Array, momentum: jax.Array,
                     x: jax.Array, y: jax.Array, *, spec: ProgramSpec) -> State:
  """The initial state of members of true ``widths``, embedded in
  ``spec.model`` (``spec.masked`` must be True), in one compiled call.

  Member k starts at ``spec.model.init_params(PRNGKey(seeds[k]), float32,
  true_widths=(widths[k],) * depth)``, the draws of its own network padded
  with zeros (compiled, XLA may fold the init scale into the sampler, so a
  weight can differ from the eager ``init_params`` by 1 ulp). Its learning
  rate (and the momentum) is written into its optimizer state, its
  minibatch-order key derived from its seed, and the loss and gradient of its
  first update evaluated with its width mask. The widths are traced, so one
  call starts every member of one depth, whatever the programs it is then
  split into (``crop_state``).
  """
  if not spec.masked:
    raise ValueError("start_population needs a masked spec")
  depth = spec.model.depth
  params = jax.vmap(lambda seed, width: spec.model.init_params(
      jax.random.PRNGKey(seed), TRAIN_DTYPE,
      true_widths=jnp.full((depth,), width)))(seeds, widths)
  optimizer = make_optimizer(spec.optimizer)
  opt_state = jax.vmap(optimizer.init)(params)
  opt_state.hyperparams["learning_rate"] = learning_rates
  if "momentum" in opt_state.hyperparams:
    opt_state.hyperparams["momentum"] = jnp.broadcast_to(
        momentum, learning_rates.shape)
  keys = jax.vmap(jax.random.PRNGKey)(seeds)
  data_key = jax.vmap(jax.random.fold_in, in_axes=(0, None))(
      keys, DATA_ORDER_STREAM)
  loss, grads = jax.vmap(
      functools.partial(batch_value_and_grad, spec),
      in_axes=(0, 0, 0, None, None, None))(params, widths, data_key, 0, x, y)
  if spec.batch == spec.m:
    loss0 = loss
  else:
    loss0 = jax.vmap(functools.partial(full_value_and_grad, spec),
                     in_axes=(0, 0, None, None))(params, widths, x, y)[0]
  n = widths.shape[0]
  return State(params=params, opt_state=opt_state, grads=grads, loss=loss,
               loss0=loss0, diverged=jnp.zeros((n,), bool),
               applied=jnp.zeros((n,), jnp.int32), width=widths,
               data_key=data_key, step=jnp.zeros((), jnp.int32))


def crop_state(population: State, rows: np.ndarray,
               spec: ProgramSpec) -> State:
  """The state of the members at ``rows`` of a population's initial state
  (host arrays), each leaf cut to its top-left block in ``spec.model``.

  Padded weights, their gradients and optimizer moments are exactly zero, so
  cutting them off leaves each member's state as it is.
  """
  params, opt_state = _state_shapes(spec.model, spec.optimizer)
  cut = lambda tree, shapes: jax.tree_util.tree_map(
      lambda leaf, shape: leaf[rows][(slice(None),) + tuple(
          slice(0, k) for k in shape.shape)], tree, shapes)
  return population._replace(
      params=cut(population.params, params),
      opt_state=cut(population.opt_state, opt_state),
      grads=cut(population.grads, params),
      **{name: getattr(population, name)[rows] for name in (
          "loss", "loss0", "diverged", "applied", "width", "data_key")})


@functools.lru_cache(maxsize=256)
def _state_shapes(model: models.MLP, optimizer: str):
  """Shapes of one member's parameters and optimizer state (traced once)."""
  params = jax.eval_shape(model.init_params, jax.random.PRNGKey(0))
  return params, jax.eval_shape(make_optimizer(optimizer).init, params)


def start_program(members: Sequence[Member], padded: models.MLP,
                  config: TrainConfig, x: jax.Array, y: jax.Array,
                  batch: int, chunk_len: int) -> tuple[ProgramSpec, State]:
  """The program spec and initial state of ``members`` padded to ``padded``.

  ``lminima.train.driver`` starts a whole depth at once (``start_population``)
  and crops each program's members from it; this starts just ``members``.
  """
  spec = program_spec(members, padded, config, x.shape[0], batch, chunk_len)
  state = start_population(
      *member_arrays(members, config), x, y,
      spec=dataclasses.replace(spec, masked=True))
  return spec, state


def program_spec(members: Sequence[Member], padded: models.MLP,
                 config: TrainConfig, m: int, batch: int,
                 chunk_len: int) -> ProgramSpec:
  """The spec of the program that trains ``members`` padded to ``padded``."""
  return ProgramSpec(model=padded, optimizer=config.optimizer,
                     normalization=config.normalization, m=m, batch=batch,
                     chunk_len=chunk_len,
                     masked=len({member.true_width for member in members}) > 1)


def member_arrays(members: Sequence[Member], config: TrainConfig
                  ) -> tuple[np.ndarray, ...]:
  """``(seeds, widths, learning_rates, momentum)``, ``start_population``'s
  leading arguments."""
  return (np.array([member.seed for member in members]),
          np.array([member.true_width for member in members], np.int32),
          np.array([config.learning_rate if member.learning_rate is None
                    else member.learning_rate for member in members],
                   np.float32),
          np.float32(config.momentum))


def chunk(state: State, x: jax.Array, y: jax.Array,
          total_steps: jax.Array, divergence_factor: jax.Array, *,
          spec: ProgramSpec) -> tuple[State, jax.Array, jax.Array]:
  """``spec.chunk_len`` update slots of every member (uncompiled).

  Returns the new state and the full-batch loss and gradient norm of every
  member at its new parameters. ``run_chunk`` is its compiled form.
  """
  optimizer = make_optimizer(spec.optimizer)

  def member_slot(params, opt_state, grads, loss, loss0, diverged, applied,
                  width, data_key, step):
    active = (step < total_steps) & ~diverged
    updates, new_opt_state = optimizer.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    select = lambda old, new: jnp.where(active, new, old)
    params = jax.tree_util.tree_map(select, params, new_params)
    opt_state = jax.tree_util.tree_map(select, opt_state, new_opt_state)
    applied = applied + active.astype(jnp.int32)
    loss, grads = batch_value_and_grad(spec, params, width, data_key,
                                       step + 1, x, y)
    grad_sq = sum(jnp.sum(jnp.square(g))
                  for g in jax.tree_util.tree_leaves(grads))
    healthy = (jnp.isfinite(loss) & jnp.isfinite(grad_sq) &
               (loss <= divergence_factor * loss0))
    return params, opt_state, grads, loss, diverged | (active & ~healthy), \
        applied

  def member_chunk(params, opt_state, grads, loss, loss0, diverged, applied,
                   width, data_key):
    def body(carry, step):
      return member_slot(*carry[:4], loss0, *carry[4:], width, data_key,
                         step), None
    carry, _ = jax.lax.scan(
        body, (params, opt_state, grads, loss, diverged, applied),
        state.step + jnp.arange(spec.chunk_len, dtype=jnp.int32))
    return carry

  # JAX batches this into a scan of the vmapped step.
  params, opt_state, grads, loss, diverged, applied = jax.vmap(member_chunk)(
      state.params, state.opt_state, state.grads, state.loss, state.loss0,
      state.diverged, state.applied, state.width, state.data_key)
  step = state.step + spec.chunk_len
  if spec.batch == spec.m:
    end_loss, end_grads = loss, grads
  else:
    end_loss, end_grads = jax.vmap(
        functools.partial(full_value_and_grad, spec),
        in_axes=(0, 0, None, None))(params, state.width, x, y)
  end_grad_norm = jnp.sqrt(sum(
      jnp.sum(jnp.square(g), axis=tuple(range(1, g.ndim)))
      for g in jax.tree_util.tree_leaves(end_grads)))
  state = state._replace(params=params, opt_state=opt_state, grads=grads,
                         loss=loss, diverged=diverged, applied=applied,
                         step=step)
  return state, end_loss, end_grad_norm


run_chunk = jax.jit(chunk, static_argnames="spec", donate_argnames="state")
"""``chunk`` compiled once per ``ProgramSpec``, with the state donated."""
