"""The command line of an experiment script: flags to config, one-line errors.

``scripts/eliminate.py`` and ``scripts/sharpness.py`` are thin: their flags
and ``config_from_flags``, then ``main`` here, which validates the config,
runs the experiment and prints where its files went. Every expected failure
(a bad flag or config value, a foreign workdir, unreadable data) ends in one
``error: ...`` line on stderr and a nonzero exit, never a traceback.

Every script in ``scripts/`` starts through ``run_script``: JAX's probing
of absent backends stays out of its output, and Ctrl-C ends it with one
``interrupted: ...`` line and exit status 130.

Example:
  >>> number_list("widths", ["2", "4"])
  (2, 4)
  >>> number_list("eps", ["1e-3", "x"], float)
  Traceback (most recent call last):
  ...
  ValueError: --eps must be a comma-separated list of numbers, got '1e-3,x'
  >>> main(["prog"], config_from_flags=lambda: {"workdir": "runs/x"},
  ...      validate_config=lambda config: None, run=lambda config: None,
  ...      outputs=lambda config: {"results": f"{config['workdir']}/r.jsonl",
  ...                              "report": f"{config['workdir']}/report.md"})
  results: runs/x/r.jsonl
  report:  runs/x/report.md
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, Callable, Iterable, Mapping

from absl import app

from lminima import records

# The logger of JAX's backend discovery: at INFO it reports every platform
# it probed and did not find ("Unable to initialize backend 'tpu': ...").
BACKEND_LOGGER = "jax._src.xla_bridge"

# The exit status of a run ended by Ctrl-C: 128 + SIGINT, as a shell reports
# a command killed by it.
INTERRUPTED_STATUS = 130


def number_list(flag: str, values: Iterable[str],
                kind: Callable[[str], Any] = int) -> tuple[Any, ...]:
  """The strings of the list flag ``--flag`` as a tuple of ``kind`` (int or
  float); a ValueError naming the flag when one does not parse."""
  values = list(values)
  try:
    return tuple(kind(v) for v in values)
  except ValueError:
    noun = "integers" if kind is int else "numbers"
    raise ValueError(f"--{flag} must be a comma-separated list of {noun}, "
                     f"got {','.join(values)!r}") from None


def set_given(config: Any, flag_holders: Mapping[str, Any]) -> None:
  """``config.<name> = flag.value`` for each flag (name -> absl FlagHolder,
  default None) that was given."""
  for name, flag in flag_holders.items():
    if flag.value is not None:
      setattr(config, name, flag.value)


def main(argv: list[str], *, config_from_flags: Callable[[], Any],
         validate_config: Callable[[Any], None], run: Callable[[Any], Any],
         outputs: Callable[[Any], Mapping[str, str]],
         errors: tuple[type[Exception], ...] = (records.WorkdirError,)
         ) -> None:
  """An experiment script's ``main`` (for ``absl.app.run``).

  Args:
    argv: the command line left after the flags (the program name only).
    config_from_flags: the config the flags ask for; a ValueError for a bad
      flag.
    validate_config: raises a ValueError for a bad config.
    run: runs the experiment on the config.
    outputs: label -> path of the files written, printed one a line when the
      run ends.
    errors: what ``run`` raises for an expected failure (a foreign workdir,
      unreadable data).
  """
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}")
  try:
    config = config_from_flags()
    validate_config(config)
  except ValueError as e:  # Bad flags: one line, no traceback.
    sys.exit(f"error: {e}")
  try:
    run(config)
  except errors as e:
    sys.exit(f"error: {e}")
  print("\n".join(f"{label + ':':<8} {path}"
                  for label, path in outputs(config).items()))


def run_script(main: Callable[[list[str]], Any], *, interrupted: str,
               flags_parser: Callable[[list[str]], Any] | None = None
               ) -> None:
  """``absl.app.run(main)`` for a script in ``scripts/``.

  Two things every script shares. JAX's backend discovery logs at INFO each
  platform it probed and did not find (``Unable to initialize backend
  'tpu'`` on a machine without one), and absl shows INFO lines by default;
  its logger (``BACKEND_LOGGER``) is set to WARNING, so the platforms
  stay as JAX finds them (no ``JAX_PLATFORMS``) and its warnings still show
  (``--logger_levels=jax._src.xla_bridge:INFO`` brings the lines back).
  And Ctrl-C (``KeyboardInterrupt``) ends the script with one line on
  stderr, ``interrupted: <interrupted>``, and exit status 130, without a
  traceback. The interrupt unwinds the script (its ``finally`` blocks and
  context managers run: a temporary file is removed, a pool of training
  threads finishes its current programs), then the process exits at once
  (``os._exit``): nothing is left whose result the run still wants, and the
  interpreter's shutdown would wait for every thread.

  Args:
    main: the script's ``main(argv)``.
    interrupted: what Ctrl-C leaves behind and how to go on, e.g. "rerun
      the same command to resume; finished members are kept".
    flags_parser: absl's ``flags_parser`` (None: absl's own).
  """
  logging.getLogger(BACKEND_LOGGER).setLevel(logging.WARNING)
  try:
    if flags_parser is None:
      app.run(main)
    else:
      app.run(main, flags_parser=flags_parser)
  except KeyboardInterrupt:
    try:
      sys.stdout.flush()
    finally:
      sys.stderr.write(f"interrupted: {interrupted}\n")
      sys.stderr.flush()
      os._exit(INTERRUPTED_STATUS)
