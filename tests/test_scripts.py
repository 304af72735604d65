"""What every script in scripts/ shares: a quiet start, one-line Ctrl-C.

The scripts run in subprocesses, as a user runs them.
"""

import os
import shutil
import signal
import subprocess
import sys
import tempfile

from absl.testing import absltest

from lminima.study import cli
from lminima.study import records

from _helpers import REPO, run_script, script_command

SCRIPTS = ("depth_width.py", "eliminate.py", "report.py", "sharpness.py",
           "spectrum.py")

# A small sweep without refinement: seconds, and JAX's backends are used.
SMOKE = ("--config=lminima/configs/synthetic.py:smoke", "--nocertify",
         "--notheory", "--progress=false")


class ScriptsTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.workdir = tempfile.mkdtemp()
    # --verbosity=0: absl shows INFO lines, where JAX's backend discovery
    # reports every platform it did not find.
    cls.smoke = run_script("depth_width.py", *SMOKE, "--verbosity=0",
                           f"--workdir={cls.workdir}", cwd=REPO)

  def test_every_script_starts_through_run_script(self):
    for name in SCRIPTS:
      with open(os.path.join(REPO, "scripts", name)) as f:
        source = f.read()
      self.assertIn("cli.run_script(", source, name)
      self.assertNotIn("app.run(", source, name)

  def test_backend_probing_is_not_logged(self):
    self.assertEqual(self.smoke.returncode, 0, self.smoke.stderr)
    self.assertTrue(records.read_workdir_rows(self.workdir))
    self.assertNotIn("Unable to initialize backend", self.smoke.stderr)

  def test_ctrl_c_while_training_ends_in_one_line(self):
    # Long enough training that the interrupt lands in it; PYTHONUNBUFFERED
    # so that the "training" line arrives as it is printed.
    process = subprocess.Popen(
        script_command("depth_width.py", "--depths=1", "--widths=2,3",
                       "--num_seeds=1", "--steps=20000000", "--progress=false",
                       f"--workdir={tempfile.mkdtemp()}"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
      for line in process.stdout:
        if "training" in line:
          break
      else:
        self.fail(f"no training line: {process.communicate()[1]}")
      # Ctrl-C again if the first goes unseen (once, in a full suite on a
      # loaded machine, the script ran to its end; the cause is not known);
      # a process that ends by itself (status 0) still fails the test.
      stderr = "(no end within 120 s of the first Ctrl-C)"
      for _ in range(12):
        process.send_signal(signal.SIGINT)
        try:
          _, stderr = process.communicate(timeout=10)
          break
        except subprocess.TimeoutExpired:
          continue
    finally:
      process.kill()
      process.wait()
    self.assertEqual(process.returncode, cli.INTERRUPTED_STATUS,
                     stderr)
    self.assertEqual(stderr, "interrupted: rerun the same command to resume; "
                     "finished members are kept\n")

  def test_run_script_turns_keyboard_interrupt_into_one_line(self):
    # The helper alone, in a fresh Python (it ends the process).
    program = ("from lminima.study import cli\n"
               "def main(argv):\n"
               "  raise KeyboardInterrupt\n"
               "cli.run_script(main, interrupted='nothing lost')\n")
    result = subprocess.run([sys.executable, "-c", program],
                            capture_output=True, text=True, timeout=120,
                            check=False)
    self.assertEqual(result.returncode, 130)
    self.assertEqual(result.stderr, "interrupted: nothing lost\n")

  def test_report_warns_of_a_torn_last_line(self):
    workdir = os.path.join(tempfile.mkdtemp(), "torn")
    shutil.copytree(self.workdir, workdir)
    path = os.path.join(workdir, records.RESULTS_FILE)
    rows = records.read_rows(path)
    with open(path, "a") as f:  # a write cut short
      f.write('{"depth": 3, "wid')
    self.assertEqual(records.torn_tail(path), b'{"depth": 3, "wid')
    self.assertEqual(records.read_rows(path), rows)
    result = run_script("report.py", f"--workdir={workdir}")
    self.assertEqual(result.returncode, 0, result.stderr)
    (line,) = result.stderr.strip().splitlines()
    self.assertStartsWith(line, f"warning: {path} ends in a line cut short "
                          "(17 bytes without a newline")
    # Complete files: no warning.
    os.truncate(path, os.path.getsize(path) - 17)
    self.assertEqual(records.torn_tail(path), b"")
    result = run_script("report.py", f"--workdir={workdir}")
    self.assertEqual((result.returncode, result.stderr), (0, ""))


if __name__ == "__main__":
  absltest.main()
