"""Sharpness and Hessian measures against closed forms; the experiment."""

import json
import os
import tempfile

import jax
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

import lminima
from lminima import configs
from lminima.related.sharpness import config as sharpness_config
from lminima.related.sharpness import measures as sharpness
from lminima.related.sharpness import study as sharpness_study
from lminima.study import records

from _helpers import assert_one_line_error, assert_png_has_content
from _helpers import run_script

H = np.array([0.5, 1.0, 2.0, 3.0, 5.0])  # the Hessian diag(H)
EPS = 1e-2


def _linear(params, x):
  return x @ params["w"]


def quadratic(point, h=H):
  """f(w) = 1/2 w^T diag(h) w at ``point``: 1/2 ||diag(sqrt h) w - 0||^2."""
  return lminima.Problem(_linear, {"w": np.asarray(point, float)[:, None]},
                         np.diag(np.sqrt(h)), np.zeros((len(h), 1)),
                         normalization="sum")


def phi_of(f0, f_max):
  return 100.0 * (f_max - f0) / (1.0 + f0)


class SharpnessClosedFormTest(parameterized.TestCase):

  @parameterized.parameters(*sharpness.METHODS)
  def test_full_space_at_the_minimum(self, method):
    # At x = 0 the box is |y_i| <= eps; every vertex gives 1/2 eps^2 tr(H).
    result = sharpness.epsilon_sharpness(quadratic(np.zeros(5)), EPS,
                                         method=method)
    self.assertEqual(result.start, "random")  # grad = 0 at y = 0
    self.assertEqual(result.phi_linear, 0.0)
    self.assertAlmostEqual(result.phi, 50 * EPS**2 * H.sum(), delta=1e-12)
    self.assertEqual(result.fraction_at_bound, 1.0)
    np.testing.assert_allclose(result.half_widths, EPS)
    self.assertIsNone(result.subspace_dim)
    self.assertEqual(result.method, method)

  @parameterized.parameters(*sharpness.METHODS)
  def test_zero_start_at_a_critical_point_stays_there(self, method):
    result = sharpness.epsilon_sharpness(quadratic(np.zeros(5)), EPS,
                                         method=method, start="zero")
    self.assertEqual((result.start, result.phi, result.iterations),
                     ("zero", 0.0, 0))
    np.testing.assert_array_equal(result.y, 0.0)

  @parameterized.parameters(*sharpness.METHODS)
  def test_full_space_at_a_point_with_nonzero_gradient(self, method):
    w0 = np.array([1.0, -2.0, 0.5, 0.3, -3.0])
    # Separable and convex: each y_i goes to the bound of the sign of w0_i.
    f0 = 0.5 * np.sum(H * w0**2)
    f_max = 0.5 * np.sum(H * (np.abs(w0) + EPS * (np.abs(w0) + 1)) ** 2)
    result = sharpness.epsilon_sharpness(quadratic(w0), EPS, method=method)
    self.assertEqual(result.start, "zero")
    self.assertAlmostEqual(result.loss, f0, places=12)
    self.assertAlmostEqual(result.loss_max, f_max, places=10)
    self.assertAlmostEqual(result.phi, phi_of(f0, f_max), places=8)
    np.testing.assert_allclose(result.y, np.sign(w0) * result.half_widths)
    # First-order part: sum_i w_i |h_i w0_i|, below phi (f is convex).
    linear = np.sum(result.half_widths * np.abs(H * w0))
    self.assertAlmostEqual(result.phi_linear, 100 * linear / (1 + f0),
                           places=10)
    self.assertLess(result.phi_linear, result.phi)

  def test_coordinate_subspace(self):
    w0 = np.array([1.0, -2.0, 0.5, 0.3, -3.0])
    chosen = [1, 3]
    a = np.eye(5)[:, chosen]  # A^+ x = w0[chosen]
    f0 = 0.5 * np.sum(H * w0**2)
    moved = w0.copy()
    moved[chosen] += np.sign(w0[chosen]) * EPS * (np.abs(w0[chosen]) + 1)
    f_max = 0.5 * np.sum(H * moved**2)
    for method in sharpness.METHODS:
      result = sharpness.epsilon_sharpness(quadratic(w0), EPS, subspace=a,
                                           method=method)
      self.assertEqual(result.subspace_dim, 2)
      np.testing.assert_allclose(result.half_widths,
                                 EPS * (np.abs(w0[chosen]) + 1))
      self.assertAlmostEqual(result.phi, phi_of(f0, f_max), places=8)

  def test_random_one_dimensional_subspace_at_the_minimum(self):
    # One column a: max over |y| <= eps of 1/2 y^2 a^T H a.
    key = jax.random.PRNGKey(3)
    result = sharpness.epsilon_sharpness(quadratic(np.zeros(5)), EPS,
                                         subspace_dim=1, key=key)
    a = result.subspace[:, 0]
    np.testing.assert_array_equal(
        result.subspace,
        sharpness.random_subspace(5, 1, jax.random.split(key)[0]))
    self.assertAlmostEqual(result.phi, 50 * EPS**2 * np.sum(H * a**2),
                           delta=1e-12)

  def test_random_subspace_box_uses_the_pseudo_inverse(self):
    w0 = np.array([1.0, -2.0, 0.5, 0.3, -3.0])
    result = sharpness.epsilon_sharpness(quadratic(w0), EPS, subspace_dim=3,
                                         key=jax.random.PRNGKey(1))
    coords = np.linalg.lstsq(result.subspace, w0, rcond=None)[0]
    np.testing.assert_allclose(result.half_widths,
                               EPS * (np.abs(coords) + 1), rtol=1e-10)
    self.assertTrue(np.all(np.abs(result.y) <= result.half_widths))
    f_at_y = 0.5 * np.sum(H * (w0 + result.subspace @ result.y) ** 2)
    self.assertAlmostEqual(result.loss_max, f_at_y, places=10)
    self.assertGreater(result.phi, 0.0)

  def test_hessian_measures_dense_and_matrix_free(self):
    problem = quadratic(np.array([1.0, -2.0, 0.5, 0.3, -3.0]))
    dense = sharpness.hessian_measures(problem, key=jax.random.PRNGKey(0))
    free = sharpness.hessian_measures(problem, key=jax.random.PRNGKey(0),
                                      dense_max_params=0, trace_matvecs=15)
    self.assertEqual((dense.lambda_method, dense.trace_method),
                     ("dense", "dense"))
    self.assertEqual((free.lambda_method, free.trace_method),
                     ("lanczos", "hutchpp"))
    for measures in (dense, free):
      self.assertAlmostEqual(measures.lambda_max, H.max(), places=10)
      self.assertAlmostEqual(measures.trace, H.sum(), places=10)
      self.assertLess(measures.residual_max, 1e-10)

  def test_bad_inputs(self):
    problem = quadratic(np.zeros(5))
    for kwargs in ({"eps": 0.0}, {"eps": -1.0}, {"eps": float("nan")},
                   {"eps": True}, {"method": "adam"}, {"start": "middle"},
                   {"max_iters": 0}, {"start_fraction": 0.0},
                   {"subspace_dim": 6}, {"subspace_dim": 0},
                   {"subspace": np.ones((4, 2))},
                   {"subspace": np.ones((5, 1)), "subspace_dim": 1}):
      args = {"eps": EPS, **kwargs}
      with self.assertRaises(ValueError, msg=kwargs) as raised:
        sharpness.epsilon_sharpness(problem, args.pop("eps"), **args)
      self.assertNotIn("\n", str(raised.exception))
    with self.assertRaises(ValueError):
      sharpness.hessian_measures(problem, key=jax.random.PRNGKey(0),
                                 dense_max_params=-1)


class ExperimentTest(absltest.TestCase):
  """One smoke run of scripts/sharpness.py; its files are checked below."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.workdir = os.path.join(tempfile.mkdtemp(), "run")
    cls.result = run_script("sharpness.py", "--smoke",
                            f"--workdir={cls.workdir}")
    cls.config = configs.load("sharpness", "smoke")
    cls.rows = records.read_rows(os.path.join(cls.workdir,
                                              sharpness_config.RESULTS_FILE))

  def test_script_succeeds_and_names_its_files(self):
    self.assertEqual(self.result.returncode, 0, self.result.stderr)
    self.assertIn(self.workdir, self.result.stdout)

  def test_one_row_per_member_with_the_measures(self):
    sizes = sharpness_config.batch_sizes(self.config)
    self.assertEqual(sizes, (16, 20))
    self.assertLen(self.rows, 2 * self.config.num_seeds)
    self.assertEqual(sorted((r["batch_size"], r["seed"]) for r in self.rows),
                     [(b, s) for b in sizes
                      for s in range(self.config.num_seeds)])
    for row in self.rows:
      self.assertContainsSubset(set(row), sharpness_config.ROW_FIELDS)
      self.assertFalse(row["diverged"])
      self.assertEqual(row["config"]["num_seeds"], self.config.num_seeds)
      self.assertEqual(row["versions"]["jax"], jax.__version__)
      self.assertEqual(row["dataset"]["n_train"], self.config.n_train)
      self.assertBetween(row["test_accuracy"], 0.0, 1.0)
      self.assertGreater(row["lambda_max"], 0.0)
      # Two eps x (full, random subspace).
      self.assertLen(row["sharpness"], 4)
      self.assertEqual({(s["eps"], s["space"]) for s in row["sharpness"]},
                       {(e, space) for e in self.config.eps
                        for space in ("full", "random")})
      for entry in row["sharpness"]:
        self.assertGreaterEqual(entry["phi"], 0.0)
        self.assertGreater(entry["phi_linear"], 0.0)  # not a critical point
        self.assertGreaterEqual(entry["loss_max"], row["train_loss"])

  def test_interpolation_ends_are_the_trained_members(self):
    with open(os.path.join(self.workdir,
                           sharpness_config.INTERPOLATION_FILE)) as f:
      curve = json.load(f)
    alpha = np.array(curve["alpha"])
    self.assertLen(alpha, self.config.interp_points)
    self.assertEqual((alpha[0], alpha[-1]), (-1.0, 2.0))
    small, large = sharpness_config.batch_sizes(self.config)
    loss = {r["batch_size"]: r["train_loss"] for r in self.rows
            if r["seed"] == curve["seed_small"]}
    self.assertAlmostEqual(curve["train_loss"][np.argmin(abs(alpha))],
                           loss[small], places=10)
    self.assertAlmostEqual(curve["train_loss"][np.argmin(abs(alpha - 1))],
                           loss[large], places=10)
    assert_png_has_content(self, os.path.join(self.workdir,
                                              sharpness_config.FIGURE_FILE))

  def test_report_holds_the_table(self):
    with open(os.path.join(self.workdir, sharpness_config.REPORT_FILE)) as f:
      report = f.read()
    table = [line for line in report.splitlines() if line.startswith("| ")]
    self.assertLen(table, 4)  # header, two batch sizes, LB > SB counts
    self.assertStartsWith(table[1], "| 16 | 2 (0) |")
    self.assertStartsWith(table[2], "| 20 | 2 (0) |")
    self.assertIn("interpolation.png", report)

  def test_a_used_workdir_is_refused(self):
    config = configs.load("sharpness", "smoke")
    config.workdir = self.workdir
    with self.assertRaisesRegex(records.WorkdirError, "already holds"):
      sharpness_study.run(config, log=lambda _: None)

  def test_split_is_disjoint_and_stratified(self):
    train_set, test_set = sharpness_study.load_split(self.config)
    self.assertEqual((train_set.m, test_set.m), (200, 100))
    train_rows = {row.tobytes() for row in train_set.x}
    self.assertFalse(any(row.tobytes() in train_rows for row in test_set.x))
    np.testing.assert_array_equal(test_set.y.sum(axis=0), 10)

  def test_bad_flags_exit_with_one_line(self):
    for args in (["--eps=0"], ["--small_batch=0"], ["--dataset=cifar"],
                 ["--large_batch_fraction=2"]):
      result = run_script("sharpness.py", "--smoke", *args,
                          f"--workdir={tempfile.mkdtemp()}")
      assert_one_line_error(self, result.returncode, result.stderr, args,
                            prefix="error: --")

  def test_bad_configs(self):
    for name, value in (("n_test", 0), ("num_seeds", 0), ("eps", ()),
                        ("sharpness_method", "newton"), ("activation", "x"),
                        ("learning_rate", -1.0), ("subspace_dim", -1),
                        ("small_batch", 10_000)):
      config = configs.load("sharpness", "smoke")
      config[name] = value
      with self.assertRaises(ValueError, msg=name):
        sharpness_config.validate_config(config)
    with self.assertRaisesRegex(ValueError, "variant"):
      configs.load("sharpness", "huge")


if __name__ == "__main__":
  absltest.main()
