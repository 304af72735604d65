"""Data sets as float64 arrays with provenance: synthetic data, image sets
through tensorflow-datasets or PyPI packages, and a user's own arrays.

``load(name, **options)`` is the entry point (``lminima.data.sources``); the
image pipeline is ``lminima.data.images``, the container ``lminima.data.dataset``.
"""

from lminima.data.dataset import DataError, Dataset
from lminima.data.images import digits, mnist5k, tfds_images
from lminima.data.sources import (NAMES, arrays_hash, check_options,
                                  check_provenance, from_arrays, load,
                                  synthetic)

__all__ = ["NAMES", "DataError", "Dataset", "arrays_hash", "check_options",
           "check_provenance", "digits", "from_arrays", "load", "mnist5k",
           "synthetic", "tfds_images"]
