"""What lminima keeps between runs on one machine: JAX's compiled programs and
the training planner's measured cost model.

Both live under one user cache directory: ``$LMINIMA_CACHE_DIR``, else
``$XDG_CACHE_HOME/lminima``, else ``~/.cache/lminima``. Deleting it only
costs recompilation and one recalibration.

Example:
  >>> import os, tempfile
  >>> os.environ["LMINIMA_CACHE_DIR"] = tempfile.mkdtemp()
  >>> cache_dir() == os.environ["LMINIMA_CACHE_DIR"]
  True
  >>> del os.environ["LMINIMA_CACHE_DIR"]
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any, Iterator

import jax
from jax.experimental.compilation_cache import compilation_cache

from lminima.core import files


def cache_dir() -> str:
  """The user cache directory of lminima (module docstring); not created."""
  if os.environ.get("LMINIMA_CACHE_DIR"):
    return os.environ["LMINIMA_CACHE_DIR"]
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(
      os.path.expanduser("~"), ".cache")
  return os.path.join(base, "lminima")


def enable_compilation_cache(directory: str | None = None) -> str:
  """Turns on JAX's persistent compilation cache; returns its directory.

  Every compiled program (however fast it compiled) is written to
  ``directory`` (default ``<cache_dir()>/jax``) and read back by later
  processes with the same program, JAX version and device, so a rerun skips
  XLA compilation. It is process-wide JAX configuration, so scripts call it
  (behind a flag) rather than the library.
  """
  directory = directory or os.path.join(cache_dir(), "jax")
  os.makedirs(directory, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", directory)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return directory


@contextlib.contextmanager
def persistent_cache_off() -> Iterator[None]:
  """Within it, programs compile without the persistent cache (to time a
  compilation even where an earlier process cached the program)."""
  enabled = jax.config.jax_enable_compilation_cache
  # JAX decides once per process whether the cache is used; a reset makes it
  # decide again, with the flag as it is then.
  jax.config.update("jax_enable_compilation_cache", False)
  compilation_cache.reset_cache()
  try:
    yield
  finally:
    jax.config.update("jax_enable_compilation_cache", enabled)
    compilation_cache.reset_cache()


def read_json(name: str) -> dict[str, Any]:
  """The JSON object cached as ``name``, or {} when absent or unreadable."""
  try:
    with open(os.path.join(cache_dir(), name)) as f:
      value = json.load(f)
    return value if isinstance(value, dict) else {}
  except (OSError, ValueError):
    return {}


def write_json(name: str, value: dict[str, Any]) -> None:
  """Writes ``value`` as ``name`` atomically (``files.write_atomic``: a
  temporary file of this process, then a rename), so processes sharing the
  cache (shards of one grid, test workers) never publish each other's
  half-written files; best effort."""
  def dump(path: str) -> None:
    with open(path, "w") as f:
      json.dump(value, f, indent=1, sort_keys=True)

  try:
    os.makedirs(cache_dir(), exist_ok=True)
    files.write_atomic(os.path.join(cache_dir(), name), dump)
  except OSError:
    pass  # a read-only home only costs a recalibration next time
