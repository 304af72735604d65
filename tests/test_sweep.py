"""End-to-end: the sweep, its records, resumption, the report and the script."""

import csv
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
from absl.testing import absltest

import lminima
from lminima import data as data_lib
from lminima import records
from lminima import sweep

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ROW_FIELDS = (
    "dataset", "depth", "width", "seed", "activation", "bias", "normalization",
    "n_params", "loss", "grad_norm", "diverged", "steps", "wall_s", "versions",
    "grad_norm_refined", "refine_iters", "lambda_min", "lambda_max", "index",
    "n_flat", "verdict", "cert_method", "refine_stop_reason",
    "param_norm_refined", "rank_D", "rank_D_frac",
    "rank_last_hidden", "identity_gap_full", "identity_gap_last",
    "euler_residual_max", "linear_opt", "rf_opt", "inclusion_residual_linear",
    "below_linear")


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
    cls.rows = sweep.run(cls.config, log=lambda _: None)

  def test_one_row_per_member_with_all_fields(self):
    self.assertLen(self.rows, 2 * 2 * 2)
    keys = {(r["depth"], r["width"], r["seed"]) for r in self.rows}
    self.assertLen(keys, 8)
    for row in self.rows:
      for field in ROW_FIELDS:
        self.assertIn(field, row)
      self.assertEqual(row["versions"]["jax"],
                       lminima.provenance.library_versions()["jax"])
      self.assertEqual(row["dataset"]["name"], "synthetic")
      # The certificate is stored once, as flat fields of the schema.
      self.assertContainsSubset(set(row), records.ROW_FIELDS)
      self.assertNotIn("certificate", row)

  def test_saved_params_reproduce_the_certified_loss(self):
    ds = data_lib.load(**self.rows[0]["dataset"])
    for row in self.rows:
      problem, loaded = records.load_member(self.workdir, row["depth"],
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

  def test_certified_rows_satisfy_the_last_layer_identity(self):
    certified = [r for r in self.rows if r["verdict"] == "local_min"]
    self.assertNotEmpty(certified)
    self.assertLess(len(certified), len(self.rows))
    for row in certified:
      self.assertLessEqual(row["grad_norm_refined"], 1e-8)
      self.assertLess(row["identity_gap_last"],
                      1e-8 * (1 + row["loss_refined"]))

  def test_spectrum_script_agrees_with_the_certificate(self):
    row = next(r for r in self.rows if r["verdict"] == "local_min")
    output = os.path.join(tempfile.mkdtemp(), "spectrum.png")
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "scripts", "spectrum.py"),
         f"--workdir={self.workdir}", f"--depth={row['depth']}",
         f"--width={row['width']}", f"--seed={row['seed']}",
         f"--output={output}"], capture_output=True, text=True, timeout=300,
        check=False)
    self.assertEqual(result.returncode, 0, result.stderr)
    printed = dict(line.split(" = ") for line in result.stdout.splitlines()
                   if line.startswith("lambda_"))
    # Lanczos (script) vs dense eigh (certificate) on the same point.
    for key in ("lambda_max", "lambda_min"):
      value = float(printed[key].split()[0])
      self.assertAlmostEqual(value, row[key],
                             delta=1e-8 * abs(row["lambda_max"]))
    _assert_png_has_content(self, output)

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
      fracs = [float(entry[f"frac_{v}"]) for v in records.VERDICTS]
      self.assertAlmostEqual(sum(fracs), 1.0)
      minima = [r["loss_refined"] for r in members
                if r["verdict"] == "local_min"]
      self.assertEqual(int(entry["n_local_min"]), len(minima))
      if minima:
        self.assertAlmostEqual(float(entry["local_min_loss_median"]),
                               np.median(minima))
      else:
        self.assertEqual(entry["local_min_loss_median"], "")
    _assert_png_has_content(self,
                            os.path.join(self.workdir, records.FIGURE_FILE))

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

  def test_torn_last_line_is_ignored(self):
    path = os.path.join(tempfile.mkdtemp(), "results.jsonl")
    with open(path, "w") as f:
      f.write(json.dumps({"depth": 1}) + "\n" + '{"depth": 2, "wid')
    self.assertEqual(records.read_rows(path), [{"depth": 1}])


class ScriptTest(absltest.TestCase):

  def run_script(self, *args):
    return subprocess.run(
        [sys.executable, os.path.join(REPO, "scripts", "depth_width.py"),
         *args], capture_output=True, text=True, timeout=300, check=False)

  def test_invalid_flags_exit_nonzero_with_one_line(self):
    for args in (["--widths=4,-2"], ["--depths="], ["--activation=swish"],
                 ["--dataset=imagenet"], ["--widths=a,b"]):
      result = self.run_script(*args, f"--workdir={tempfile.mkdtemp()}")
      self.assertNotEqual(result.returncode, 0, args)
      lines = result.stderr.strip().splitlines()
      self.assertLen(lines, 1, (args, result.stderr))
      self.assertStartsWith(lines[0], "error: ")

  def test_small_run_writes_the_three_files(self):
    workdir = tempfile.mkdtemp()
    result = self.run_script("--depths=1", "--widths=3", "--num_seeds=1",
                             "--steps=100", "--n=20", f"--workdir={workdir}")
    self.assertEqual(result.returncode, 0, result.stderr)
    (row,) = records.read_rows(os.path.join(workdir, records.RESULTS_FILE))
    self.assertEqual((row["depth"], row["width"], row["seed"]), (1, 3, 0))
    self.assertEqual(row["dataset"]["m"], 20)
    self.assertEqual(row["optimizer"]["steps"], 100)
    with open(os.path.join(workdir, records.SUMMARY_FILE)) as f:
      (entry,) = list(csv.DictReader(f))
    self.assertAlmostEqual(float(entry["loss_median"]), row["loss"])
    _assert_png_has_content(self, os.path.join(workdir, records.FIGURE_FILE))
    self.assertIn(workdir, result.stdout)


def _assert_png_has_content(test, path):
  """A decodable PNG that is not a blank canvas."""
  import matplotlib.image  # pylint: disable=g-import-not-at-top
  pixels = matplotlib.image.imread(path)
  test.assertGreater(min(pixels.shape[:2]), 200)
  test.assertGreater(len(np.unique(pixels.reshape(-1, pixels.shape[-1]),
                                   axis=0)), 10)


if __name__ == "__main__":
  absltest.main()
