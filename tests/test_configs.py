"""Studies as config files: every config builds, the offline smokes run."""

import contextlib
import csv
import os
import tempfile

from absl.testing import absltest
from absl.testing import parameterized
import pytest
import tensorflow_datasets as tfds

from lminima import configs
from lminima.critical import certify
from lminima.critical import outcomes
from lminima.related.eliminate import study as eliminate_study
from lminima.related.sharpness import config as sharpness_config
from lminima.study import claims
from lminima.study import records
from lminima.study import report
from lminima.study import sweep
from lminima.train import population

from lminima.core.models import MLP

from _helpers import REPO, assert_one_line_error, run_script, start_script

OFFLINE = ("synthetic", "digits", "mnist5k")
TFDS = {"mnist": "mnist", "cifar10": "cifar10", "svhn": "svhn_cropped"}


def sweep_config_n_params(d_x, d_y, depth, width):
  return MLP(d_x, (width,) * depth, d_y).n_params


class ConfigFilesTest(parameterized.TestCase):

  def test_every_study_has_a_file(self):
    self.assertCountEqual(configs.STUDIES, OFFLINE + tuple(TFDS))
    for name in configs.STUDIES:
      self.assertTrue(os.path.exists(os.path.join(
          REPO, "lminima", "configs", f"{name}.py")))

  @parameterized.parameters(*[(name, variant) for name in configs.STUDIES
                               for variant in (None,)
                               + configs.variants(name)])
  def test_builds_validates_and_keeps_the_one_source_of_defaults(
      self, name, variant):
    config = configs.load(name, variant)
    sweep.validate_config(config)
    self.assertEqual(config.workdir,
                     f"runs/{name}" + (f"_{variant}" if variant else ""))
    if name in TFDS:
      self.assertEqual(config.dataset, TFDS[name])
    # Training defaults come from TrainConfig through sweep.get_config.
    defaults = population.TrainConfig()
    for field in ("bias", "normalization", "optimizer", "learning_rate"):
      self.assertEqual(config[field], getattr(defaults, field), field)
    if variant is None:
      self.assertEqual(config.steps, defaults.steps)
    # Locked: a misspelt field is refused, not silently added.
    with self.assertRaisesRegex(AttributeError, "num_seed"):
      config.num_seed = 2

  def test_variants_of_the_subspace_bound(self):
    control = configs.load("synthetic", "bottleneck")
    skip = configs.load("synthetic", "skip")
    self.assertFalse(control.skip)
    self.assertTrue(skip.skip)
    # The same data and grid: only the structure differs.
    self.assertEqual(control.data_options, skip.data_options)
    self.assertLess(max(control.widths), control.data_options.d_y)
    self.assertEqual(configs.variants("synthetic"),
                     ("smoke", "bottleneck", "skip", "relu", "coverage"))

  def test_the_coverage_variant_is_the_study_with_coverage(self):
    study, covered = configs.load("synthetic"), configs.load("synthetic",
                                                             "coverage")
    self.assertEqual((covered.min_certified, covered.max_members), (5, 24))
    self.assertEqual(study.min_certified, 0)
    # The same members and numbers: a recorded study can be extended.
    self.assertEqual(sweep.config_fingerprint(study),
                     sweep.config_fingerprint(covered))

  @parameterized.parameters(
      ("eliminate", eliminate_study.validate_config),
      ("sharpness", sharpness_config.validate_config))
  def test_the_related_experiments_follow_the_same_convention(
      self, name, validate):
    self.assertIn(name, configs.EXPERIMENTS)
    self.assertTrue(os.path.exists(os.path.join(
        REPO, "lminima", "configs", f"{name}.py")))
    config, smoke = configs.load(name), configs.load(name, "smoke")
    validate(config)
    validate(smoke)
    self.assertEqual((config.workdir, smoke.workdir),
                     (f"runs/{name}", f"runs/{name}_smoke"))
    self.assertLess(smoke.num_seeds, config.num_seeds)
    self.assertEqual(configs.variants(name), ("smoke",))
    with self.assertRaisesRegex(ValueError, f"choose {name}.py or "
                                f"{name}.py:smoke"):
      configs.load(name, "huge")

  def test_studies_are_under_parameterised(self):
    for name in ("synthetic", "digits", "mnist5k"):
      config = configs.load(name)
      options = config.data_options
      d_x = options.get("pca_dim") or options.get("d_x")
      d_y = options.get("d_y", 10)
      m = options.get("m") or options.get("n")
      largest = sweep_config_n_params(d_x, d_y, max(config.depths),
                                      max(config.widths))
      self.assertLess(largest, m * d_y, name)

  def test_unknown_variant(self):
    with self.assertRaisesRegex(ValueError, "unknown variant 'tiny'.*"
                                "digits.py:pixels"):
      configs.load("digits", "tiny")
    with self.assertRaisesRegex(ValueError, "unknown study"):
      configs.load("imagenet")

  @parameterized.parameters(*OFFLINE, "mnist")
  def test_smoke_runs_and_reports(self, name):
    self._smoke_runs_and_reports(name)

  # The colour images' smoke runs go the way mnist's does and take 40-60 s
  # each on 2 cores.
  @pytest.mark.slow
  @parameterized.parameters("cifar10", "svhn")
  def test_smoke_runs_and_reports_colour(self, name):
    self._smoke_runs_and_reports(name)

  def _smoke_runs_and_reports(self, name):
    config = configs.load(name, "smoke")
    config.workdir = tempfile.mkdtemp()
    with contextlib.ExitStack() as stack:
      if name in TFDS:  # no network: tensorflow-datasets' mock examples
        config.data_dir = tempfile.mkdtemp()
        stack.enter_context(tfds.testing.mock_data(
            num_examples=200, policy=tfds.testing.MockPolicy.USE_CODE))
      rows = sweep.run(config, log=lambda _: None)
    self.assertLen(rows, len(config.depths) * len(config.widths)
                   * config.num_seeds)
    for row in rows:
      self.assertEqual(row["dataset"]["name"], TFDS.get(name, config.dataset))
      # One outcome per member; the certificate's verdict is in the row
      # exactly when it decided that outcome, and then agrees with it.
      self.assertIn(claims.outcome(row), claims.OUTCOMES)
      self.assertNotIn(claims.outcome(row), ("failed", "uncertified"),
                       row.get("error"))
      if row.get("diverged"):
        continue
      self.assertIn(row["outcome"], outcomes.OUTCOMES)
      if row["outcome"] in outcomes.DECIDED_BY_CERTIFICATE:
        self.assertEqual(row["verdict"], row["outcome"])
        self.assertIn(row["verdict"], certify.VERDICTS)
      else:
        self.assertNotIn("verdict", row)
    with open(os.path.join(config.workdir, records.SUMMARY_FILE)) as f:
      summary = list(csv.DictReader(f))
    self.assertEqual(
        sum(int(e[f"n_{o}"]) for e in summary for o in claims.OUTCOMES),
        len(rows))
    for name in (records.SUMMARY_FILE, report.REPORT_FILE,
                 report.CLAIMS_FILE, *report.FIGURE_FILES.values()):
      self.assertTrue(os.path.exists(os.path.join(config.workdir, name)),
                      name)


class ScriptTest(absltest.TestCase):

  def test_config_file_with_overrides_and_short_flags(self):
    workdir = tempfile.mkdtemp()
    result = run_script(
        "depth_width.py", "--config=lminima/configs/digits.py:smoke",
        "--config.steps=60", "--config.data_options.n=30",
        f"--config.workdir={workdir}", "--widths=2,3", cwd=REPO)
    self.assertEqual(result.returncode, 0, result.stderr)
    rows = records.read_workdir_rows(workdir)
    self.assertEqual([(r["depth"], r["width"]) for r in rows],
                     [(1, 2), (1, 3)])
    for row in rows:
      self.assertEqual(row["optimizer"]["steps"], 60)
      self.assertEqual(row["dataset"]["n"], 30)
      self.assertEqual(row["dataset"]["classes"], [0, 1])

  def test_bad_config_values_end_in_one_line(self):
    cases = ((["--config.num_seed=3"], "unknown config field 'num_seed'"),
             (["--config.learning_rate=inf"], "learning_rate must be"),
             (["--config.optimizer=foo"], "optimizer must be one of"),
             (["--config.data_options.colour=1"], "'colour'"),
             (["--config.steps=x"], "--config.steps"))
    processes = [start_script(
        "depth_width.py", "--config=lminima/configs/synthetic.py:smoke",
        f"--config.workdir={tempfile.mkdtemp()}", *args, cwd=REPO)
                 for args, _ in cases]
    for (args, expected), process in zip(cases, processes):
      _, stderr = process.communicate(timeout=300)
      assert_one_line_error(self, process.returncode, stderr, args, expected)


if __name__ == "__main__":
  absltest.main()
