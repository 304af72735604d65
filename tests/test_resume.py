"""Sweeps that never lose work: kill and rerun, torn lines, locks, shards.

The script runs in subprocesses, killed with SIGKILL mid-certification; the
rerun's rows must equal an uninterrupted run's, number for number.
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from unittest import mock

import jax
from absl.testing import absltest

from lminima.study import records
from lminima.study import sweep

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "scripts", "depth_width.py")

# The grid, as flags and as a config: two depths of four members each.
FLAGS = ("--depths=1,2", "--widths=2,4", "--num_seeds=2", "--steps=200",
         "--n=24", "--progress=false")
WALL_TIMES = ("wall_s", "train_wall_s")


def grid_config(workdir):
  config = sweep.get_config()
  config.data_options.m = 24
  config.depths, config.widths, config.num_seeds = (1, 2), (2, 4), 2
  config.steps = 200
  config.workdir = workdir
  config.progress = False
  return config


def strip(rows):
  return [{k: v for k, v in r.items() if k not in WALL_TIMES} for r in rows]


def script(*args):
  return [sys.executable, SCRIPT, *FLAGS, *args]


def wait_for_rows(path, count, process, timeout=240):
  """Polls ``path`` until it holds ``count`` complete rows."""
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if os.path.exists(path):
      with open(path) as f:
        if f.read().count("\n") >= count:
          return
    if process.poll() is not None:
      raise AssertionError(f"the run ended (rc {process.returncode}) before "
                           f"{count} rows: {process.stderr.read()}")
    time.sleep(0.01)
  raise AssertionError(f"no {count} rows in {path} after {timeout} s")


class ResumeTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.reference = sweep.run(grid_config(tempfile.mkdtemp()),
                              log=lambda _: None)

  def test_reference_is_the_whole_grid(self):
    self.assertLen(self.reference, 8)
    self.assertLen({records.member_key(r) for r in self.reference}, 8)

  def test_sigkill_mid_certification_then_rerun_equals_uninterrupted(self):
    workdir = tempfile.mkdtemp()
    path = os.path.join(workdir, records.RESULTS_FILE)
    process = subprocess.Popen(script(f"--workdir={workdir}"),
                               stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    try:
      # One row of depth 1 recorded: the kill lands mid-depth, among members
      # that an uninterrupted run trains in one population.
      wait_for_rows(path, 1, process)
      process.send_signal(signal.SIGKILL)
    finally:
      process.kill()
      process.wait()
    self.assertEqual(process.returncode, -signal.SIGKILL)
    before = records.read_rows(path)
    self.assertBetween(len(before), 1, 3)

    rerun = subprocess.run(script(f"--workdir={workdir}"),
                           capture_output=True, text=True, timeout=300,
                           check=False)
    self.assertEqual(rerun.returncode, 0, rerun.stderr)
    rows = records.read_workdir_rows(workdir)
    # None lost, none duplicated, the same numbers as the uninterrupted run.
    self.assertLen(rows, 8)
    self.assertEqual(strip(rows), strip(self.reference))
    # The rows recorded before the kill were kept as they were.
    self.assertEqual(rows[:len(before)], before)
    with open(path) as f:
      self.assertLen(f.read().splitlines(), 8)

  def test_torn_last_line_is_repaired_and_its_member_rerun(self):
    workdir = tempfile.mkdtemp()
    config = grid_config(workdir)
    config.depths = (2,)
    sweep.run(config, log=lambda _: None)
    path = os.path.join(workdir, records.RESULTS_FILE)
    with open(path, "rb") as f:
      text = f.read()
    last = text[:-1].rsplit(b"\n", 1)[1]
    kept = text[:len(text) - len(last) - 1]  # the three rows before the cut
    torn = text[:len(text) - len(last) // 2]
    with open(path, "wb") as f:  # the last write cut in half
      f.write(torn)
    self.assertLen(records.read_rows(path), 3)
    # The repair removes the torn line only: the rows before it stay byte
    # for byte. (A repair that also cut a complete row would rerun that
    # member; the rows would still equal the uninterrupted run's, only
    # their bytes, wall times included, show it.)
    other = os.path.join(tempfile.mkdtemp(), records.RESULTS_FILE)
    with open(other, "wb") as f:
      f.write(torn)
    with self.assertLogs(level="WARNING"):
      self.assertEqual(records.repair_results_file(other),
                       len(torn) - len(kept))
    with open(other, "rb") as f:
      self.assertEqual(f.read(), kept)
    with self.assertLogs(level="WARNING") as logs:
      rows = sweep.run(config, log=lambda _: None)
    self.assertIn("torn last line", "\n".join(logs.output))
    self.assertLen(rows, 4)
    expected = [r for r in self.reference if r["depth"] == 2]
    self.assertEqual(strip(rows), strip(expected))
    with open(path, "rb") as f:
      after = f.read()
    self.assertEqual(after[:len(kept)], kept)
    lines = after.decode().splitlines()
    self.assertLen(lines, 4)
    for line in lines:
      json.loads(line)

  def test_row_appended_onto_a_torn_line_is_salvaged(self):
    # What versions without the repair left behind.
    path = os.path.join(tempfile.mkdtemp(), records.RESULTS_FILE)
    with open(path, "w") as f:
      f.write('{"depth": 1}\n{"depth": 2, "wi{"depth": 3}\n{"depth": 4}\n')
    with self.assertLogs(level="WARNING") as logs:
      rows = records.read_rows(path)
    self.assertEqual(rows, [{"depth": 1}, {"depth": 3}, {"depth": 4}])
    self.assertIn(":2 is a row appended onto a torn line", logs.output[0])

  def test_second_process_on_the_workdir_is_refused(self):
    workdir = tempfile.mkdtemp()
    with records.lock_workdir(workdir):
      result = subprocess.run(script(f"--workdir={workdir}"),
                              capture_output=True, text=True, timeout=300,
                              check=False)
    self.assertNotEqual(result.returncode, 0)
    (line,) = result.stderr.strip().splitlines()
    self.assertStartsWith(line, "error: another process is running this "
                          "workdir")
    self.assertEmpty(records.results_files(workdir))

  def test_locks_of_shards(self):
    workdir = tempfile.mkdtemp()
    with records.lock_workdir(workdir, (0, 2)):
      with records.lock_workdir(workdir, (1, 2)):  # other shards run beside
        pass
      with self.assertRaisesRegex(records.WorkdirError, "shard 0/2"):
        with records.lock_workdir(workdir, (0, 2)):
          pass
      with self.assertRaisesRegex(records.WorkdirError, "this workdir"):
        with records.lock_workdir(workdir):
          pass
    with records.lock_workdir(workdir):  # released when the run ends
      pass

  def test_two_shards_merged_equal_one_unsharded_run(self):
    workdir = tempfile.mkdtemp()
    processes = [subprocess.Popen(script(f"--workdir={workdir}",
                                         f"--shard={i}/2"),
                                  stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
                 for i in range(2)]
    for process in processes:
      _, stderr = process.communicate(timeout=300)
      self.assertEqual(process.returncode, 0, stderr)
    shard_rows = [records.read_rows(records.results_path(workdir, (i, 2)))
                  for i in range(2)]
    self.assertEqual(
        [[records.member_key(r) for r in rows] for rows in shard_rows],
        [[records.member_key(r) for r in self.reference[i::2]]
         for i in range(2)])
    self.assertFalse(os.path.exists(os.path.join(workdir,
                                                 records.RESULTS_FILE)))
    # The unsharded run finds every member recorded, trains nothing and
    # writes the merged summary.
    logs = []
    rows = sweep.run(grid_config(workdir), log=logs.append)
    self.assertNotIn("training", "\n".join(logs))
    self.assertEqual(strip(rows), strip(self.reference))
    self.assertEqual(strip(records.read_workdir_rows(workdir)),
                     strip(self.reference))
    self.assertFalse(os.path.exists(os.path.join(workdir,
                                                 records.RESULTS_FILE)))


class DistributedShardTest(absltest.TestCase):

  def test_process_index_and_count_name_the_shard(self):
    calls = []
    with mock.patch.object(jax, "process_index", return_value=3), \
         mock.patch.object(jax, "process_count", return_value=8):
      shard = sweep.process_shard(initialize=lambda: calls.append(1))
    self.assertEqual((shard, calls), ("3/8", [1]))
    self.assertEqual(sweep.parse_shard(shard), (3, 8))
    # One process: the whole grid.
    self.assertEqual(sweep.process_shard(initialize=lambda: None), "0/1")

  def test_distributed_refuses_an_explicit_shard(self):
    result = subprocess.run(script(f"--workdir={tempfile.mkdtemp()}",
                                   "--distributed", "--shard=1/2"),
                            capture_output=True, text=True, timeout=300,
                            check=False)
    self.assertNotEqual(result.returncode, 0)
    (line,) = result.stderr.strip().splitlines()
    self.assertIn("do not also give --shard", line)


if __name__ == "__main__":
  absltest.main()
