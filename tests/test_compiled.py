"""Tests for lminima.train.compiled (one compiled program of a population)."""

import functools

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np

from lminima import data
from lminima.core import losses
from lminima.core import models, padding
from lminima.train import compiled
from lminima.train.population import Member, TrainConfig, member_model

DS = data.synthetic(m=40, d_x=3, d_y=2, seed=7, noise=0.1)
X = jnp.asarray(DS.x, jnp.float32)
Y = jnp.asarray(DS.y, jnp.float32)


class ProgramTest(parameterized.TestCase):

  @parameterized.parameters(("sgd", False), ("momentum", False),
                            ("adam", False), ("adam", True))
  def test_padded_weights_stay_exactly_zero(self, optimizer, skip):
    """Trains a padded program directly and inspects the padded blocks."""
    config = TrainConfig(activation="sigmoid", optimizer=optimizer,
                         learning_rate=0.05, steps=20, chunk_steps=20,
                         skip=skip)
    members = [Member(2, 2, 0), Member(2, 5, 1)]
    true_models = [member_model(DS.d_x, DS.d_y, m, config) for m in members]
    padded = true_models[1]
    spec, state = compiled.start_program(members, padded, config, X, Y,
                                        batch=DS.m, chunk_len=20)
    self.assertTrue(spec.masked)
    state, _, _ = compiled.run_chunk(state, X, Y, np.int32(20),
                                    np.float32(1e4), spec=spec)
    small = jax.tree_util.tree_map(lambda leaf: np.asarray(leaf[0]),
                                   state.params)
    active = padding.pad_params(padding.unpad_params(small, true_models[0]),
                               padded)
    moved = jax.tree_util.tree_map(
        lambda a, b: np.any(a != b), small,
        padding.pad_params(true_models[0].init_params(jax.random.PRNGKey(0)),
                          padded))
    self.assertTrue(any(jax.tree_util.tree_leaves(moved)))  # it did train
    chex.assert_trees_all_equal(small, active)  # padding is exactly zero

  @parameterized.parameters(False, True)
  def test_initialization_by_seed(self, skip):
    """A member's initial parameters depend on its own seed only."""
    config = TrainConfig(skip=skip)
    pair = [Member(2, 3, 9), Member(2, 6, 9)]
    true_models = [member_model(DS.d_x, DS.d_y, m, config) for m in pair]
    _, state = compiled.start_program(pair, true_models[1], config, X, Y,
                                     batch=DS.m, chunk_len=1)
    for k, (member, model) in enumerate(zip(pair, true_models)):
      got = padding.unpad_params(
          jax.tree_util.tree_map(lambda leaf: leaf[k], state.params), model)
      # Compiled, XLA may fold the init scale into the sampler: 1 ulp.
      chex.assert_trees_all_close(
          got, model.init_params(jax.random.PRNGKey(member.seed),
                                 jnp.float32),
          rtol=2.5e-7, atol=0)

  @parameterized.parameters("sgd", "adam")
  def test_a_cropped_population_start_is_the_programs_own(self, optimizer):
    """A program's members cut from a whole depth's start equal their own
    start: same draws, optimizer state and keys; loss and gradient to the
    rounding of the wider kernels."""
    config = TrainConfig(optimizer=optimizer, learning_rate=0.03)
    depth = [Member(2, w, s, learning_rate=0.01 * (s + 1))
             for w in (2, 3, 7) for s in range(2)]
    widest = member_model(DS.d_x, DS.d_y, depth[-1], config)
    whole = jax.device_get(compiled.start_population(
        *compiled.member_arrays(depth, config), X, Y,
        spec=compiled.program_spec(depth, widest, config, DS.m, DS.m, 5)))
    rows = np.array([3, 0, 2])  # widths 3, 2, 3
    block = [depth[i] for i in rows]
    padded = member_model(DS.d_x, DS.d_y, Member(2, 3, 0), config)
    spec, own = compiled.start_program(block, padded, config, X, Y, DS.m, 5)
    cropped = compiled.crop_state(whole, rows, spec)
    chex.assert_trees_all_equal_shapes(cropped, own)
    for name in ("params", "opt_state", "data_key", "width", "diverged",
                 "applied", "step"):
      chex.assert_trees_all_equal(getattr(cropped, name),
                                  jax.device_get(getattr(own, name)))
    for name in ("grads", "loss", "loss0"):
      chex.assert_trees_all_close(getattr(cropped, name),
                                  jax.device_get(getattr(own, name)),
                                  rtol=1e-5, atol=1e-7)

  def test_first_gradient_is_the_true_networks(self):
    """State.grads, evaluated masked in the widest network, is jax.grad of
    losses.squared_loss of each member's own (unpadded) network; exactly 0 on
    padded weights."""
    config = TrainConfig(activation="tanh", normalization="mean")
    members = [Member(2, 2, 0), Member(2, 5, 1)]
    padded = member_model(DS.d_x, DS.d_y, members[1], config)
    _, state = compiled.start_program(members, padded, config, X, Y,
                                     batch=DS.m, chunk_len=1)
    for k, member in enumerate(members):
      model = member_model(DS.d_x, DS.d_y, member, config)
      params = model.init_params(jax.random.PRNGKey(member.seed))
      want = jax.grad(lambda p, model=model: losses.squared_loss(
          model.apply(p, X), Y, "mean"))(params)
      got = jax.tree_util.tree_map(lambda leaf: np.asarray(leaf[k]),
                                   state.grads)
      chex.assert_trees_all_close(padding.unpad_params(got, model), want,
                                  rtol=1e-5, atol=1e-7)
      chex.assert_trees_all_equal(
          got, padding.pad_params(padding.unpad_params(got, model), padded))

  @parameterized.parameters(None, 8)
  def test_initial_loss_is_the_squared_loss(self, batch):
    """State.loss0 is losses.squared_loss of the true (unpadded) network."""
    config = TrainConfig(normalization="sum")
    members = [Member(1, 2, 0), Member(1, 4, 1)]
    padded = member_model(DS.d_x, DS.d_y, members[1], config)
    _, state = compiled.start_program(members, padded, config, X, Y,
                                     batch=batch or DS.m, chunk_len=1)
    for k, member in enumerate(members):
      model = member_model(DS.d_x, DS.d_y, member, config)
      params = model.init_params(jax.random.PRNGKey(member.seed))
      want = losses.squared_loss(model.apply(params, X), Y, "sum")
      np.testing.assert_allclose(state.loss0[k], want, rtol=1e-6)

  def test_minibatches_cover_each_epoch_once(self):
    spec = compiled.ProgramSpec(
        model=models.MLP(3, (2,), 2), optimizer="sgd", normalization="mean",
        m=DS.m, batch=8, chunk_len=1, masked=False)
    rows = jnp.arange(DS.m, dtype=jnp.float32)[:, None]
    key = jax.random.PRNGKey(0)
    epochs = [np.concatenate([
        np.asarray(compiled.minibatch(spec, key, step, rows, rows)[0][:, 0])
        for step in range(epoch * 5, epoch * 5 + 5)]) for epoch in (0, 1)]
    for epoch in epochs:
      np.testing.assert_array_equal(np.sort(epoch), np.arange(DS.m))
    self.assertFalse(np.array_equal(epochs[0], epochs[1]))  # reshuffled

  def test_program_is_float32(self):
    config = TrainConfig(optimizer="adam", steps=4, batch_size=10)
    members = [Member(1, 2, 0), Member(1, 4, 1)]
    padded = member_model(DS.d_x, DS.d_y, members[1], config)
    spec, state = compiled.start_program(members, padded, config, X, Y,
                                        batch=10, chunk_len=4)
    chunk = jax.make_jaxpr(functools.partial(compiled.chunk, spec=spec))(
        state, X, Y, np.int32(4), np.float32(1e4))
    start = compiled.start_population.trace(
        *compiled.member_arrays(members, config), X, Y, spec=spec).jaxpr
    for jaxpr in (str(chunk), str(start)):
      self.assertIn("f32", jaxpr)
      self.assertNotIn("f64", jaxpr)


if __name__ == "__main__":
  absltest.main()
