"""Wall time of the commands whose durations README.md and the scripts state.

Runs each command in a fresh process and a fresh work directory, with a
fresh user cache (``LMINIMA_CACHE_DIR``: compilation and the training
planner's calibration included) and then again with the cache that run
wrote, and prints a markdown table with the machine, the date and the
library versions.

Usage:
  python benchmarks/bench_commands.py [--only=main] > table.md
"""

import datetime
import os
import platform
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags

_ONLY = flags.DEFINE_list("only", [], "names of the commands to time "
                          "(default: all)")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

COMMANDS = {
    "main": ["scripts/depth_width.py", "--noprogress"],
    "synthetic smoke": ["scripts/depth_width.py",
                        "--config=lminima/configs/synthetic.py:smoke",
                        "--config.progress=false"],
    "digits example": ["scripts/depth_width.py", "--dataset=digits",
                       "--n=300", "--depths=1,2", "--widths=4,8",
                       "--num_seeds=3", "--noprogress"],
    "eliminate smoke": ["scripts/eliminate.py", "--smoke"],
    "sharpness smoke": ["scripts/sharpness.py", "--smoke"],
}


def _time(args: list[str], cache: str) -> float:
  workdir = tempfile.mkdtemp()
  env = dict(os.environ, LMINIMA_CACHE_DIR=cache)
  start = time.perf_counter()
  subprocess.run([sys.executable, *args, f"--workdir={workdir}"], cwd=REPO,
                 env=env, check=True, capture_output=True)
  return time.perf_counter() - start


def _cpu() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      names = [line.split(":", 1)[1].strip() for line in f
               if line.startswith("model name")]
    return f"{names[0]}, {len(names)} cores" if names else platform.machine()
  except OSError:
    return platform.machine()


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top
  names = _ONLY.value or list(COMMANDS)
  print(f"{datetime.date.today()}, {_cpu()}, jax {jax.__version__}, "
        f"python {platform.python_version()}\n")
  print("| command | fresh cache (s) | warm cache (s) |\n|---|---|---|")
  for name in names:
    cache = tempfile.mkdtemp()
    cold = _time(COMMANDS[name], cache)
    warm = _time(COMMANDS[name], cache)
    print(f"| `python {' '.join(COMMANDS[name])}` ({name}) | {cold:.0f} | "
          f"{warm:.0f} |", flush=True)


if __name__ == "__main__":
  app.run(main)
