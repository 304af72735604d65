"""Tests for lminima.train.driver (the driver) and lminima.train.population."""

import dataclasses
import itertools
import os
import tempfile
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from lminima import data
from lminima.core import losses
from lminima.core import models
from lminima.train import cache
from lminima.train import compiled
from lminima.train import calibration
from lminima.train import driver
from lminima.train import planner
from lminima.train import population

DS = data.synthetic(m=40, d_x=3, d_y=2, seed=7, noise=0.1)
TrainConfig = population.TrainConfig
Member = population.Member


def _layer(params, l):
  """(kernel, bias) of layer l (1-based) of flax variables."""
  layer = params["params"][models.layer_name(l)]
  return layer["kernel"], layer["bias"]


def _reference_loss_and_grad_norm(model, params, ds, normalization):
  """Float64 loss and gradient norm, computed from scratch."""
  params64 = models.cast_params(params, jnp.float64)
  loss_fn = lambda p: losses.squared_loss(model.apply(p, ds.x), ds.y,
                                          normalization)
  loss, grads = jax.value_and_grad(loss_fn)(params64)
  norm = np.sqrt(sum(np.sum(np.square(g))
                     for g in jax.tree_util.tree_leaves(grads)))
  return float(loss), float(norm)


class PopulationTest(parameterized.TestCase):

  def test_defaults(self):
    """The project's training defaults (the sweep reads them from here)."""
    config = TrainConfig()
    self.assertEqual((config.optimizer, config.learning_rate, config.steps),
                     ("adam", 0.01, 3000))

  @parameterized.named_parameters(
      ("activation", dict(activation="swish")),
      ("normalization", dict(normalization="avg")),
      ("optimizer", dict(optimizer="rmsprop")),
      ("learning_rate", dict(learning_rate=0.0)),
      ("learning_rate_nan", dict(learning_rate=float("nan"))),
      ("momentum", dict(momentum=1.0)),
      ("steps", dict(steps=0)),
      ("steps_float", dict(steps=2.5)),
      ("batch_size", dict(batch_size=0)),
      ("chunk_steps", dict(chunk_steps=-1)),
      ("divergence_factor", dict(divergence_factor=0.5)),
  )
  def test_bad_config_raises(self, kwargs):
    with self.assertRaises(ValueError):
      TrainConfig(**kwargs)

  @parameterized.named_parameters(
      ("depth", dict(depth=-1, width=4, seed=0)),
      ("width", dict(depth=1, width=0, seed=0)),
      ("seed", dict(depth=1, width=4, seed=1.5)),
      ("learning_rate", dict(depth=1, width=4, seed=0, learning_rate=-1.0)),
  )
  def test_bad_member_raises(self, kwargs):
    with self.assertRaises(ValueError):
      Member(**kwargs)

  def test_training_flops(self):
    model = models.MLP(d_in=3, widths=(4, 5), d_out=2)
    # 3 x forward, 2 FLOPs per multiply-add, 7 samples, 2 steps.
    self.assertEqual(population.training_flops(model, 7, 2),
                     3 * 2 * 7 * (3 * 4 + 4 * 5 + 5 * 2) * 2)

  def test_member_model(self):
    config = TrainConfig(activation="relu", bias=False)
    model = population.member_model(3, 2, Member(2, 6, 0), config)
    self.assertEqual(model, models.MLP(3, (6, 6), 2, "relu", bias=False))
    self.assertEqual(population.member_model(3, 2, Member(0, 6, 0),
                                             config).widths, ())
    self.assertEqual(Member(0, 6, 0).true_width, 0)


class TrainPopulationTest(parameterized.TestCase):

  def test_bad_population_raises(self):
    config = TrainConfig(steps=2)
    with self.assertRaisesRegex(ValueError, "width_strategy"):
      driver.train_population(DS, [Member(1, 2, 0)], config,
                             width_strategy="padded")
    with self.assertRaisesRegex(ValueError, "empty"):
      driver.train_population(DS, [], config)
    with self.assertRaisesRegex(ValueError, "batch_size"):
      driver.train_population(DS, [Member(1, 2, 0)],
                             dataclasses.replace(config, batch_size=DS.m + 1))

  def test_linear_sgd_matches_numpy_gradient_descent(self):
    """widths=() is linear regression: Y_hat = X W + b, exact GD in numpy."""
    lr, steps = 0.1, 30
    for normalization in ("mean", "sum"):
      config = TrainConfig(normalization=normalization, steps=steps,
                           chunk_steps=7, optimizer="sgd", learning_rate=lr)
      member = Member(depth=0, width=1, seed=3)
      lr_used = lr / DS.m if normalization == "sum" else lr
      member = dataclasses.replace(member, learning_rate=lr_used)
      (result,) = driver.train_population(DS, [member], config)
      model = population.member_model(DS.d_x, DS.d_y, member, config)
      w, b = (np.asarray(a, np.float64) for a in _layer(
          model.init_params(jax.random.PRNGKey(3), jnp.float32), 1))
      c = 0.5 if normalization == "sum" else 0.5 / DS.m
      for _ in range(steps):
        residual = DS.x @ w + b - DS.y
        w, b = (w - lr_used * 2 * c * DS.x.T @ residual,
                b - lr_used * 2 * c * residual.sum(0))
      got_w, got_b = _layer(result.params, 1)
      np.testing.assert_allclose(got_w, w, rtol=1e-4, atol=1e-6)
      np.testing.assert_allclose(got_b, b, rtol=1e-4, atol=1e-6)
      residual = DS.x @ w + b - DS.y
      self.assertAlmostEqual(result.loss / (c * np.sum(residual ** 2)), 1.0,
                             places=5)
      self.assertEqual(result.model.widths, ())
      self.assertEqual(result.steps, steps)

  @parameterized.parameters("sgd", "momentum", "adam")
  def test_matches_plain_optax_loop(self, optimizer):
    """One member against a hand-written optax loop on the same network."""
    config = TrainConfig(optimizer=optimizer, steps=25, chunk_steps=10,
                         learning_rate=0.02, momentum=0.8)
    member = Member(depth=2, width=5, seed=11)
    (result,) = driver.train_population(DS, [member], config)
    model = population.member_model(DS.d_x, DS.d_y, member, config)
    params = model.init_params(jax.random.PRNGKey(11), jnp.float32)
    tx = {"sgd": optax.sgd(0.02), "momentum": optax.sgd(0.02, momentum=0.8),
          "adam": optax.adam(0.02)}[optimizer]
    opt_state = tx.init(params)
    x, y = jnp.asarray(DS.x, jnp.float32), jnp.asarray(DS.y, jnp.float32)
    grad_fn = jax.jit(jax.grad(
        lambda p: losses.squared_loss(model.apply(p, x), y, "mean")))
    for _ in range(25):
      updates, opt_state = tx.update(grad_fn(params), opt_state, params)
      params = optax.apply_updates(params, updates)
    chex.assert_trees_all_close(result.params, params, rtol=2e-4, atol=2e-6)

  def test_loss_grad_norm_and_history_are_consistent(self):
    config = TrainConfig(steps=40, chunk_steps=15, optimizer="sgd",
                         learning_rate=0.1)
    members = [Member(2, 4, 0), Member(1, 6, 1)]
    for result in driver.train_population(DS, members, config):
      loss, norm = _reference_loss_and_grad_norm(result.model, result.params,
                                                 DS, "mean")
      self.assertAlmostEqual(result.loss / loss, 1.0, places=5)
      self.assertAlmostEqual(result.grad_norm / norm, 1.0, places=3)
      # 40 steps in chunks of at most 15: three equal chunks.
      chex.assert_shape(result.loss_history, (3,))
      self.assertEqual(result.loss_history[-1], np.float32(result.loss))
      self.assertLess(result.loss_history[-1], result.loss_history[0])
      self.assertGreater(result.wall_s, 0)

  @parameterized.parameters(("tanh", False), ("sigmoid", False),
                            ("softplus", False), ("tanh", True),
                            ("sigmoid", True))
  def test_per_width_and_masked_agree(self, activation, skip):
    config = TrainConfig(activation=activation, optimizer="momentum",
                         steps=30, chunk_steps=30, learning_rate=0.05,
                         skip=skip)
    members = [Member(2, width, seed)
               for width, seed in itertools.product((2, 3, 6), (0, 1))]
    per_width = driver.train_population(DS, members, config,
                                       width_strategy="per_width")
    masked = driver.train_population(DS, members, config,
                                    width_strategy="masked")
    for a, b in zip(per_width, masked):
      self.assertEqual(a.model, b.model)
      self.assertEqual(a.model.skip, skip)
      np.testing.assert_allclose(a.loss, b.loss, rtol=1e-5)
      np.testing.assert_allclose(a.grad_norm, b.grad_norm, rtol=1e-4)
      chex.assert_trees_all_close(a.params, b.params, rtol=1e-5, atol=1e-6)
      np.testing.assert_allclose(a.loss_history, b.loss_history, rtol=1e-5)

  def test_diverging_member_is_frozen_and_isolated(self):
    config = TrainConfig(steps=30, chunk_steps=10, optimizer="sgd",
                         learning_rate=0.05)
    sane = [Member(1, 4, seed) for seed in range(4)]
    wild = list(sane)
    wild[2] = dataclasses.replace(sane[2], learning_rate=1e6)
    for strategy in ("per_width", "masked"):
      baseline = driver.train_population(DS, sane, config,
                                        width_strategy=strategy)
      results = driver.train_population(DS, wild, config,
                                       width_strategy=strategy)
      self.assertTrue(results[2].diverged)
      self.assertLess(results[2].steps, config.steps)
      for i in (0, 1, 3):
        self.assertFalse(results[i].diverged)
        self.assertEqual(results[i].steps, config.steps)
        self.assertEqual(results[i].loss, baseline[i].loss)
        self.assertEqual(results[i].grad_norm, baseline[i].grad_norm)
        chex.assert_trees_all_equal(results[i].params, baseline[i].params)

  def test_deterministic(self):
    config = TrainConfig(optimizer="adam", steps=15, chunk_steps=5,
                         batch_size=8, learning_rate=0.01)
    members = [Member(1, 3, 5), Member(2, 4, 6)]
    first = driver.train_population(DS, members, config)
    second = driver.train_population(DS, members, config)
    for a, b in zip(first, second):
      chex.assert_trees_all_equal(a.params, b.params)
      np.testing.assert_array_equal(a.loss_history, b.loss_history)

  def test_minibatch_follows_documented_order(self):
    """Linear model, batch 8 of 40: numpy SGD over the documented order."""
    lr, batch, steps = 0.05, 8, 12
    config = TrainConfig(steps=steps, batch_size=batch, optimizer="sgd",
                         learning_rate=lr, chunk_steps=5)
    member = Member(depth=0, width=1, seed=4)
    (mini,) = driver.train_population(DS, [member], config)
    (full,) = driver.train_population(
        DS, [member], dataclasses.replace(config, batch_size=None))
    self.assertGreater(
        np.abs(_layer(mini.params, 1)[0] - _layer(full.params, 1)[0]).max(),
        1e-4)
    init = population.member_model(DS.d_x, DS.d_y, member, config).init_params(
        jax.random.PRNGKey(4), jnp.float32)
    w, b = (np.asarray(a, np.float64) for a in _layer(init, 1))
    order_key = jax.random.fold_in(jax.random.PRNGKey(4), 1)
    n_batches = DS.m // batch
    for step in range(steps):
      order = np.asarray(jax.random.permutation(
          jax.random.fold_in(order_key, step // n_batches), DS.m))
      rows = order[(step % n_batches) * batch:][:batch]
      residual = DS.x[rows] @ w + b - DS.y[rows]
      # mean normalization over the batch: c * m / B = 1 / (2 B).
      w = w - lr * DS.x[rows].T @ residual / batch
      b = b - lr * residual.sum(0) / batch
    got_w, got_b = _layer(mini.params, 1)
    np.testing.assert_allclose(got_w, w, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got_b, b, rtol=1e-4, atol=1e-6)

  def test_results_in_member_order(self):
    config = TrainConfig(steps=3)
    members = [Member(2, 3, 9), Member(0, 1, 2),
               Member(1, 5, 0), Member(2, 6, 9),
               Member(1, 2, 4)]
    results = driver.train_population(DS, members, config,
                                     width_strategy="masked")
    self.assertEqual([r.member for r in results], members)
    for result, member in zip(results, members):
      self.assertEqual(result.model.widths, (member.width,) * member.depth)
      result.model.check_params(result.params)

  def test_results_are_float32(self):
    config = TrainConfig(optimizer="adam", steps=4, batch_size=10)
    members = [Member(1, 2, 0), Member(1, 4, 1)]
    for result in driver.train_population(DS, members, config,
                                         width_strategy="masked"):
      chex.assert_type(jax.tree_util.tree_leaves(result.params), np.float32)
      self.assertEqual(result.loss_history.dtype, np.float32)

  def test_one_trace_per_program_and_progress(self):
    config = TrainConfig(steps=10, chunk_steps=3)
    members = [Member(1, 3, 0), Member(1, 3, 1)]
    calls = {1: [], 2: []}
    for workers in (1, 2):  # two blocks of one member share the program
      chex.clear_trace_counter()
      counted = jax.jit(chex.assert_max_traces(compiled.chunk, n=1),
                        static_argnames="spec", donate_argnames="state")
      with mock.patch.object(compiled, "run_chunk", counted):
        driver.train_population(
            DS, members, config, workers=workers,
            progress=lambda *a, w=workers: calls[w].append(a))
    # 10 steps in chunks of at most 3: four chunks of 3 (2 no-op slots).
    self.assertEqual(calls[1], [(6, 20), (12, 20), (18, 20), (20, 20)])
    # Two blocks report their chunks as they arrive, in the calling thread.
    done = [d for d, _ in calls[2]]
    self.assertLen(done, 8)
    self.assertEqual(done, sorted(done))
    self.assertEqual(calls[2][-1], (20, 20))

  def test_workers_change_rounding_only(self):
    config = TrainConfig(optimizer="adam", steps=60, chunk_steps=25)
    members = [Member(d, w, s) for d in (1, 2) for w in (2, 5)
               for s in range(3)]
    one, three = (driver.train_population(DS, members, config, workers=k,
                                         width_strategy="masked")
                  for k in (1, 3))
    for a, b in zip(one, three):
      self.assertEqual((a.member, a.steps, a.diverged),
                       (b.member, b.steps, b.diverged))
      np.testing.assert_allclose(b.loss_history, a.loss_history, rtol=1e-5)
      for x, y in zip(jax.tree_util.tree_leaves(a.params),
                      jax.tree_util.tree_leaves(b.params)):
        np.testing.assert_allclose(y, x, rtol=1e-4, atol=1e-6)

  def test_groups_started_apart_equal_groups_started_together(self):
    config = TrainConfig(optimizer="adam", steps=30, chunk_steps=15)
    members = [Member(d, w, s) for d in (1, 2) for w in (2, 5)
               for s in range(2)]
    together = driver.train_population(DS, members, config, workers=1,
                                      width_strategy="per_width")
    with mock.patch.object(planner, "START_TOGETHER_BYTES", 0):
      apart = driver.train_population(DS, members, config, workers=1,
                                     width_strategy="per_width")
    for a, b in zip(together, apart):
      self.assertEqual((a.member, a.steps), (b.member, b.steps))
      np.testing.assert_allclose(b.loss_history, a.loss_history, rtol=1e-5)

  def test_a_failing_program_raises_instead_of_hanging(self):
    calls, run_chunk = [], compiled.run_chunk

    def failing(state, *args, spec, **kwargs):
      calls.append(spec)
      if len(calls) == 2:
        raise RuntimeError("chunk failed")
      return run_chunk(state, *args, spec=spec, **kwargs)

    members = [Member(1, w, s) for w in (2, 3) for s in range(2)]
    with mock.patch.object(compiled, "run_chunk", side_effect=failing):
      with self.assertRaisesRegex(RuntimeError, "chunk failed"):
        driver.train_population(DS, members, TrainConfig(steps=4),
                               workers=2, width_strategy="per_width")

  def test_default_workers_and_bad_workers(self):
    self.assertEqual(driver.default_workers(), len(os.sched_getaffinity(0)))
    for bad in (0, -1, 1.5, True):
      with self.assertRaisesRegex(ValueError, "workers must be"):
        driver.train_population(DS, [Member(1, 2, 0)], TrainConfig(steps=2),
                               workers=bad)


if __name__ == "__main__":
  absltest.main()


class MachineCostModelTest(absltest.TestCase):

  def test_calibrated_once_per_machine_and_cached(self):
    calls = []
    fake = driver.CostModel(compile_s=0.5, step_s=1e-5, flops_per_s=1e10)
    with mock.patch.dict(os.environ,
                         {"LMINIMA_CACHE_DIR": tempfile.mkdtemp()}
                         ), mock.patch.object(
                             calibration, "calibrate_cost_model",
                             lambda: calls.append(1) or fake):
      calibration._machine_cost_model.cache_clear()
      self.assertEqual(calibration.backend_cost_model(), fake)
      calibration._machine_cost_model.cache_clear()  # a new process
      self.assertEqual(calibration.backend_cost_model(), fake)
      stored = cache.read_json("cost_models.json")
    calibration._machine_cost_model.cache_clear()
    self.assertLen(calls, 1)
    (key,) = stored
    self.assertIn(jax.default_backend(), key)
    self.assertEqual(stored[key]["flops_per_s"], 1e10)
