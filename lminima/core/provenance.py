"""What every result records about the software and machine that produced it."""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform

import jax

_PACKAGES = ("lminima", "jax", "jaxlib", "flax", "optax",
             "numpy", "scipy", "scikit-learn", "tensorflow-datasets")


@functools.cache
def library_versions() -> dict[str, str]:
  """Versions of Python, the packages lminima uses, and the JAX backend.

  Example:
    >>> sorted(library_versions())[:2]
    ['backend', 'flax']
  """
  versions = {"python": platform.python_version(),
              "backend": jax.default_backend()}
  for name in _PACKAGES:
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      versions[name] = "not installed"
  return versions


@functools.cache
def machine_info() -> dict[str, str]:
  """CPU model, core count and accelerator, for benchmark tables."""
  cpu = platform.processor() or "unknown"
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          cpu = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  return {"cpu": cpu, "cores": str(os.cpu_count()),
          "devices": ", ".join(str(d) for d in jax.devices()),
          "platform": platform.platform()}
