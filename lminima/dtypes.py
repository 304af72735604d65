"""The float policy, decided once: float64 is on, and every array says its dtype.

Importing this module (every module of lminima does, directly or through
another) turns on ``jax_enable_x64`` so that certificates, theory quantities
and classical optima can be computed in float64. Training keeps float32 by
giving every array an explicit dtype (``TRAIN_DTYPE``); nothing in the
package relies on JAX's default dtype. Import lminima before creating any JAX
array whose dtype you leave implicit.

Example:
  >>> from lminima.dtypes import EXACT_DTYPE, TRAIN_DTYPE
  >>> import jax.numpy as jnp
  >>> jnp.zeros(2, EXACT_DTYPE).dtype, jnp.zeros(2, TRAIN_DTYPE).dtype
  (dtype('float64'), dtype('float32'))
"""

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402  (x64 must be enabled first)

TRAIN_DTYPE = jnp.float32
"""Dtype of population training (parameters, data, optimizer state)."""

EXACT_DTYPE = jnp.float64
"""Dtype of certificates, theory quantities and classical optima."""
