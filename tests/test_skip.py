"""The linear skip connection MLP(skip=True): the structure where (C) must hold.

Yhat = h^(H) W^(H+1) + b^(H+1) + X S. Its block of D is X kron I, so
col([X 1] kron I) lies in col(D) at every point, and at a critical point
L <= the linear-regression optimum (docs/theory.md, "(C) Subspace bound").
"""

import hashlib
import json
import tempfile

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np

from lminima import data as data_lib
from lminima.core import models, padding
from lminima.core.problem import Problem
from lminima.critical import refinement
from lminima.study import records
from lminima.study import reload
from lminima.study import sweep
from lminima.study import config as study_config
from lminima.study import memory
from lminima.theory import euler
from lminima.theory import identities
from lminima.train import population
from lminima.train import driver

from _helpers import REPO, gaussian_data, run_script

TrainConfig = population.TrainConfig
Member = population.Member


def _skip_problem(widths=(2,), activation="tanh", bias=True, m=30, d_x=3,
                  d_y=2, seed=0, skip=True):
  x, y = gaussian_data(m=m, d_x=d_x, d_y=d_y, seed=seed)
  y = y + np.sin(x[:, :1])  # a nonlinear target the linear part cannot fit
  model = models.MLP(d_x, widths, d_y, activation, bias, skip=skip)
  params = model.init_params(jax.random.PRNGKey(seed), jnp.float64)
  return Problem.for_module(model, params, x, y)


class SkipModelTest(parameterized.TestCase):

  @parameterized.parameters(True, False)
  def test_n_params_counts_the_skip(self, bias):
    plain = models.MLP(3, (4, 5), 2, "tanh", bias)
    model = models.MLP(3, (4, 5), 2, "tanh", bias, skip=True)
    self.assertEqual(model.n_params, plain.n_params + 3 * 2)
    for variables in (model.init_params(jax.random.PRNGKey(0)),
                      model.init(jax.random.PRNGKey(0), jnp.ones((1, 3)))):
      model.check_params(variables)
      self.assertEqual(sum(leaf.size for leaf in
                           jax.tree_util.tree_leaves(variables)),
                       model.n_params)
      self.assertEqual(variables["params"]["skip"]["kernel"].shape, (3, 2))

  def test_the_layers_draw_as_without_the_skip(self):
    """init_params and flax's init: the skip leaves the layers' draws alone."""
    plain = models.MLP(3, (4, 5), 2, "relu")
    model = models.MLP(3, (4, 5), 2, "relu", skip=True)
    key, x = jax.random.PRNGKey(7), jnp.ones((1, 3))
    for with_skip, without in ((model.init_params(key), plain.init_params(key)),
                               (model.init(key, x), plain.init(key, x))):
      skip = with_skip["params"].pop("skip")
      chex.assert_trees_all_equal(with_skip, without)
      self.assertEqual(skip["kernel"].dtype, np.float32)
    # Fan-in normal like the output layer, from its own stream.
    np.testing.assert_allclose(
        model.init_params(key)["params"]["skip"]["kernel"],
        jax.random.normal(jax.random.fold_in(key, models.SKIP_STREAM),
                          (3, 2), jnp.float32) / np.sqrt(3.0), rtol=1e-6)

  @parameterized.product(widths=((4,), (3, 2), ()), bias=(True, False))
  def test_output_is_linear_in_the_features(self, widths, bias):
    model = models.MLP(3, widths, 2, "softplus", bias, skip=True)
    variables = jax.tree_util.tree_map(
        lambda a: a + 0.1, model.init_params(jax.random.PRNGKey(1),
                                             jnp.float64))
    p = variables["params"]
    x = np.random.default_rng(0).standard_normal((6, 3))
    h = x
    for l in range(1, len(widths) + 1):
      layer = p[f"layer_{l}"]
      h = np.log1p(np.exp(h @ layer["kernel"] + layer.get("bias", 0.0)))
    out = p[f"layer_{len(widths) + 1}"]
    yhat = h @ out["kernel"] + out.get("bias", 0.0) + x @ p["skip"]["kernel"]
    np.testing.assert_allclose(model.apply(variables, x), yhat, rtol=1e-12)
    features = model.apply(variables, x, method="features")
    want = [h, x] + ([np.ones((6, 1))] if bias else [])
    np.testing.assert_allclose(features, np.hstack(want), rtol=1e-12)
    # Yhat = features @ [W; S; b]: the order of the blocks.
    blocks = [out["kernel"], p["skip"]["kernel"]] + (
        [out["bias"][None]] if bias else [])
    np.testing.assert_allclose(features @ np.vstack(blocks), yhat,
                               rtol=1e-12)

  def test_check_params_and_bad_values(self):
    model = models.MLP(3, (4,), 2, skip=True)
    plain = models.MLP(3, (4,), 2).init_params(jax.random.PRNGKey(0))
    with self.assertRaisesRegex(ValueError, "'skip'") as raised:
      model.check_params(plain)
    self.assertNotIn("\n", str(raised.exception))
    with self.assertRaisesRegex(ValueError, "layer_1"):
      models.MLP(3, (4,), 2).check_params(model.init_params(
          jax.random.PRNGKey(0)))
    wrong = model.init_params(jax.random.PRNGKey(0))
    wrong["params"]["skip"]["kernel"] = jnp.zeros((2, 2))
    with self.assertRaisesRegex(ValueError, "skip: expected shapes"):
      model.check_params(wrong)
    with self.assertRaisesRegex(ValueError, "skip must be True or False"):
      models.MLP(3, (4,), 2, skip="yes")
    with self.assertRaisesRegex(ValueError, "skip must be True or False"):
      TrainConfig(skip=1)

  def test_padding_keeps_the_skip(self):
    small = models.MLP(3, (2, 3), 2, "sigmoid", skip=True)
    big = padding.widen(small, (5, 6))
    self.assertTrue(big.skip)
    params = small.init_params(jax.random.PRNGKey(3))
    padded = padding.pad_params(params, big)
    chex.assert_trees_all_equal(padded["params"]["skip"],
                                params["params"]["skip"])
    masks = padding.width_masks(small.widths, big.widths)
    x = jnp.asarray(np.random.default_rng(1).standard_normal((4, 3)),
                    jnp.float32)
    np.testing.assert_allclose(big.apply(padded, x, masks),
                               small.apply(params, x), rtol=1e-6)
    chex.assert_trees_all_equal(padding.unpad_params(padded, small), params)


class SkipTheoryTest(parameterized.TestCase):

  @parameterized.product(activation=("tanh", "relu"), bias=(True, False))
  def test_inclusion_holds_at_any_point(self, activation, bias):
    # n_params = 3*2 + 2 + 2*2 + 2 + 6 = 20 < m d_y = 60: not by full rank.
    problem = _skip_problem(activation=activation, bias=bias)
    self.assertLess(problem.n_params, problem.m * problem.d_y)
    design = identities.design_matrix(problem, None, None)
    self.assertEqual(design.shape[1], 3 + bias)
    self.assertLess(identities.inclusion_residual(problem, design), 1e-10)
    # The control: the same network without the skip misses the inclusion.
    plain = _skip_problem(activation=activation, bias=bias, skip=False)
    self.assertGreater(identities.inclusion_residual(
        plain, identities.design_matrix(plain, None, None)), 1e-3)

  # Small skip nets on teacher data mostly escape to infinity (the skip fits
  # the linear trend, saturated units the rest); these points converge.
  @parameterized.parameters(("tanh", (2,), True, 30, 0.3, 3),
                            ("tanh", (2, 2), True, 60, 0.5, 3),
                            ("identity", (2,), True, 60, 0.5, 0),
                            ("identity", (2,), False, 60, 0.5, 1))
  def test_identities_at_a_refined_point(self, activation, widths, bias, m,
                                         noise, seed):
    ds = data_lib.synthetic(m=m, d_x=3, d_y=2, seed=seed, noise=noise)
    model = models.MLP(3, widths, 2, activation, bias, skip=True)
    start = Problem.for_module(model, model.init_params(
        jax.random.PRNGKey(seed), jnp.float64), ds.x, ds.y)
    result = refinement.refine(start, method="lm", max_iters=200)
    problem = start.at(result.params)
    self.assertLess(problem.grad_norm, 1e-8, result.stop_reason)
    loss = problem.loss
    self.assertGreater(loss, 1e-3)  # under-parameterised: L > 0
    # (A): L = c ||P_N[D] vec Y||^2 = c ||(I - F F^+) Y||^2, F = [h, X, 1].
    out = identities.critical_point_identity(problem)
    self.assertLess(out.gap_full, 1e-9 * (1 + loss))
    self.assertLess(out.gap_last, 1e-9 * (1 + loss))
    features = problem.features()
    y, c = np.asarray(problem.y), problem.c
    fitted = features @ np.linalg.lstsq(features, y, rcond=None)[0]
    self.assertAlmostEqual(loss, c * np.sum((y - fitted) ** 2), delta=1e-9)
    # (C) with the linear features: the inclusion holds, so does the bound.
    bound = identities.subspace_bound(problem)
    self.assertLess(bound.inclusion_residual, 1e-10)
    self.assertTrue(bound.holds)
    self.assertLessEqual(loss, bound.bound + 1e-10)

  @parameterized.product(activation=("relu", "leaky_relu", "identity"),
                         bias=(True, False))
  def test_euler_identity_with_the_skip_in_every_group(self, activation,
                                                       bias):
    problem = _skip_problem((3, 2), activation, bias)
    model = problem.module
    for l in (1, 2, 3):
      self.assertEqual(euler.euler_blocks(model, l)[-1], "skip/kernel")
    out = euler.euler_identity(problem)
    self.assertLess(out.euler_residual_max, 1e-12 * (1 + out.yhat_norm))
    # Why S belongs to every group: without it X S is left unscaled.
    d = problem.derivative()
    flat = np.asarray(problem.flat)
    names = euler.euler_blocks(model, 1)[:-1]
    partial = sum(d.block(n) @ flat[d.column_slices[n]] for n in names)
    self.assertGreater(np.linalg.norm(partial - d.yhat.reshape(-1)), 1e-3)

  def test_euler_identity_of_the_output_layer_for_any_activation(self):
    out = euler.euler_identity(_skip_problem((3,), "tanh"))
    self.assertLess(out.layers[-1].euler_residual, 1e-12)
    self.assertGreater(out.layers[0].euler_residual, 1e-6)


class SkipPopulationTest(parameterized.TestCase):

  @parameterized.parameters("masked", "per_width")
  def test_members_train_as_they_do_alone(self, strategy):
    ds = data_lib.synthetic(m=40, d_x=3, d_y=2, seed=7, noise=0.1)
    config = TrainConfig(skip=True, optimizer="adam", steps=40, chunk_steps=20,
                         learning_rate=0.02)
    members = [Member(2, 2, 0), Member(2, 5, 1), Member(2, 3, 2)]
    together = driver.train_population(ds, members, config,
                                      width_strategy=strategy)
    for member, result in zip(members, together):
      (alone,) = driver.train_population(ds, [member], config,
                                        width_strategy=strategy)
      self.assertTrue(result.model.skip)
      result.model.check_params(result.params)
      np.testing.assert_allclose(result.loss, alone.loss, rtol=1e-5)
      np.testing.assert_allclose(result.grad_norm, alone.grad_norm,
                                 rtol=1e-4)
      chex.assert_trees_all_close(result.params, alone.params, rtol=1e-5,
                                  atol=1e-6)
      self.assertLess(result.loss_history[-1], result.loss_history[0])
      # The skip trained: it moved from its seeded start.
      start = result.model.init_params(jax.random.PRNGKey(member.seed))
      self.assertGreater(np.abs(result.params["params"]["skip"]["kernel"]
                                - start["params"]["skip"]["kernel"]).max(),
                         1e-4)

  def test_training_flops_count_the_skip(self):
    plain = models.MLP(3, (4,), 2)
    self.assertEqual(
        population.training_flops(models.MLP(3, (4,), 2, skip=True), 10)
        - population.training_flops(plain, 10), 3 * 2 * 10 * 3 * 2)


def _tiny_config(workdir, skip=True):
  config = sweep.get_config()
  # Noisy enough that some members end at certified minima with L > 0.
  config.data_options = {"m": 60, "d_x": 3, "d_y": 2, "seed": 3, "noise": 0.5}
  config.depths, config.widths, config.num_seeds = (1,), (1, 2), 2
  config.steps, config.skip = 300, skip
  config.workdir = workdir
  config.progress = False
  return config


class SkipSweepTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.workdir = tempfile.mkdtemp()
    cls.rows = sweep.run(_tiny_config(cls.workdir), log=lambda _: None)

  def test_rows_record_the_skip_and_the_inclusion_holds(self):
    self.assertLen(self.rows, 4)
    refined = [r for r in self.rows if r.get("loss_refined") is not None]
    self.assertNotEmpty(refined)
    for row in self.rows:
      self.assertIs(row["skip"], True)
      self.assertContainsSubset(set(row), records.ROW_FIELDS)
      self.assertEqual(row["n_params"], models.MLP(
          3, (row["width"],), 2, skip=True).n_params)
    for row in refined:
      self.assertIsNone(row.get("error"))
      self.assertLess(row["inclusion_residual_linear"], 1e-8)
    # (C) must hold where it applies: every certified minimum is below the
    # linear optimum (and, with L > 0, not by interpolation).
    minima = [r for r in refined if r["verdict"] == "local_min"]
    self.assertNotEmpty(minima)
    for row in minima:
      self.assertGreater(row["loss_refined"], 1e-3)
      self.assertTrue(row["below_linear"])
      self.assertLessEqual(row["loss_refined"], row["linear_opt"])

  def test_load_member_rebuilds_the_skip_model(self):
    row = self.rows[0]
    problem, loaded = reload.load_member(self.workdir, row["depth"],
                                          row["width"], row["seed"])
    self.assertTrue(problem.module.skip)
    self.assertAlmostEqual(problem.loss, loaded["loss_refined"], delta=1e-12)

  def test_rows_without_skip_load_as_plain_models(self):
    row = {"depth": 2, "width": 3, "activation": "tanh", "bias": True}
    self.assertFalse(reload.member_model(row, 4, 1).skip)
    self.assertTrue(reload.member_model(dict(row, skip=True), 4, 1).skip)

  def test_config_field(self):
    config = sweep.get_config()
    self.assertIs(config.skip, False)
    self.assertIs(sweep.train_config(config).skip, False)
    config.skip = True
    self.assertIs(sweep.train_config(config).skip, True)
    config = sweep.get_config()
    with config.ignore_type():
      config.skip = "yes"
    with self.assertRaisesRegex(sweep.ConfigError,
                                r"^skip must be true or false, got 'yes'$"):
      sweep.validate_config(config)

  def test_fingerprint_of_a_plain_sweep_has_no_skip(self):
    """Workdirs written before the skip (or train_workers) existed stay
    resumable."""
    config = sweep.get_config()
    fields = {k: v for k, v in config.to_dict().items()
              if k not in study_config._NOT_IN_FINGERPRINT and
              k not in ("skip", "train_workers")}
    text = json.dumps(fields, sort_keys=True, default=str)
    self.assertEqual(sweep.config_fingerprint(config),
                     hashlib.sha256(text.encode()).hexdigest()[:16])
    config.skip = True
    self.assertNotEqual(sweep.config_fingerprint(config),
                        hashlib.sha256(text.encode()).hexdigest()[:16])

  def test_memory_estimate_counts_the_skip(self):
    ds = data_lib.synthetic(m=60, d_x=3, d_y=2, seed=3)
    plain = memory.memory_estimate(_tiny_config("w", skip=False), ds)
    skip = memory.memory_estimate(_tiny_config("w"), ds)
    self.assertEqual(skip[0]["n_params"] - plain[0]["n_params"], 3 * 2)


class SkipScriptTest(absltest.TestCase):

  def test_skip_flag(self):
    workdir = tempfile.mkdtemp()
    result = run_script(
        "depth_width.py", "--config=lminima/configs/synthetic.py:smoke",
        "--skip", "--nocertify", "--notheory", "--steps=20", "--depths=1",
        "--widths=2", "--num_seeds=1", f"--workdir={workdir}", cwd=REPO)
    self.assertEqual(result.returncode, 0, result.stderr)
    (row,) = records.read_workdir_rows(workdir)
    self.assertIs(row["skip"], True)


if __name__ == "__main__":
  absltest.main()
