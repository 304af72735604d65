"""The image sources' ``pca_dim`` option: small d_x for under-parameterised
designs. Checked against scikit-learn's PCA, through the provenance round trip
and through the sweep's config validation and command line."""

import json
import os
import subprocess
import sys
import tempfile

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np
from sklearn import decomposition
import tensorflow_datasets as tfds

from lminima import data
from lminima.data import images
from lminima.study import records
from lminima.study import sweep

from _helpers import REPO, assert_one_line_error, run_script

OFFLINE = (("digits", 64), ("mnist5k", 784))


def _sklearn_scores(x: np.ndarray, k: int) -> np.ndarray:
  """sklearn's PCA scores of x on k components, scaled to unit variance, with
  the convention of ``images.pca``: each component's largest-magnitude
  loading positive."""
  fitted = decomposition.PCA(n_components=k, svd_solver="full").fit(x)
  components = fitted.components_
  largest = np.argmax(np.abs(components), axis=1)
  signs = np.sign(components[np.arange(k), largest])
  scores = fitted.transform(x) * signs
  return scores / scores.std(axis=0)


class PcaTest(parameterized.TestCase):

  @parameterized.parameters(*OFFLINE)
  def test_matches_sklearn(self, name, d_x):
    raw = data.load(name, n=120, seed=4, classes=[1, 7, 3])
    self.assertEqual(raw.d_x, d_x)
    ds = data.load(name, n=120, seed=4, classes=[1, 7, 3], pca_dim=9)
    self.assertEqual(ds.x.shape, (120, 9))
    np.testing.assert_array_equal(ds.y, raw.y)  # the same images and order
    # Up to sign, sklearn's components; with the sign convention, exactly.
    want = _sklearn_scores(raw.x, 9)
    np.testing.assert_allclose(np.abs(ds.x), np.abs(want), atol=1e-8)
    np.testing.assert_allclose(ds.x, want, atol=1e-8)
    np.testing.assert_allclose(ds.x.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(ds.x.T @ ds.x / 120, np.eye(9), atol=1e-10)

  def test_unstandardized_pixels_and_the_sign_convention(self):
    raw = data.load("digits", n=80, seed=1, standardize=False)
    ds = data.load("digits", n=80, seed=1, standardize=False, pca_dim=5)
    np.testing.assert_allclose(ds.x, _sklearn_scores(raw.x, 5), atol=1e-8)
    # Each component's largest loading is positive: the regression of the
    # scores on the centred inputs recovers the components' directions.
    centred = raw.x - raw.x.mean(axis=0)
    loadings = np.linalg.lstsq(centred, ds.x, rcond=None)[0]
    for column in loadings.T:
      self.assertGreater(column[np.argmax(np.abs(column))], 0)

  def test_components_without_variance_are_zero(self):
    # m = 6 samples centred have rank <= 5: the sixth component is noise.
    x = np.random.default_rng(0).standard_normal((6, 10))
    z = images.pca(x, 6)
    np.testing.assert_array_equal(z[:, 5], 0.0)
    np.testing.assert_allclose(z[:, :5].std(axis=0), 1.0, rtol=1e-12)

  @parameterized.parameters(*OFFLINE)
  def test_provenance_round_trip(self, name, d_x):
    del d_x  # Unused.
    ds = data.load(name, n=50, seed=2, classes=[0, 5], pca_dim=4)
    self.assertEqual(ds.provenance["pca_dim"], 4)
    provenance = json.loads(json.dumps(ds.provenance))
    again = data.load(**provenance)
    self.assertEqual(again.x.tobytes(), ds.x.tobytes())
    self.assertEqual(again.y.tobytes(), ds.y.tobytes())
    self.assertEqual(again.provenance, ds.provenance)
    data.check_provenance(again, provenance)
    # Without the option the provenance is as it always was.
    self.assertNotIn("pca_dim", data.load(name, n=50).provenance)

  def test_tfds_source(self):
    with tempfile.TemporaryDirectory() as data_dir, tfds.testing.mock_data(
        num_examples=60, policy=tfds.testing.MockPolicy.USE_CODE):
      raw = data.load("cifar10", n=40, grayscale=True, data_dir=data_dir)
      ds = data.load("cifar10", n=40, grayscale=True, data_dir=data_dir,
                     pca_dim=7)
      np.testing.assert_allclose(ds.x, _sklearn_scores(raw.x, 7), atol=1e-8)
      again = data.load(**json.loads(json.dumps(ds.provenance)))
      self.assertEqual(again.x.tobytes(), ds.x.tobytes())
      with self.assertRaisesRegex(data.DataError, "pca_dim must be >= 1"):
        data.load("cifar10", n=40, data_dir=data_dir, pca_dim=0)

  @parameterized.named_parameters(
      ("zero", dict(pca_dim=0), "pca_dim must be >= 1"),
      ("negative", dict(pca_dim=-2), "pca_dim must be >= 1"),
      ("float", dict(pca_dim=2.5), "pca_dim must be an integer"),
      ("bool", dict(pca_dim=True), "pca_dim must be an integer"),
      ("above_n", dict(n=20, pca_dim=21),
       r"pca_dim=21 exceeds min\(m, d_x\) = min\(20, 64\)"),
      ("above_d_x", dict(n=100, pca_dim=65),
       r"pca_dim=65 exceeds min\(m, d_x\) = min\(100, 64\)"),
      ("unflattened", dict(n=20, flatten=False, pca_dim=3),
       "pca_dim needs flatten=True"),
  )
  def test_bad_values_are_one_line_data_errors(self, options, message):
    with self.assertRaisesRegex(data.DataError, message) as raised:
      data.load("digits", **options)
    self.assertNotIn("\n", str(raised.exception))
    self.assertStartsWith(str(raised.exception), "digits: ")


def _digits_config(pca_dim=None):
  config = sweep.get_config()
  config.dataset = "digits"
  config.data_options = {"n": 40, "seed": 0, "classes": (0, 1)}
  if pca_dim is not None:
    config.data_options["pca_dim"] = pca_dim
  return config


class PcaConfigTest(absltest.TestCase):

  def test_validate_config_checks_pca_dim(self):
    sweep.validate_config(_digits_config(6))
    self.assertEqual(sweep.load_data(_digits_config(6)).d_x, 6)
    with self.assertRaisesRegex(
        sweep.ConfigError, r"^data_options \(digits: pca_dim must be >= 1"):
      sweep.validate_config(_digits_config(0))
    config = sweep.get_config()
    config.data_options["pca_dim"] = 2
    with self.assertRaisesRegex(sweep.ConfigError,
                                r"synthetic: unknown options \['pca_dim'\]"):
      sweep.validate_config(config)

  def test_config_file_override(self):
    """--config.data_options.pca_dim=K, for a config that lists the option
    (ml_collections overrides only fields that exist: a placeholder)."""
    path = os.path.join(tempfile.mkdtemp(), "pca_study.py")
    with open(path, "w") as f:
      f.write("from ml_collections import config_dict\n"
              "from lminima import configs\n\n"
              "def get_config(arg=None):\n"
              "  config = configs.load('digits', arg)\n"
              "  config.data_options.pca_dim = config_dict.placeholder(int)\n"
              "  return config\n")
    # config_flags registers the overrides while parsing the process's flags:
    # a fresh Python, as the scripts use it.
    main = os.path.join(os.path.dirname(path), "main.py")
    with open(main, "w") as f:
      f.write("import sys\n"
              "from absl import flags\n"
              "from ml_collections import config_flags\n"
              "from lminima.study import sweep\n"
              "holder = config_flags.DEFINE_config_file('config', None, "
              "lock_config=True)\n"
              "flags.FLAGS(sys.argv)\n"
              "sweep.validate_config(holder.value)\n"
              "print(holder.value.data_options.pca_dim, "
              "sweep.load_data(holder.value).x.shape)\n")
    result = subprocess.run(
        [sys.executable, main, f"--config={path}:smoke",
         "--config.data_options.pca_dim=5"], capture_output=True, text=True,
        timeout=300, check=False, cwd=REPO)
    self.assertEqual(result.returncode, 0, result.stderr)
    self.assertEqual(result.stdout.split(), ["5", "(40,", "5)"])


class PcaScriptTest(parameterized.TestCase):

  # The short flag, and the config field of a study without PCA (an unset
  # int placeholder, which the command line can set).
  @parameterized.parameters(("digits.py:smoke", "--pca_dim=6"),
                            ("digits.py:pixels",
                             "--config.data_options.pca_dim=6"))
  def test_pca_dim_flag(self, config, flag):
    workdir = tempfile.mkdtemp()
    result = run_script(
        "depth_width.py", f"--config=lminima/configs/{config}", flag,
        "--config.data_options.n=40", "--config.data_options.classes=(0,1)",
        "--nocertify", "--notheory", "--steps=20", "--depths=1",
        "--widths=2", "--num_seeds=1", f"--workdir={workdir}", cwd=REPO)
    self.assertEqual(result.returncode, 0, result.stderr)
    (row,) = records.read_workdir_rows(workdir)
    self.assertEqual(row["dataset"]["pca_dim"], 6)
    self.assertEqual(row["n_params"], 6 * 2 + 2 + 2 * 2 + 2)

  def test_bad_pca_dim_flag_is_one_line(self):
    args = ["--pca_dim=0"]
    result = run_script(
        "depth_width.py", "--config=lminima/configs/digits.py:smoke",
        f"--workdir={tempfile.mkdtemp()}", *args, cwd=REPO)
    assert_one_line_error(self, result.returncode, result.stderr, args,
                          "pca_dim must be >= 1")


if __name__ == "__main__":
  absltest.main()
