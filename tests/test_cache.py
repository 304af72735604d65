"""The persistent compilation cache: programs read back, and timed anew."""

import subprocess
import sys
import tempfile

from absl.testing import absltest

# Each run in a fresh process: JAX's cache settings are process-wide, and a
# process keeps its own compiled programs in memory.
_SCRIPT = """
import contextlib, sys
import jax, jax.numpy as jnp
from lminima.train import cache
cache.enable_compilation_cache(sys.argv[1])
hits = []
jax.monitoring.register_event_listener(
    lambda event, **kw: hits.append(1)
    if event == "/jax/compilation_cache/cache_hits" else None)
jnp.cos(jnp.ones(4)).block_until_ready()  # the cache is in use from here
lowered = jax.jit(lambda x: jnp.sin(x) @ x.T).lower(jnp.ones((5, 3)))
before = len(hits)
off = sys.argv[2] == "off"
with cache.persistent_cache_off() if off else contextlib.nullcontext():
  lowered.compile()
inside = len(hits) > before
# After the block the cache is in use again.
after = jax.jit(lambda x: jnp.tanh(x) + 1.0).lower(jnp.ones(3))
before = len(hits)
after.compile()
print(inside, len(hits) > before)
"""


class PersistentCacheTest(absltest.TestCase):

  def test_off_compiles_anew_and_on_reads_back(self):
    directory = tempfile.mkdtemp()
    hits = lambda mode: subprocess.run(
        [sys.executable, "-c", _SCRIPT, directory, mode], check=True,
        capture_output=True, text=True).stdout.strip()
    # Off, a program is neither read from the cache nor written to it: the
    # second run compiles it anew, and the first run with it on finds
    # nothing. A program compiled after the block is written, then read.
    self.assertEqual([hits("off"), hits("off")],
                     ["False False", "False True"])
    self.assertEqual(hits("on"), "False True")  # compiled and written
    self.assertEqual(hits("on"), "True True")  # read back


if __name__ == "__main__":
  absltest.main()
