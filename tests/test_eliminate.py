"""Elimination of bad local minima: the transforms, the a = 0 property, the
escape from a bad certified minimum, and the script."""

import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

from lminima import configs
from lminima import data as data_lib
import lminima
from lminima.core import models
from lminima.core.problem import ModuleMethod, Objective
from lminima.critical import certify
from lminima.related.eliminate import augmented as eliminate
from lminima.related.eliminate import report as eliminate_report
from lminima.related.eliminate import study as eliminate_study
from lminima.related.eliminate import training
from lminima.study import records

from _helpers import REPO, assert_one_line_error, run_script


def _random_point(loss, seed=0, m=7, d_x=3, d_y=2):
  """An augmented problem at a random point with a != 0."""
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((m, d_x))
  if loss == "squared":
    y = rng.standard_normal((m, d_y))
  else:
    y = np.eye(d_y)[rng.integers(0, d_y, m)]
  model = models.MLP(d_x, (3,), d_y, "tanh")
  eliminator = {"a": rng.standard_normal(d_y), "b": 0.3 * rng.standard_normal(
      d_y), "w": 0.5 * rng.standard_normal((d_x, d_y))}
  return eliminate.augmented_problem(
      model, model.init_params(jax.random.PRNGKey(seed)), x, y, lam=0.3,
      eliminator=eliminator, loss=loss)


class TransformTest(parameterized.TestCase):

  def test_output_is_base_plus_exponential_neuron(self):
    problem = _random_point("squared")
    params = problem.params
    base = problem.objective.apply_fn.base(params["base"], problem.x)
    e = jax.tree_util.tree_map(np.asarray, params["eliminator"])
    expected = np.asarray(base) + e["a"] * np.exp(np.asarray(problem.x)
                                                  @ e["w"] + e["b"])
    np.testing.assert_allclose(problem.yhat(), expected, rtol=1e-13)
    penalty = 0.5 * 0.3 * np.sum(e["a"] ** 2)
    fit = 0.5 * np.mean(np.sum((expected - np.asarray(problem.y)) ** 2, 1))
    self.assertAlmostEqual(problem.loss, fit + penalty, delta=1e-13)

  def test_starts_at_the_base_model(self):
    model = models.MLP(2, (4,), 3, "tanh")
    variables = model.init_params(jax.random.PRNGKey(0))
    x = np.random.default_rng(1).standard_normal((5, 2))
    y = np.eye(3)[[0, 1, 2, 0, 1]]
    problem = eliminate.augmented_problem(model, variables, x, y, lam=1.0,
                                          loss="cross_entropy")
    plain = lminima.Problem.for_module(model, variables, x, y,
                                       loss="cross_entropy")
    np.testing.assert_array_equal(problem.yhat(), plain.yhat())
    self.assertEqual(problem.loss, plain.loss)
    # Equal modules give equal (hashable) objectives: one compilation.
    self.assertEqual(eliminate.Augmented.for_module(model),
                     eliminate.Augmented(ModuleMethod(model)))
    self.assertEqual(hash(eliminate.Penalty(0.1)),
                     hash(eliminate.Penalty(0.1)))

  @parameterized.parameters("squared", "cross_entropy")
  def test_gradient_matches_finite_differences(self, loss):
    problem = _random_point(loss, seed=3)
    flat = np.asarray(problem.flat)
    rng = np.random.default_rng(0)
    for _ in range(3):
      v = rng.standard_normal(flat.size)
      h = 1e-5
      fd = (problem.loss_and_grad_at(flat + h * v)[0]
            - problem.loss_and_grad_at(flat - h * v)[0]) / (2 * h)
      self.assertAlmostEqual(fd, float(problem.grad @ v),
                             delta=1e-7 * (1 + abs(fd)))

  @parameterized.parameters("squared", "cross_entropy")
  def test_b_gradient_identity_and_a_bound_hold_everywhere(self, loss):
    # dL~/db_k = a_k (dL~/da_k - lam a_k) at every point, any loss.
    problem = _random_point(loss, seed=5)
    grad_a, grad_b = eliminate.eliminator_grads(problem)
    a = np.asarray(problem.params["eliminator"]["a"])
    np.testing.assert_allclose(grad_b, a * (grad_a - 0.3 * a), rtol=1e-10,
                               atol=1e-14)
    self.assertTrue(np.all(np.abs(a) <= eliminate.a_bound(problem)))

  def test_bad_inputs_raise_one_line_errors(self):
    model = models.MLP(2, (2,), 1)
    variables = model.init_params(jax.random.PRNGKey(0))
    x, y = np.ones((4, 2)), np.ones((4, 1))
    for lam in (0.0, -1.0, float("nan"), float("inf")):
      with self.assertRaisesRegex(ValueError, "lam must be a positive"):
        eliminate.augmented_problem(model, variables, x, y, lam=lam)
    with self.assertRaisesRegex(ValueError, "x must be flat"):
      eliminate.augmented_problem(model, variables, np.ones((4, 1, 2)), y,
                                  lam=1.0)
    with self.assertRaisesRegex(ValueError, "eliminator shapes"):
      eliminate.augmented_problem(
          model, variables, x, y, lam=1.0,
          eliminator={"a": np.zeros(1), "b": np.zeros(1),
                      "w": np.zeros((3, 1))})
    with self.assertRaisesRegex(ValueError, "flat inputs"):
      eliminate.eliminator_output(
          {"a": jnp.zeros(1), "b": jnp.zeros(1), "w": jnp.zeros((3, 1))},
          jnp.ones((4, 2)))
    plain = lminima.Problem.for_module(model, variables, x, y)
    with self.assertRaisesRegex(ValueError, "not an augmented problem"):
      eliminate.a_bound(plain)
    with self.assertRaisesRegex(ValueError, "need steps > 0"):
      training.train(plain.objective, variables, x, y, steps=0)
    for change, message in ((("widths", ()), "--widths"),
                            (("losses", ("hinge",)), "--losses"),
                            (("lam", 0.0), "--lam"),
                            (("escape_ratio", 1.0), "--escape_ratio"),
                            (("num_seeds", 0), "--num_seeds")):
      config = configs.load("eliminate", "smoke")
      config[change[0]] = change[1]
      with self.assertRaisesRegex(ValueError, message):
        eliminate_study.validate_config(config)
    with self.assertRaisesRegex(ValueError, "variant"):
      configs.load("eliminate", "huge")


class CriticalPointsTest(absltest.TestCase):
  """Refined critical points of the augmented squared loss have a = 0."""

  def test_refined_critical_points_have_a_zero_and_zero_loss(self):
    # 8 points, 13 base parameters: the tanh net can interpolate, so local
    # minima of L~ exist (zero residual, a = 0).
    ds = data_lib.synthetic(m=8, d_x=2, d_y=1, seed=0)
    model = models.MLP(2, (3,), 1, "tanh")
    converged = 0
    for seed in range(4):
      key = jax.random.PRNGKey(seed)
      problem = eliminate.augmented_problem(
          model, model.init_params(key), ds.x, ds.y, lam=0.1,
          key=jax.random.fold_in(key, 1))
      trained = training.train(problem.objective, problem.params, ds.x, ds.y,
                                steps=500)
      result = lminima.refine(problem.at(trained.params), max_iters=100)
      refined = problem.at(result.params)
      summary = eliminate.eliminator_summary(refined)
      # The bound holds at every point; it is the a = 0 statement at g = 0.
      self.assertLessEqual(summary["a_abs_max"], summary["a_bound"])
      if result.stop_reason != "grad_tol":
        continue
      converged += 1
      bound = 1e-10 / 0.1 + np.sqrt(1e-10 / 0.1)
      self.assertLessEqual(summary["a_abs_max"], bound)
      self.assertLessEqual(summary["contribution_max"], 1e-6)
      if lminima.certificate(refined).verdict == "local_min":
        # A local minimum of L~ attains the per-sample optimum: zero residual.
        self.assertLess(summary["fit_loss"], 1e-12)
    self.assertGreaterEqual(converged, 1)


class EscapeTest(absltest.TestCase):
  """A narrow tanh net with a certified non-global local minimum."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.ds = data_lib.synthetic(m=30, d_x=2, d_y=1, seed=0)
    cls.model = models.MLP(2, (2,), 1, "tanh")
    objective = Objective(ModuleMethod(cls.model))
    cls.certified = []  # (value, refined params)
    for seed in range(6):
      trained = training.train(
          objective, cls.model.init_params(jax.random.PRNGKey(seed)),
          cls.ds.x, cls.ds.y, steps=2000)
      problem = lminima.Problem.for_module(cls.model, trained.params,
                                           cls.ds.x, cls.ds.y)
      result = lminima.refine(problem, max_iters=100)
      if lminima.certificate(problem.at(result.params)).verdict == "local_min":
        cls.certified.append((result.loss, result.params))
    cls.certified.sort(key=lambda pair: pair[0])

  def augmented_at(self, params, eliminator=None):
    return eliminate.augmented_problem(
        self.model, params, self.ds.x, self.ds.y, lam=0.1,
        key=jax.random.PRNGKey(7), eliminator=eliminator)

  def test_plain_net_has_a_non_global_certified_minimum(self):
    self.assertGreaterEqual(len(self.certified), 2)
    best, worst = self.certified[0][0], self.certified[-1][0]
    self.assertGreater(worst, best * (1 + 1e-3))

  def test_augmented_objective_leaves_the_bad_minimum(self):
    best = self.certified[0][0]
    worst_value, worst_params = self.certified[-1]
    problem = self.augmented_at(worst_params)
    self.assertAlmostEqual(problem.loss, worst_value, delta=1e-15)
    # Critical for the plain net, not for L~: dL~/da = sum_i g_i e_i != 0.
    grad_a, _ = eliminate.eliminator_grads(problem)
    self.assertGreater(np.max(np.abs(grad_a)), 1e-6)
    result = lminima.refine(problem, max_iters=200)
    refined = problem.at(result.params)
    cert = lminima.certificate(refined)
    # Its end point reaches (and passes) the plain network's best value ...
    self.assertLessEqual(result.loss, best)
    # ... any certified point of L~ does too ...
    if cert.verdict == "local_min":
      self.assertLessEqual(cert.loss, best)
    # ... but not as a critical point with a = 0: the net cannot interpolate,
    # so L~ has no local minimum; the added neuron still fits the residual.
    summary = eliminate.eliminator_summary(refined)
    self.assertLessEqual(summary["a_abs_max"], summary["a_bound"])
    self.assertGreater(summary["contribution_max"], 1e-3)
    self.assertGreater(summary["fit_loss"], 1e-4)

  def test_bad_minimum_with_w_zero_is_a_saddle_of_the_augmented_objective(self):
    # With an output bias sum_i r_i = 0 at the plain critical point, so
    # (theta, a = 0, w = 0, b) is critical for L~; the a-w cross term of the
    # Hessian, sum_i r_i x_i e^b, makes it a saddle.
    _, worst_params = self.certified[-1]
    problem = self.augmented_at(worst_params, eliminator={
        "a": np.zeros(1), "b": np.zeros(1), "w": np.zeros((2, 1))})
    cert = lminima.certificate(problem)
    self.assertEqual(cert.verdict, "saddle")
    self.assertGreaterEqual(cert.index, 1)


class ScriptTest(absltest.TestCase):

  def test_smoke_run_writes_rows_and_report(self):
    workdir = tempfile.mkdtemp()
    # The config-file form; test_sharpness.py runs the short --smoke form.
    config_file = os.path.join(REPO, "lminima", "configs", "eliminate.py")
    result = run_script("eliminate.py", f"--config={config_file}:smoke",
                        f"--config.workdir={workdir}")
    self.assertEqual(result.returncode, 0, result.stderr)
    rows = records.read_rows(os.path.join(workdir, records.RESULTS_FILE))
    config = configs.load("eliminate", "smoke")
    self.assertLen(rows, len(config.losses) * len(config.widths)
                   * config.num_seeds * len(eliminate_study.VARIANTS))
    for row in rows:
      self.assertContainsSubset(set(row), eliminate_study.ROW_FIELDS)
      self.assertEqual(row["versions"]["jax"],
                       lminima.core.provenance.library_versions()["jax"])
      self.assertIn(row["verdict"], certify.VERDICTS)
      # LM only accepts steps that decrease the objective.
      self.assertLessEqual(row["loss_refined"], row["loss_start"])
      if row["variant"] != "plain":
        self.assertLessEqual(row["a_abs_max"], row["a_bound"])
    by_key = {(r["loss_fn"], r["seed"], r["variant"]): r for r in rows}
    for (loss_fn, seed, variant), row in by_key.items():
      if variant == "augmented_from_plain":
        # a = 0 at the start: L~ equals the plain refined value.
        plain = by_key[(loss_fn, seed, "plain")]
        self.assertAlmostEqual(row["loss_start"], plain["loss_refined"],
                               delta=1e-12 * (1 + plain["loss_refined"]))
        self.assertEqual(row["start_verdict"], plain["verdict"])
    with open(os.path.join(workdir, eliminate_study.REPORT_FILE)) as f:
      report = f.read()
    self.assertIn(eliminate_report.TABLE_HEADER, report)
    for loss_fn in config.losses:
      for variant in eliminate_study.VARIANTS:
        self.assertIn(f"| {loss_fn} | 2 | {variant} |", report)
    # A rerun finds every member recorded and adds nothing.
    again = run_script("eliminate.py", "--smoke", f"--workdir={workdir}")
    self.assertEqual(again.returncode, 0, again.stderr)
    self.assertLen(records.read_rows(os.path.join(
        workdir, records.RESULTS_FILE)), len(rows))
    # Another configuration in the same workdir is refused in one line.
    other = run_script("eliminate.py", "--smoke", "--lam=0.5",
                       f"--workdir={workdir}")
    self.assertNotEqual(other.returncode, 0)
    self.assertStartsWith(other.stderr.strip().splitlines()[-1], "error: ")

  def test_invalid_flags_exit_nonzero_with_one_line(self):
    for args in (["--widths=2,-1"], ["--losses=hinge"], ["--lam=0"]):
      result = run_script("eliminate.py", *args,
                          f"--workdir={tempfile.mkdtemp()}")
      assert_one_line_error(self, result.returncode, result.stderr, args)


if __name__ == "__main__":
  absltest.main()
