"""The command line of an experiment script: flags to config, one-line errors.

The three experiment scripts (``scripts/depth_width.py``,
``scripts/eliminate.py``, ``scripts/sharpness.py``) share one convention: a
``--config=FILE[:ARG]`` flag (``lminima/configs/``) whose fields are
overridable as ``--config.FIELD=value``, a few short flags applied on top
(``config_from_flags``), and ``main`` here, which validates the config, runs
the experiment's ``run(config, workdir)`` and prints where its files went.
Every expected failure (a bad flag or config value, a foreign workdir,
unreadable data) ends in one ``error: ...`` line on stderr and a nonzero
exit, never a traceback (``parse_flags`` for absl's own parse errors).

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
  ...      validate_config=lambda config: None,
  ...      run=lambda config, workdir: None,
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
from absl import flags
from ml_collections import config_flags

from lminima.study import records
from lminima.study.config import UnknownFieldError

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


def define_experiment_flags(name: str, smoke: str
                            ) -> tuple[flags.FlagHolder, flags.FlagHolder]:
  """``--config``, a config file (``FILE[:ARG]``, None until given: the
  script then loads ``lminima/configs/<name>.py``) whose fields are
  overridable as ``--config.FIELD=value``, and ``--smoke``, the file's smoke
  variant (described by ``smoke``) on top of it."""
  return (config_flags.DEFINE_config_file(
      "config", None, "The experiment's config file, FILE[:ARG] (default: "
      f"lminima/configs/{name}.py); override its fields with "
      "--config.FIELD=value.", lock_config=True),
          flags.DEFINE_bool("smoke", False, "The smoke variant's fields "
                            f"(lminima/configs/{name}.py:smoke: {smoke}) on "
                            "top of --config."))


def define_field_flags(defaults: Any, help_texts: Mapping[str, str]
                       ) -> dict[str, flags.FlagHolder]:
  """A short flag ``--NAME`` for each config field ``NAME`` of
  ``help_texts``, of the type of its default in ``defaults`` (bool, int,
  float or str), None until given (``set_given`` applies the given ones).
  Its help names the default and the long form ``--config.NAME``."""
  definers = {bool: flags.DEFINE_bool, int: flags.DEFINE_integer,
              float: flags.DEFINE_float, str: flags.DEFINE_string}
  return {name: definers[type(defaults[name])](
      name, None, f"{text} (default {defaults[name]!r}; "
      f"--config.{name} alike).") for name, text in help_texts.items()}


def set_given(config: Any, flag_holders: Mapping[str, Any]) -> None:
  """``config.<name> = flag.value`` for each flag (name -> absl FlagHolder,
  default None) that was given."""
  for name, flag in flag_holders.items():
    if flag.value is not None:
      setattr(config, name, flag.value)


# What building and validating a config raises for a bad flag or value, a
# misspelt field or a cluster that cannot be joined.
_CONFIG_ERRORS = (ValueError, TypeError, AttributeError, KeyError, OSError,
                  RuntimeError)


def main(argv: list[str], *, config_from_flags: Callable[[], Any],
         validate_config: Callable[[Any], None],
         run: Callable[[Any, str], Any],
         outputs: Callable[[Any], Mapping[str, str]],
         errors: tuple[type[Exception], ...] = (records.WorkdirError,)
         ) -> None:
  """An experiment script's ``main`` (for ``absl.app.run``).

  Args:
    argv: the command line left after the flags (the program name only).
    config_from_flags: the config the flags ask for; a ValueError for a bad
      flag.
    validate_config: raises a ValueError for a bad config.
    run: the experiment's ``run(config, workdir)``.
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
  except _CONFIG_ERRORS as e:  # Bad flags: one line, no traceback.
    sys.exit(f"error: {one_line(e)}")
  try:
    run(config, config["workdir"])
  except errors as e:
    sys.exit(f"error: {one_line(e)}")
  print("\n".join(f"{label + ':':<8} {path}"
                  for label, path in outputs(config).items()))


def one_line(error: BaseException) -> str:
  """The message of ``error`` on one line, without a nested traceback (the
  form absl and ml_collections give a bad ``--config`` file or field)."""
  while error.args and isinstance(error.args[0], BaseException):
    error = error.args[0]
  text = (error.args[0] if isinstance(error, KeyError) and error.args
          and isinstance(error.args[0], str) else str(error))
  lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
  if not lines:
    return type(error).__name__
  if "Traceback (most recent call last)" in text:
    head = text.split("Traceback (most recent call last)")[0]
    return " ".join(f"{head.strip()} {lines[-1]}".split())
  if "Failed loading config file" in text:
    return f"--config: cannot load the config file: {lines[-1]}"
  if isinstance(error, UnknownFieldError):
    return f"--config: {' '.join(lines)}"  # names the field already
  if isinstance(error, KeyError):
    return f"--config: unknown config field {' '.join(lines)}"
  return " ".join(" ".join(lines).split())


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with any parse error as one ``error:`` line (the
  config file's overrides are applied here: a misspelt field ends here)."""
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # pylint: disable=broad-except
    sys.exit(f"error: {one_line(e)}")


def run_script(main: Callable[[list[str]], Any], *, interrupted: str) -> None:
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
  """
  logging.getLogger(BACKEND_LOGGER).setLevel(logging.WARNING)
  try:
    app.run(main, flags_parser=parse_flags)
  except KeyboardInterrupt:
    try:
      sys.stdout.flush()
    finally:
      sys.stderr.write(f"interrupted: {interrupted}\n")
      sys.stderr.flush()
      os._exit(INTERRUPTED_STATUS)
