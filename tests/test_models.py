"""Models, losses and the shared projection helpers."""

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

import lminima
from lminima.core import losses
from lminima.core import models, padding
from lminima.linalg import projections


class MLPTest(parameterized.TestCase):

  @parameterized.parameters(
      # d_in, widths, d_out, bias: count by hand.
      (3, (4, 4), 2, True, 3 * 4 + 4 + 4 * 4 + 4 + 4 * 2 + 2),
      (3, (4, 4), 2, False, 3 * 4 + 4 * 4 + 4 * 2),
      (10, (), 1, True, 11),
      (784, (100, 50, 20), 10, True,
       784 * 100 + 100 + 100 * 50 + 50 + 50 * 20 + 20 + 20 * 10 + 10),
      (3, (4, 4), 2, True, 3 * 4 + 4 + 4 * 4 + 4 + 4 * 2 + 2 + 3 * 2, True),
      (10, (), 1, False, 10 + 10, True),
  )
  def test_n_params_exact(self, d_in, widths, d_out, bias, expected,
                          skip=False):
    model = models.MLP(d_in, widths, d_out, "tanh", bias, skip=skip)
    self.assertEqual(model.n_params, expected)
    for variables in (model.init_params(jax.random.PRNGKey(0)),
                      model.init(jax.random.PRNGKey(0), jnp.ones((1, d_in)))):
      leaves = jax.tree_util.tree_leaves(variables)
      self.assertEqual(sum(leaf.size for leaf in leaves), expected)

  @parameterized.parameters(*models.ACTIVATIONS)
  def test_forward_matches_numpy(self, activation):
    model = models.MLP(3, (5, 4), 2, activation, bias=True)
    variables = model.init_params(jax.random.PRNGKey(1), jnp.float64)
    variables = jax.tree_util.tree_map(
        lambda a: a + 0.1 * jnp.ones_like(a), variables)  # nonzero biases
    layers = [variables["params"][f"layer_{l}"] for l in (1, 2, 3)]
    x = np.random.default_rng(0).standard_normal((6, 3))
    numpy_sigma = {
        "relu": lambda z: np.maximum(z, 0),
        "leaky_relu": lambda z: np.where(z >= 0, z, models.LEAKY_RELU_SLOPE * z),
        "tanh": np.tanh,
        "softplus": lambda z: np.log1p(np.exp(z)),
        "sigmoid": lambda z: 1 / (1 + np.exp(-z)),
        "identity": lambda z: z,
    }[activation]
    h, hidden = x, [x]
    for layer in layers[:-1]:
      h = numpy_sigma(h @ np.asarray(layer["kernel"])
                      + np.asarray(layer["bias"]))
      hidden.append(h)
    expected = (h @ np.asarray(layers[-1]["kernel"])
                + np.asarray(layers[-1]["bias"]))
    np.testing.assert_allclose(model.apply(variables, x), expected,
                               rtol=1e-12)
    np.testing.assert_allclose(
        model.apply(variables, x, method="features"),
        np.hstack([h, np.ones((6, 1))]), rtol=1e-12)
    for got, want in zip(model.apply(variables, x, method="hidden"), hidden):
      np.testing.assert_allclose(got, want, rtol=1e-12)
    kinks = model.apply(variables, x, method="kink_inputs")
    if activation in models.KINKED_ACTIVATIONS:
      pre = np.concatenate([
          hidden[l] @ np.asarray(layers[l]["kernel"])
          + np.asarray(layers[l]["bias"]) for l in (0, 1)], axis=1)
      np.testing.assert_allclose(kinks, pre, rtol=1e-12)
    else:
      self.assertEqual(kinks.shape, (6, 0))

  @parameterized.parameters("relu", "leaky_relu")
  def test_smooth_piece_is_the_network_of_its_pattern(self, activation):
    model = models.MLP(3, (5, 4), 2, activation, bias=True)
    variables = model.init_params(jax.random.PRNGKey(2), jnp.float64)
    x = np.random.default_rng(1).standard_normal((6, 3))
    below, above = model.kink_slopes
    z = np.asarray(model.apply(variables, x, method="kink_inputs"))
    pattern = np.where(z > 0, above, below)
    xs = np.hstack([x, pattern])
    # At its own pattern the piece is the network.
    np.testing.assert_allclose(model.apply(variables, xs, method="piece"),
                               model.apply(variables, x), rtol=1e-12)
    np.testing.assert_allclose(
        model.apply(variables, xs, method="piece_kink_inputs"), z, rtol=1e-12)
    # Another pattern: numpy with the given slopes, layer by layer.
    flipped = pattern.copy()
    flipped[:, [0, 6]] = above + below - flipped[:, [0, 6]]
    layers = [variables["params"][f"layer_{l}"] for l in (1, 2, 3)]
    h = x
    for layer, cols in zip(layers[:-1], (slice(0, 5), slice(5, 9))):
      h = (h @ np.asarray(layer["kernel"]) + np.asarray(layer["bias"])
           ) * flipped[:, cols]
    expected = h @ np.asarray(layers[-1]["kernel"]) + np.asarray(
        layers[-1]["bias"])
    np.testing.assert_allclose(
        model.apply(variables, np.hstack([x, flipped]), method="piece"),
        expected, rtol=1e-12)
    self.assertIsNone(models.MLP(3, (4,), 2, "tanh").kink_slopes)

  def test_init_params_is_a_function_of_the_key_alone(self):
    model = models.MLP(3, (4,), 2, "relu")
    keys = jax.random.split(jax.random.PRNGKey(7), 2)
    first = model.init_params(jax.random.PRNGKey(7))["params"]
    expected = np.sqrt(2.0) / np.sqrt(3.0) * np.asarray(
        jax.random.normal(keys[0], (3, 4), jnp.float32), np.float64)
    np.testing.assert_allclose(first["layer_1"]["kernel"], expected,
                               rtol=1e-6)
    np.testing.assert_array_equal(first["layer_1"]["bias"], np.zeros(4))

  @parameterized.parameters(("tanh", False), ("relu", True))
  def test_embedded_init_is_the_narrow_init_padded(self, activation, skip):
    """Traced true widths give each member its own draws, padded: within
    1 ulp of its eager init (compiled rounding), and bitwise the same in any
    wider network (a member's start does not depend on its company)."""
    wide, wider = (models.MLP(4, (w, w), 2, activation, skip=skip)
                   for w in (9, 40))
    draw = jax.jit(jax.vmap(lambda seed, width, model: model.init_params(
        jax.random.PRNGKey(seed), jnp.float32, jnp.full((2,), width)),
                            in_axes=(0, 0, None)), static_argnums=2)
    got = draw(np.array([5, 7]), np.array([3, 9]), wide)
    again = jax.vmap(padding.unpad_params, in_axes=(0, None))(
        draw(np.array([7, 1, 5]), np.array([9, 40, 3]), wider), wide)
    for k, (seed, width) in enumerate(((5, 3), (7, 9))):
      alone = padding.pad_params(padding.widen(wide, (width, width)).init_params(
          jax.random.PRNGKey(seed)), wide)
      for leaf, ref in zip(jax.tree_util.tree_leaves(got),
                           jax.tree_util.tree_leaves(alone)):
        np.testing.assert_allclose(leaf[k], ref, rtol=2.4e-7, atol=1e-30)
        np.testing.assert_array_equal(leaf[k] == 0, np.asarray(ref) == 0)
    for k, j in ((0, 2), (1, 0)):
      for leaf, other in zip(jax.tree_util.tree_leaves(got),
                             jax.tree_util.tree_leaves(again)):
        np.testing.assert_array_equal(leaf[k], other[j])

  def test_init_fan_in_scaling(self):
    model = models.MLP(400, (300,), 1, "relu")
    w = np.asarray(model.init_params(jax.random.PRNGKey(0))["params"][
        "layer_1"]["kernel"])
    # Var = gain^2 / fan_in = 2 / 400; 120k samples give ~0.4% std error.
    self.assertAlmostEqual(w.var() * 400 / 2, 1.0, delta=0.02)

  def test_init_dtype_is_explicit(self):
    self.assertTrue(jax.config.jax_enable_x64)
    model = models.MLP(3, (4,), 2)
    for leaf in jax.tree_util.tree_leaves(
        model.init_params(jax.random.PRNGKey(0))):
      self.assertEqual(leaf.dtype, lminima.TRAIN_DTYPE)
    for leaf in jax.tree_util.tree_leaves(
        model.init_params(jax.random.PRNGKey(0), jnp.float64)):
      self.assertEqual(leaf.dtype, jnp.float64)

  def test_bad_arguments(self):
    with self.assertRaisesRegex(ValueError, "unknown activation"):
      models.MLP(3, (4,), 2, "swish")
    with self.assertRaisesRegex(ValueError, "widths must be positive"):
      models.MLP(3, (4, 0), 2)
    model = models.MLP(3, (4,), 2)
    wrong = models.MLP(3, (5,), 2).init_params(jax.random.PRNGKey(0))
    with self.assertRaisesRegex(ValueError, "layer_1"):
      model.check_params(wrong)
    with self.assertRaisesRegex(ValueError, "'layer_1', ..., 'layer_2'") as e:
      model.check_params({"params": {"layer_1": {}}})
    self.assertNotIn("\n", str(e.exception))

  def test_padding_with_masks_reproduces_small_model(self):
    small = models.MLP(3, (2, 3), 2, "sigmoid")  # sigma(0) != 0
    big = padding.widen(small, (5, 6))
    params = small.init_params(jax.random.PRNGKey(3))
    padded = padding.pad_params(params, big)
    masks = padding.width_masks(small.widths, big.widths)
    x = jnp.asarray(np.random.default_rng(1).standard_normal((4, 3)),
                    jnp.float32)
    np.testing.assert_allclose(big.apply(padded, x, masks),
                               small.apply(params, x), rtol=1e-6)
    grads = jax.grad(lambda p: jnp.sum(big.apply(p, x, masks) ** 2))(padded)
    active = padding.pad_params(padding.unpad_params(grads, small), big)
    for g, a in zip(jax.tree_util.tree_leaves(grads),
                    jax.tree_util.tree_leaves(active)):
      np.testing.assert_array_equal(g, a)  # padded gradients exactly zero
    for a, b in zip(jax.tree_util.tree_leaves(padding.unpad_params(padded, small)),
                    jax.tree_util.tree_leaves(params)):
      np.testing.assert_array_equal(a, b)

  @parameterized.product(activation=("tanh", "relu", "identity"),
                         bias=(True, False), skip=(True, False),
                         masked=(True, False), depth=(0, 1, 3))
  def test_features_major_form_is_the_same_function(self, activation, bias,
                                                    skip, masked, depth):
    """apply_features_major (training) against apply, values and gradients,
    in float64 so that only the summation order can differ."""
    model = models.MLP(4, (5,) * depth, 3, activation, bias, skip=skip)
    variables = jax.tree_util.tree_map(
        lambda a: a + 0.1,  # nonzero biases
        model.init_params(jax.random.PRNGKey(2), jnp.float64))
    masks = (padding.width_masks((3,) * depth, model.widths, jnp.float64)
             if masked else None)
    x = np.random.default_rng(2).standard_normal((7, 4))
    np.testing.assert_allclose(
        model.apply_features_major(variables, x, masks),
        model.apply(variables, x, masks), rtol=1e-12, atol=1e-14)
    objective = lambda form: (lambda v: jnp.sum(jnp.sin(form(v, x, masks))))
    want = jax.grad(objective(model.apply))(variables)
    got = jax.grad(objective(model.apply_features_major))(variables)
    for a, b in zip(jax.tree_util.tree_leaves(got),
                    jax.tree_util.tree_leaves(want)):
      np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)

  def test_arrays_round_trip(self):
    model = models.MLP(3, (4, 4), 2, bias=False)
    params = model.init_params(jax.random.PRNGKey(0))
    arrays = models.params_to_arrays(params)
    self.assertEqual(sorted(arrays), ["layer_1/kernel", "layer_2/kernel",
                                      "layer_3/kernel"])
    back = models.params_from_arrays(arrays)
    model.check_params(back)
    np.testing.assert_array_equal(model.apply(back, jnp.ones((1, 3))),
                                  model.apply(params, jnp.ones((1, 3))))


class LossTest(parameterized.TestCase):

  @parameterized.parameters(("sum", 0.5), ("mean", 0.5 / 7))
  def test_squared_loss_scale(self, normalization, c):
    rng = np.random.default_rng(0)
    yhat, y = rng.standard_normal((7, 3)), rng.standard_normal((7, 3))
    self.assertAlmostEqual(
        float(losses.squared_loss(yhat, y, normalization)),
        c * np.sum((yhat - y) ** 2), places=12)
    # A minibatch of 7 from 28 samples: the unbiased estimate of the full loss.
    c_full = losses.loss_scale(normalization, 28)
    self.assertAlmostEqual(
        float(losses.squared_loss(yhat, y, normalization, total_m=28)),
        c_full * 28 / 7 * np.sum((yhat - y) ** 2), places=12)

  def test_errors(self):
    with self.assertRaisesRegex(ValueError, "normalization"):
      losses.loss_scale("avg", 3)
    with self.assertRaisesRegex(ValueError, "shape"):
      losses.squared_loss(jnp.ones((2, 1)), jnp.ones((2, 2)))

  def test_cross_entropy_matches_numpy(self):
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((5, 3))
    y = np.eye(3)[rng.integers(0, 3, 5)]
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    self.assertAlmostEqual(
        float(losses.softmax_cross_entropy(logits, y, "mean")),
        -np.sum(y * logp) / 5, places=12)


class ProjectTest(parameterized.TestCase):

  def test_matches_lstsq(self):
    rng = np.random.default_rng(0)
    m = rng.standard_normal((20, 6)) @ rng.standard_normal((6, 9))  # rank 6
    y = rng.standard_normal((20, 2))
    proj = projections.project(m, y, scale=0.25)
    coef = np.linalg.lstsq(m, y, rcond=None)[0]
    self.assertEqual(proj.rank, 6)
    np.testing.assert_allclose(proj.fitted, m @ coef, atol=1e-10)
    self.assertAlmostEqual(proj.value, 0.25 * np.sum((y - m @ coef) ** 2),
                           places=10)

  def test_bad_input(self):
    with self.assertRaisesRegex(ValueError, "rows"):
      projections.project(np.ones((3, 2)), np.ones(4))
    with self.assertRaisesRegex(ValueError, "NaN"):
      projections.project(np.full((3, 2), np.nan), np.ones(3))


if __name__ == "__main__":
  absltest.main()
