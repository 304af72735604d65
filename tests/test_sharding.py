"""A population sharded over 4 (forced host) devices equals a one-device run
(to float32 rounding)."""

import json
import os
import subprocess
import sys

from absl.testing import absltest
import numpy as np

_SCRIPT = """
import json, sys
import jax
from lminima import data
import lminima
from lminima.train import compiled, driver
from lminima.train.population import Member, TrainConfig
ds = data.synthetic(m=40, d_x=3, d_y=2, seed=0)
members = [Member(d, w, s) for d in (1, 2) for w in (2, 5) for s in range(3)]
config = TrainConfig(optimizer="adam", learning_rate=0.01, steps=60,
                     chunk_steps=20, batch_size=%s)
used = set()
run_chunk = compiled.run_chunk
def spy(state, *args, **kwargs):
  for leaf in jax.tree_util.tree_leaves(state.params):
    used.add(len(leaf.sharding.device_set))
  return run_chunk(state, *args, **kwargs)
compiled.run_chunk = spy
out = driver.train_population(ds, members, config, width_strategy="masked")
print(json.dumps({"devices": sorted(used),
                  "loss": [r.loss for r in out],
                  "history": [r.loss_history.tolist() for r in out],
                  "params": [float(v) for r in out for l in
                             jax.tree_util.tree_leaves(r.params)
                             for v in l.ravel()]}))
"""


def _run(devices: int, batch_size: str) -> dict:
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  result = subprocess.run([sys.executable, "-c", _SCRIPT % batch_size],
                          capture_output=True, text=True, env=env, timeout=600,
                          check=False)
  if result.returncode != 0:
    raise AssertionError(result.stderr[-3000:])
  return json.loads(result.stdout.strip().splitlines()[-1])


class MemberShardingTest(absltest.TestCase):

  def test_four_devices_equal_one(self):
    # 12 members in 2 programs of 6: each padded to 8 for 4 devices; minibatch
    # and full batch.
    for batch_size in ("None", "10"):
      one, four = _run(1, batch_size), _run(4, batch_size)
      # Every program's parameters live on 1 resp. 4 devices.
      self.assertEqual((one["devices"], four["devices"]), ([1], [4]))
      # Members never interact; only float32 rounding of the partitioned
      # kernels may differ.
      for key in ("loss", "history", "params"):
        np.testing.assert_allclose(four[key], one[key], rtol=2e-5, atol=1e-7,
                                   err_msg=f"{key}, batch {batch_size}")


if __name__ == "__main__":
  absltest.main()
