"""lminima: the quality of local minima of deep networks as depth and width grow.

Float policy (decided once, here): importing lminima turns on ``jax_enable_x64``
so that certificates, theory quantities and classical optima can be computed in
float64. Training keeps float32 by giving every array an explicit dtype
(``lminima.TRAIN_DTYPE``); nothing in the package relies on JAX's default dtype.
Import lminima before creating any JAX array whose dtype you leave implicit.
"""

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402  (x64 must be enabled first)

TRAIN_DTYPE = jnp.float32
"""Dtype of population training (parameters, data, optimizer state)."""

EXACT_DTYPE = jnp.float64
"""Dtype of certificates, theory quantities and classical optima."""

__version__ = "0.1.0"

# The curated public API (import order matters: x64 and the dtypes first).
from lminima.problem import Problem  # noqa: E402
from lminima.refinement import RefineResult, refine  # noqa: E402
from lminima.certify import Certificate, certificate  # noqa: E402
from lminima.batch_refine import certify_many, refine_many  # noqa: E402
from lminima.batch_newton_mr import refine_newton_mr_many  # noqa: E402

__all__ = ["EXACT_DTYPE", "TRAIN_DTYPE", "Certificate", "Problem",
           "RefineResult", "certificate", "certify_many", "refine",
           "refine_many", "refine_newton_mr_many"]
