"""lminima: the quality of local minima of deep networks as depth and width grow.

Float policy (decided once, in ``lminima.dtypes``): importing lminima turns on
``jax_enable_x64`` so that certificates, theory quantities and classical optima
can be computed in float64. Training keeps float32 by giving every array an
explicit dtype (``lminima.TRAIN_DTYPE``); nothing in the package relies on JAX's
default dtype. Import lminima before creating any JAX array whose dtype you
leave implicit.
"""

from lminima.dtypes import EXACT_DTYPE, TRAIN_DTYPE

__version__ = "0.1.0"

# The curated public API; every other name keeps its subpackage's path.
from lminima.core.problem import Problem
from lminima.critical.batched.certificates import certify_many
from lminima.critical.batched.refine import refine_many
from lminima.critical.batched.newton_mr import refine_newton_mr_many
from lminima.critical.certify import Certificate, certificate
from lminima.critical.refinement import RefineResult, refine

__all__ = ["EXACT_DTYPE", "TRAIN_DTYPE", "Certificate", "Problem",
           "RefineResult", "certificate", "certify_many", "refine",
           "refine_many", "refine_newton_mr_many"]
