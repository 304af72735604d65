"""End-to-end: the sweep, its records, resumption, the report and the script."""

import collections
import csv
import dataclasses
import json
import os
import tempfile
from unittest import mock

import jax
import numpy as np
from absl.testing import absltest

from lminima import data as data_lib
import lminima
from lminima.core.tolerances import DEFAULT
from lminima.critical import outcomes as outcomes_lib
from lminima.study import claims
from lminima.study import records
from lminima.study import reload
from lminima.study import report
from lminima.study import sweep
from lminima.train import calibration
from lminima.train import planner

from _helpers import assert_one_line_error, assert_png_has_content
from _helpers import run_script, start_script

ROW_FIELDS = (
    "dataset", "depth", "width", "seed", "activation", "bias", "normalization",
    "n_params", "loss", "grad_norm", "diverged", "steps", "wall_s", "versions",
    "outcome", "outcome_reason", "loss_reference", "tolerances",
    "loss_refined", "grad_norm_refined", "refine_iters", "refine_stop_reason",
    "param_norm_start", "param_norm_refined", "params_file", "rank_D",
    "rank_D_frac", "rank_last_hidden", "identity_gap_full",
    "identity_gap_last", "euler_residual_max", "yhat_norm", "linear_opt",
    "rf_opt", "inclusion_residual_linear", "below_linear", "rank_D_loose",
    "rank_tol_loose")
"""Fields of every member that did not diverge (certify and theory on)."""

CERTIFICATE_FIELDS = (
    "verdict", "cert_method", "lambda_min", "lambda_max", "residual_min",
    "residual_max", "index", "n_flat", "grad_norm_rel", "grad_tol",
    "eig_tol")
"""Fields of a member whose outcome its certificate decided, only of those."""

CONTINUATION_FIELDS = (
    "fate_iters", "fate_loss", "fate_param_norm", "fate_grad_norm",
    "fate_asymptotic_loss", "fate_max_abs_preactivation")
"""Fields of a member whose refinement was continued, only of those."""


def tiny_config(workdir):
  config = sweep.get_config()
  # A grid whose members end both at certified minima and escaping.
  config.data_options = {"m": 24, "d_x": 3, "d_y": 1, "seed": 1}
  config.depths, config.widths, config.num_seeds = (1, 2), (2, 8), 2
  config.steps = 300
  config.workdir = workdir
  config.progress = False
  return config


class SweepTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.workdir = tempfile.mkdtemp()
    cls.config = tiny_config(cls.workdir)
    cls.log = []
    cls.rows = sweep.run(cls.config, log=cls.log.append)

  def test_one_line_per_finished_cell(self):
    for depth in (1, 2):
      for width in (2, 8):
        members = [r for r in self.rows
                   if (r["depth"], r["width"]) == (depth, width)]
        (line,) = [m for m in self.log
                   if m.startswith(f"depth {depth} width {width}: ")]
        self.assertIn("2 members", line)
        counts = collections.Counter(map(claims.outcome, members))
        self.assertIn("(" + ", ".join(f"{counts[o]} {o}"
                                      for o in claims.OUTCOMES if counts[o])
                      + ")", line)
        # Two seeds: never the MIN_POINTS a median needs.
        self.assertTrue(line.endswith(
            "; fewer than 5 certified minima, no median"), line)
    counts = collections.Counter(map(claims.outcome, self.rows))
    self.assertIn("grid: 8 of 8 members recorded: " + ", ".join(
        f"{counts[o]} {o}" for o in claims.OUTCOMES if counts[o]), self.log)

  def test_one_row_per_member_with_all_fields(self):
    self.assertLen(self.rows, 2 * 2 * 2)
    keys = {(r["depth"], r["width"], r["seed"]) for r in self.rows}
    self.assertLen(keys, 8)
    for row in self.rows:
      for field in ROW_FIELDS:
        self.assertIn(field, row)
      self.assertEqual(row["versions"]["jax"],
                       lminima.core.provenance.library_versions()["jax"])
      self.assertEqual(row["dataset"]["name"], "synthetic")
      # The certificate is stored once, as flat fields of the schema.
      self.assertContainsSubset(set(row), records.ROW_FIELDS)
      self.assertNotIn("certificate", row)
      self.assertNotIn("fate", row)
      self.assertNotIn("fate_reason", row)
      self.assertEqual(row["tolerances"], DEFAULT.to_dict())

  def test_saved_params_reproduce_the_certified_loss(self):
    ds = data_lib.load(**self.rows[0]["dataset"])
    for row in self.rows:
      problem, loaded = reload.load_member(self.workdir, row["depth"],
                                            row["width"], row["seed"])
      self.assertEqual(loaded, row)
      # Independent of the Problem: numpy forward pass of the saved arrays.
      with np.load(os.path.join(self.workdir, row["params_file"])) as arrays:
        h = ds.x
        for l in range(1, row["depth"] + 1):
          h = np.tanh(h @ arrays[f"layer_{l}/kernel"]
                      + arrays[f"layer_{l}/bias"])
        out = f"layer_{row['depth'] + 1}"
        yhat = h @ arrays[f"{out}/kernel"] + arrays[f"{out}/bias"]
      loss = 0.5 * np.mean(np.sum((yhat - ds.y) ** 2, axis=1))
      self.assertAlmostEqual(loss, row["loss_refined"], delta=1e-12)
      self.assertAlmostEqual(problem.loss, row["loss_refined"], delta=1e-12)
      # The zero predictor's loss, the scale of zero loss.
      self.assertAlmostEqual(row["loss_reference"],
                             0.5 * np.mean(np.sum(ds.y ** 2, axis=1)),
                             delta=1e-12 * row["loss_reference"])

  def test_every_member_is_accounted_for(self):
    decided = set(outcomes_lib.OUTCOMES) - {"diverged", "failed"}
    for row in self.rows:
      if row.get("diverged"):
        self.assertEqual(claims.outcome(row), "diverged")
        self.assertNotIn("outcome", row)
        continue
      self.assertIn(row["outcome"], decided, row)
      self.assertEqual(claims.outcome(row), row["outcome"])
      self.assertTrue(row["outcome_reason"])
      by_certificate = row["outcome"] in outcomes_lib.DECIDED_BY_CERTIFICATE
      # The certificate's fields are there exactly when it decided, and its
      # verdict is the outcome: the two cannot disagree.
      for field in CERTIFICATE_FIELDS:
        self.assertEqual(field in row, by_certificate, (field, row))
      continued = "fate_iters" in row
      for field in CONTINUATION_FIELDS:
        self.assertEqual(field in row, continued, (field, row))
      if by_certificate:
        self.assertEqual(row["verdict"], row["outcome"])
        # Critical relative to its own loss, at the recorded point.
        self.assertLessEqual(row["grad_norm_refined"], row["grad_tol"])
      if not continued:
        # Decided where refinement converged (fate_iters > 0 in the config).
        self.assertTrue(by_certificate, row)
        self.assertEqual(row["refine_stop_reason"], "grad_tol")
        continue
      # A member that was continued carries its evidence.
      self.assertGreaterEqual(row["fate_iters"], 1)
      # The row records the point where the continuation ended.
      self.assertAlmostEqual(row["loss_refined"], row["fate_loss"],
                             delta=1e-12 * max(row["fate_loss"], 1e-300))
      if row["outcome"] == "escaping":
        self.assertBetween(row["fate_asymptotic_loss"], 0.0, row["fate_loss"])
        self.assertGreater(row["fate_param_norm"], row["param_norm_start"])
        self.assertNotIn("verdict", row)
        self.assertNotIn(row, claims.certified(self.rows))

  def test_certified_rows_satisfy_the_last_layer_identity(self):
    certified = claims.certified(self.rows)
    self.assertNotEmpty(certified)
    self.assertLess(len(certified), len(self.rows))
    self.assertEqual(certified, [r for r in self.rows
                                 if r.get("outcome") == "local_min"])
    tested = 0
    for row in certified:
      self.assertEqual(row["verdict"], "local_min")
      self.assertLessEqual(row["grad_norm_refined"], row["grad_tol"])
      if claims.is_zero_loss(row):  # (A) counts these apart
        continue
      tested += 1
      self.assertLessEqual(row["identity_gap_last"],
                           DEFAULT.identity_rtol * row["loss_refined"])
    self.assertGreater(tested, 0)

  def test_spectrum_script_agrees_with_the_certificate(self):
    row = claims.certified(self.rows)[0]
    output = os.path.join(tempfile.mkdtemp(), "spectrum.png")
    result = run_script(
        "spectrum.py", f"--workdir={self.workdir}", f"--depth={row['depth']}",
        f"--width={row['width']}", f"--seed={row['seed']}",
        f"--output={output}")
    self.assertEqual(result.returncode, 0, result.stderr)
    printed = dict(line.split(" = ") for line in result.stdout.splitlines()
                   if line.startswith("lambda_"))
    # Lanczos (script) vs dense eigh (certificate) on the same point.
    for key in ("lambda_max", "lambda_min"):
      value = float(printed[key].split()[0])
      self.assertAlmostEqual(value, row[key],
                             delta=1e-8 * abs(row["lambda_max"]))
    assert_png_has_content(self, output)

  def test_summary_and_figure(self):
    with open(os.path.join(self.workdir, records.SUMMARY_FILE)) as f:
      table = list(csv.DictReader(f))
    self.assertLen(table, 4)
    for entry in table:
      members = [r for r in self.rows if r["depth"] == int(entry["depth"])
                 and r["width"] == int(entry["width"])]
      losses_ = [r["loss"] for r in members]
      self.assertAlmostEqual(float(entry["loss_median"]), np.median(losses_))
      self.assertEqual(int(entry["n_members"]), 2)
      self.assertEmpty([k for k in entry if k.startswith("frac_")
                        and k != "frac_below_linear"])
      counts = collections.Counter(map(claims.outcome, members))
      for o in claims.OUTCOMES:
        self.assertEqual(int(entry[f"n_{o}"]), counts[o], o)
      minima = [r["loss_refined"] for r in members
                if r.get("outcome") == "local_min"]
      self.assertEqual(int(entry["n_local_min"]), len(minima))
      if minima:
        self.assertAlmostEqual(float(entry["local_min_loss_median"]),
                               np.median(minima))
      else:
        self.assertEqual(entry["local_min_loss_median"], "")
    assert_png_has_content(self,
                           os.path.join(self.workdir, records.FIGURE_FILE))

  def test_report_accounts_for_every_member(self):
    with open(os.path.join(self.workdir, records.SUMMARY_FILE)) as f:
      table = list(csv.DictReader(f))
    for entry in table:
      self.assertEqual(sum(int(entry[f"n_{o}"]) for o in claims.OUTCOMES),
                       int(entry["n_members"]))
    with open(os.path.join(self.workdir, report.CLAIMS_FILE)) as f:
      self.assertEqual(json.load(f), report.study_claims(self.rows))
    with open(os.path.join(self.workdir, report.REPORT_FILE)) as f:
      text = f.read()
    self.assertIn(claims.claims_markdown(report.study_claims(self.rows)),
                  text)
    self.assertTrue(text.split("\n")[2].startswith("## Findings"))
    self.assertIn("## (E) Depth and width trend", text)
    for name in report.FIGURE_FILES.values():
      self.assertIn(f"]({name})", text)
      assert_png_has_content(self, os.path.join(self.workdir, name))

  def test_report_script(self):
    combined = os.path.join(tempfile.mkdtemp(), "claims.md")
    result = run_script("report.py", f"--workdir={self.workdir}",
                        f"--combined={combined}")
    self.assertEqual(result.returncode, 0, result.stderr)
    with open(combined) as f:
      self.assertIn(claims.claims_markdown(claims.claims_table(self.rows)),
                    f.read())
    empty = run_script("report.py", f"--workdir={tempfile.mkdtemp()}")
    self.assertNotEqual(empty.returncode, 0)
    self.assertEqual(len(empty.stderr.strip().splitlines()), 1, empty.stderr)
    self.assertIn("no result rows", empty.stderr)

  def test_rerun_skips_recorded_members_and_grows_the_grid(self):
    workdir = tempfile.mkdtemp()
    config = tiny_config(workdir)
    config.depths, config.widths, config.num_seeds = (1,), (2,), 1
    first = sweep.run(config, log=lambda _: None)
    again = sweep.run(config, log=lambda _: None)
    self.assertEqual(first, again)
    config.num_seeds = 2
    grown = sweep.run(config, log=lambda _: None)
    self.assertLen(grown, 2)
    self.assertEqual(grown[0], first[0])

  def test_same_config_same_numbers(self):
    workdir = tempfile.mkdtemp()
    rows = sweep.run(tiny_config(workdir), log=lambda _: None)
    drop = ("wall_s", "train_wall_s")
    strip = lambda r: {k: v for k, v in r.items() if k not in drop}
    self.assertEqual([strip(r) for r in rows], [strip(r) for r in self.rows])

  def test_member_does_not_depend_on_the_rest_of_the_grid(self):
    workdir = tempfile.mkdtemp()
    config = tiny_config(workdir)
    config.depths, config.widths, config.num_seeds = (2,), (8,), 1
    (row,) = sweep.run(config, log=lambda _: None)
    (reference,) = [r for r in self.rows
                    if (r["depth"], r["width"], r["seed"]) == (2, 8, 0)]
    # Padded and per-width programs round differently in float32 only.
    self.assertAlmostEqual(row["loss"], reference["loss"],
                           delta=1e-5 * reference["loss"])

  def test_other_config_in_same_workdir_is_refused(self):
    config = tiny_config(self.workdir)
    config.learning_rate = 0.5
    with self.assertRaisesRegex(sweep.WorkdirError, "different configuration"):
      sweep.run(config, log=lambda _: None)

  def test_member_that_raises_is_recorded_with_its_error(self):
    workdir = tempfile.mkdtemp()
    config = tiny_config(workdir)
    config.depths, config.widths = (1,), (2, 8)
    decide = outcomes_lib.decide_member
    calls = []

    def failing_decide(problem, **kwargs):
      calls.append(problem.n_params)
      if len(calls) == 2:
        raise FloatingPointError("boom\nsecond line")
      return decide(problem, **kwargs)

    log = []
    with mock.patch.object(sweep, "decide_member", failing_decide):
      rows = sweep.run(config, log=log.append)
    self.assertLen(rows, 4)
    self.assertLen(calls, 4)
    failed = [r for r in rows if "error" in r]
    (row,) = failed
    self.assertEqual(row["error"], "FloatingPointError: boom second line")
    self.assertEqual(claims.outcome(row), "failed")
    for field in ("outcome", "verdict", "loss_refined"):
      self.assertNotIn(field, row)
    self.assertIsNotNone(row["loss"])  # the training fields are kept
    self.assertEqual(row["tolerances"], DEFAULT.to_dict())  # and those before
    for other in rows:
      if other is not row:
        self.assertIn(other["outcome"], outcomes_lib.OUTCOMES)
        self.assertNotIn(claims.outcome(other), ("failed", "uncertified"))
    text = "\n".join(log)
    self.assertIn("FloatingPointError: boom", text)
    self.assertIn("1 failed", text)
    (totals,) = [m for m in log if m.startswith("grid: ")]
    self.assertTrue(totals.startswith("grid: 4 of 4 members recorded: "))
    self.assertTrue(totals.endswith(", 1 failed"), totals)
    self.assertIn("warning: 1 members failed; their rows hold the error", log)

  def test_all_members_diverge(self):
    workdir = tempfile.mkdtemp()
    config = tiny_config(workdir)
    config.depths, config.widths = (1,), (2, 8)
    config.optimizer, config.learning_rate = "sgd", 1e8
    log = []
    rows = sweep.run(config, log=log.append)
    self.assertLen(rows, 4)
    self.assertTrue(all(r["diverged"] for r in rows))
    self.assertIn("warning: all 4 members diverged", "\n".join(log))
    self.assertIn("grid: 4 of 4 members recorded: 4 diverged", log)
    with open(os.path.join(workdir, records.SUMMARY_FILE)) as f:
      table = list(csv.DictReader(f))
    self.assertEqual([int(e["n_diverged"]) for e in table], [2, 2])
    self.assertEqual([int(e["n_members"]) for e in table], [2, 2])
    self.assertFalse(os.path.exists(os.path.join(workdir,
                                                 records.FIGURE_FILE)))

  def test_a_users_arrays_go_through_the_sweep(self):
    workdir = tempfile.mkdtemp()
    config = tiny_config(workdir)
    config.depths, config.widths, config.num_seeds = (1,), (4,), 2
    rng = np.random.default_rng(5)
    x = rng.standard_normal((20, 3))
    y = np.sin(x[:, 0])  # one target column, given as (m,)
    ds = data_lib.from_arrays(x, y, name="sines")
    rows = sweep.run(config, log=lambda _: None, data=ds)
    self.assertLen(rows, 2)
    for row in rows:
      self.assertEqual(row["dataset"], ds.provenance)
      self.assertIn(row["outcome"], outcomes_lib.OUTCOMES)
      self.assertEqual(row.get("verdict"), row["outcome"] if row["outcome"]
                       in outcomes_lib.DECIDED_BY_CERTIFICATE else None)
    with open(os.path.join(workdir, records.CONFIG_FILE)) as f:
      saved = json.load(f)
    self.assertEqual(saved["data"], ds.provenance)
    self.assertNotIn("dataset", saved)
    # The rows identify the arrays; reloading a member needs them back.
    with self.assertRaisesRegex(data_lib.DataError, "pass the same arrays"):
      reload.load_member(workdir, 1, 4, 0)
    problem, row = reload.load_member(
        workdir, 1, 4, 0, data=data_lib.from_arrays(x, y, name="sines"))
    self.assertAlmostEqual(problem.loss, row["loss_refined"], delta=1e-12)
    with self.assertRaisesRegex(data_lib.DataError, "not the data of these "
                                "results"):
      reload.load_member(workdir, 1, 4, 0,
                          data=data_lib.from_arrays(x, 2 * y, name="sines"))
    # Same arrays: the rerun skips; other arrays: another configuration.
    self.assertEqual(sweep.run(config, log=lambda _: None, data=ds), rows)
    with self.assertRaisesRegex(sweep.WorkdirError, "different configuration"):
      sweep.run(config, log=lambda _: None,
                data=data_lib.from_arrays(x[:10], y[:10], name="sines"))
    with self.assertRaisesRegex(TypeError, "lminima.data.Dataset"):
      sweep.run(config, log=lambda _: None, data=(x, y))

  def test_config_is_locked_and_validated(self):
    config = sweep.get_config()
    with self.assertRaisesRegex(AttributeError, "num_seed"):
      config.num_seed = 5
    with config.unlocked():
      config.num_seed = 5
    with self.assertRaisesRegex(sweep.ConfigError,
                                "unknown config field 'num_seed'; did you "
                                "mean 'num_seeds'"):
      sweep.validate_config(config)
    for field, value, message in (
        ("learning_rate", float("inf"), "learning_rate must be a finite"),
        ("optimizer", "foo", "optimizer must be one of sgd"),
        ("depths", (1, 0), "depths must be integers >= 1"),
        ("shard", "2/2", "shard must be i/N"),
        ("data_options", {"m": 5, "colour": 1}, "data_options .*colour")):
      config = sweep.get_config()
      config[field] = value
      with self.assertRaisesRegex(sweep.ConfigError, message):
        sweep.validate_config(config)

  def test_torn_last_line_is_ignored(self):
    path = os.path.join(tempfile.mkdtemp(), "results.jsonl")
    with open(path, "w") as f:
      f.write(json.dumps({"depth": 1}) + "\n" + '{"depth": 2, "wid')
    self.assertEqual(records.read_rows(path), [{"depth": 1}])


class WorkdirCostModelTest(absltest.TestCase):

  def test_stored_model_is_kept_and_an_older_one_plans_as_before(self):
    workdir = tempfile.mkdtemp()
    backend = jax.default_backend()
    measured = planner.CostModel(compile_s=0.5, step_s=1e-5,
                                 flops_per_s=1e11, unit_s=3e-9)
    with mock.patch.object(calibration, "backend_cost_model", lambda: measured):
      self.assertEqual(records.workdir_cost_model(workdir, print), measured)
    # A later run reads the workdir's model, whatever this machine measures.
    other = dataclasses.replace(measured, unit_s=9e-9)
    with mock.patch.object(calibration, "backend_cost_model", lambda: other):
      self.assertEqual(records.workdir_cost_model(workdir, print), measured)
    # Written before unit_s existed: it planned without it.
    path = os.path.join(workdir, records.COST_MODEL_FILE)
    with open(path, "w") as f:
      json.dump({"backend": backend, "compile_s": 0.5, "step_s": 1e-5,
                 "flops_per_s": 1e11}, f)
    with mock.patch.object(calibration, "backend_cost_model", lambda: other):
      self.assertEqual(records.workdir_cost_model(workdir, print),
                       dataclasses.replace(measured, unit_s=0.0))


class ScriptTest(absltest.TestCase):

  def test_invalid_flags_exit_nonzero_with_one_line(self):
    not_a_dir = tempfile.mkstemp()[1]
    cases = (
        (["--widths=4,-2"], "widths"), (["--depths="], "depths"),
        (["--activation=swish"], "activation"),
        (["--dataset=imagenet"], "dataset"), (["--widths=a,b"], "widths"),
        (["--learning_rate=inf"], "learning_rate"),
        (["--optimizer=foo"], "optimizer"), (["--steps=abc"], "steps"),
        (["--n=20", "--batch_size=21"], "batch_size 21 exceeds the 20"),
        (["--widths=100000"], "widths too large: depth 2 x width 100000"),
        (["--workdir=" + os.path.join(not_a_dir, "run")],
         "cannot be written"),
    )
    processes, workdirs = [], []
    for args, _ in cases:
      workdirs.append(tempfile.mkdtemp())
      processes.append(start_script("depth_width.py",
                                    f"--workdir={workdirs[-1]}", *args))
    for (args, expected), process, workdir in zip(cases, processes, workdirs):
      _, stderr = process.communicate(timeout=300)
      line = assert_one_line_error(self, process.returncode, stderr, args,
                                   expected)
      if "--widths=100000" in args:
        self.assertRegex(line, r"needs about [0-9.]+ GB")
      # Refused before any training: no results file.
      self.assertEmpty(records.results_files(workdir))

  def test_small_run_writes_the_three_files(self):
    workdir = tempfile.mkdtemp()
    result = run_script("depth_width.py", "--depths=1", "--widths=3",
                        "--num_seeds=1", "--steps=100", "--n=20",
                        f"--workdir={workdir}")
    self.assertEqual(result.returncode, 0, result.stderr)
    (row,) = records.read_rows(os.path.join(workdir, records.RESULTS_FILE))
    self.assertEqual((row["depth"], row["width"], row["seed"]), (1, 3, 0))
    self.assertEqual(row["dataset"]["m"], 20)
    self.assertEqual(row["optimizer"]["steps"], 100)
    with open(os.path.join(workdir, records.SUMMARY_FILE)) as f:
      (entry,) = list(csv.DictReader(f))
    self.assertAlmostEqual(float(entry["loss_median"]), row["loss"])
    assert_png_has_content(self, os.path.join(workdir, records.FIGURE_FILE))
    self.assertIn(workdir, result.stdout)


class CoverageTest(absltest.TestCase):
  """Cells short of certified minima get more seeds, up to a cap."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    # A recorded study, then the same workdir extended by coverage rounds
    # (the coverage fields are not part of the fingerprint).
    cls.config = tiny_config(tempfile.mkdtemp())
    cls.plain_rows = sweep.run(cls.config, log=lambda _: None)
    cls.config.min_certified, cls.config.max_members = 2, 4
    cls.log = []
    cls.rows = sweep.run(cls.config, log=cls.log.append)

  def _cells(self, rows, below):
    by_cell = collections.defaultdict(list)
    for row in rows:
      if row["seed"] < below:
        by_cell[(row["depth"], row["width"])].append(claims.outcome(row))
    return by_cell

  def test_short_cells_and_only_they_get_the_next_seeds(self):
    grid = self._cells(self.rows, 2)
    self.assertEqual(grid, self._cells(self.plain_rows, 2))
    short = {cell for cell, outcomes in grid.items()
             if outcomes.count("local_min") < 2}
    # Informative only if some cells were short and some were not.
    self.assertNotEmpty(short)
    self.assertNotEqual(short, set(grid))
    seeds = collections.defaultdict(set)
    for row in self.rows:
      seeds[(row["depth"], row["width"])].add(row["seed"])
    for cell in grid:
      # Cap 4 = two rounds of num_seeds: a cell still short after round 1
      # would ask for seeds 4-5, which the cap refuses.
      want = {0, 1, 2, 3} if cell in short else {0, 1}
      self.assertEqual(seeds[cell], want, cell)
    self.assertTrue(any(line.startswith("coverage round 1:")
                        for line in self.log), self.log)
    self.assertTrue(any(line.startswith("coverage: ") for line in self.log))

  def test_the_report_says_what_each_cell_became(self):
    with open(os.path.join(self.config.workdir, report.REPORT_FILE)) as f:
      text = f.read()
    self.assertIn("## Coverage", text)
    full = self._cells(self.rows, 4)
    for (depth, width), outcomes in full.items():
      if outcomes.count("local_min") >= 2:
        status = "reached 2"
      else:
        self.assertLen(outcomes, 4)
        status = "stopped at 4 members: "
      self.assertRegex(text, rf"\| {depth} \| {width} \| {len(outcomes)} \| "
                       rf"{outcomes.count('local_min')} \| {status}")

  def test_a_rerun_repeats_an_interrupted_round_exactly(self):
    path = records.results_path(self.config.workdir)
    with open(path) as f:
      lines = f.readlines()
    last = json.loads(lines[-1])
    self.assertGreaterEqual(last["seed"], 2)  # a coverage member
    with open(path, "w") as f:
      f.writelines(lines[:-1])
    rows = sweep.run(self.config, log=lambda _: None)
    strip = lambda r: {k: v for k, v in r.items()
                       if k not in ("wall_s", "train_wall_s")}
    self.assertEqual([strip(r) for r in rows],
                     [strip(r) for r in self.rows])
    # Nothing left to do: a second rerun records nothing.
    log = []
    self.assertLen(sweep.run(self.config, log=log.append), len(rows))
    self.assertFalse(any("training" in line for line in log), log)

  def test_a_run_with_rounds_estimates_the_time_they_add(self):
    # From scratch: the grid, then the rounds, one estimate throughout.
    config = tiny_config(tempfile.mkdtemp())
    config.min_certified, config.max_members = 2, 4
    seen = []
    rows = sweep.run(config, log=lambda _: None,
                     on_member=lambda done, left: seen.append((done, left)))
    self.assertEqual([done for done, _ in seen], list(range(1, len(rows) + 1)))
    self.assertGreater(len(rows), 8)  # some rounds ran
    lefts = [left for _, left in seen]
    self.assertTrue(all(np.isfinite(left) and left >= 0 for left in lefts))
    self.assertEqual(lefts[-1], 0.0)
    # The first round's estimate is made when the round starts: after the
    # grid's last member (nothing left then), time is left again.
    self.assertEqual(lefts[7], 0.0)
    self.assertGreater(lefts[8], 0.0)

  def test_bad_coverage_settings_are_one_line_errors(self):
    for fields, name in (({"max_members": 1}, "max_members"),
                         ({"max_members": 4, "shard": "0/2"},
                          "min_certified")):
      config = tiny_config(tempfile.mkdtemp())
      config.min_certified = 2
      for key, value in fields.items():
        setattr(config, key, value)
      with self.assertRaisesRegex(sweep.ConfigError, name):
        sweep.validate_config(config)

  def test_off_by_default_and_the_fingerprint_unchanged(self):
    config = sweep.get_config()
    self.assertEqual((config.min_certified, config.max_members), (0, 0))
    # The coverage fields are not in the fingerprint: workdirs recorded
    # before they existed stay resumable, and can be extended. (The pinned
    # value is the default config's since the tolerances for slow escapes,
    # which change members' outcomes and so the fingerprint.)
    self.assertEqual(sweep.config_fingerprint(config), "94b177741c7437d1")
    config.min_certified, config.max_members = 5, 30
    self.assertEqual(sweep.config_fingerprint(config), "94b177741c7437d1")


if __name__ == "__main__":
  absltest.main()
