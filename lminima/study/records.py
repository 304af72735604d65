"""The workdir format: file names, the row schema, reading and appending rows.

A sweep's workdir holds

* ``results.jsonl``: one JSON object per member, appended and flushed as the
  member finishes (the row schema is ``ROW_FIELDS``; a field a member does not
  have, e.g. the certificate of a diverged member, is absent); a sharded run
  (``--shard=i/N``) writes ``results.shard-i-of-N.jsonl`` instead, one file
  per shard, and readers merge every results file (``read_workdir_rows``);
* ``lock`` (and ``lock.shard-i-of-N``): the lock files that keep two processes
  from writing one results file (``lock_workdir``);
* ``params/depth{d}_width{w}_seed{s}.npz``: the refined float64 parameters,
  keys ``layer_l/kernel`` and ``layer_l/bias`` (``models.params_to_arrays``);
* ``config.json``, ``summary.csv`` and figures;
* ``cost_model.json``: the training planner's cost model, written by the
  first run, so that reruns and shards split populations into the same
  programs (``lminima.study.sweep``).

JSON has no NaN or inf: non-finite floats are stored as null.

A write cut short (a killed process, a full disk) leaves a last line without
its newline. ``repair_results_file`` truncates such a torn tail before a run
appends to the file (with a warning), so the next row never lands on it;
``read_rows`` skips a torn tail and salvages the complete row of a line that an
older version appended onto one.

Example:
  >>> import os, tempfile
  >>> path = os.path.join(tempfile.mkdtemp(), RESULTS_FILE)
  >>> append_row(path, {"depth": 1, "loss": float("nan")})
  >>> read_rows(path)
  [{'depth': 1, 'loss': None}]
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import glob
import json
import logging
import math
import os
import re
from typing import Any, Callable, Iterator

import jax
import numpy as np

from lminima.train import calibration
from lminima.train import planner


RESULTS_FILE = "results.jsonl"
RESULTS_GLOB = "results*.jsonl"
LOCK_FILE = "lock"
SUMMARY_FILE = "summary.csv"
FIGURE_FILE = "loss_vs_width.png"
PARAMS_DIR = "params"
CONFIG_FILE = "config.json"
COST_MODEL_FILE = "cost_model.json"

ROW_FIELDS = {
    # identity and provenance
    "depth", "width", "seed", "dataset", "activation", "bias", "skip",
    "normalization", "optimizer", "n_params", "config_fingerprint",
    "versions", "wall_s",
    # end of training (float32)
    "loss", "grad_norm", "diverged", "steps", "train_wall_s",
    # the member's outcome, decided once
    # (lminima.critical.outcomes.decide_member), and its final point (float64)
    "outcome", "outcome_reason", "loss_reference", "loss_refined", "grad_norm_refined",
    "refine_iters", "refine_stop_reason", "refine_method",
    "param_norm_start", "param_norm_refined", "params_file",
    # the continuation, where it ran (lminima.critical.outcomes)
    "fate_iters", "fate_loss", "fate_param_norm", "fate_grad_norm",
    "fate_asymptotic_loss", "fate_max_abs_preactivation",
    # the certificate that decided a local_min / saddle / non_differentiable
    # (lminima.critical.certify.Certificate)
    "verdict", "cert_method", "lambda_min", "lambda_max", "residual_min",
    "residual_max", "index", "n_flat", "grad_norm_rel", "grad_tol",
    "eig_tol", "min_abs_preactivation", "proof", "proof_radius",
    "decrease_bound", "probe_method", "probe_iters", "probe_decrease",
    "probe_displacement",
    # the last kink decision of the continuation (lminima.critical.kinks)
    "kink_verdict", "kink_n", "kink_sides", "kink_all_sides",
    "kink_residual_max", "kink_residual_tol", "kink_decrease",
    # every tolerance used (lminima.core.tolerances.Tolerances)
    "tolerances",
    # theory at the refined point (lminima.theory.quantities.theory_record)
    "rank_D", "rank_D_frac", "rank_last_hidden", "identity_gap_full",
    "identity_gap_last", "euler_residual_max", "yhat_norm", "linear_opt", "rf_opt",
    "inclusion_residual_linear", "below_linear", "rank_tol",
    "rank_D_loose", "rank_tol_loose", "full_D_skipped",
    # what went wrong: "ExceptionType: message" of a member whose refinement,
    # certificate or theory raised (the fields computed before it are kept)
    "error",
}
"""Every field a results.jsonl row may hold."""


class WorkdirError(ValueError):
  """The workdir is missing something, or holds another configuration."""


def shard_suffix(index: int, count: int) -> str:
  """``""`` for an unsharded run (count 1), else ``".shard-i-of-N"``."""
  return "" if count == 1 else f".shard-{index}-of-{count}"


def results_path(workdir: str, shard: tuple[int, int] = (0, 1)) -> str:
  """The results file that shard ``(i, N)`` appends to (``results.jsonl``
  unsharded, ``results.shard-i-of-N.jsonl`` for N > 1)."""
  return os.path.join(workdir, RESULTS_FILE.replace(
      ".jsonl", shard_suffix(*shard) + ".jsonl"))


_RESULTS_NAME = re.compile(r"^results(\.shard-\d+-of-\d+)?\.jsonl$")


def results_files(workdir: str) -> list[str]:
  """Every results file of ``workdir``: results.jsonl, then the shards'."""
  paths = [p for p in glob.glob(os.path.join(glob.escape(workdir),
                                             RESULTS_GLOB))
           if _RESULTS_NAME.match(os.path.basename(p))]
  return sorted(paths, key=lambda p: (os.path.basename(p) != RESULTS_FILE,
                                      _natural_key(p)))


def _natural_key(path: str) -> list[Any]:
  return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path)]


def member_key(row: dict[str, Any]) -> tuple[int, int, int]:
  return (row["depth"], row["width"], row["seed"])


def read_workdir_rows(workdir: str) -> list[dict[str, Any]]:
  """The rows of every results file of ``workdir``, merged, in grid order.

  Sorted by (depth, width, seed); the sort is stable, so a member recorded
  twice (only a hand-edited workdir has that) keeps its file order.
  """
  rows = [row for path in results_files(workdir) for row in read_rows(path)]
  return sorted(rows, key=member_key)


@contextlib.contextmanager
def lock_workdir(workdir: str, shard: tuple[int, int] = (0, 1)
                 ) -> Iterator[None]:
  """Holds ``workdir``'s lock for a run; refuses a second process at once.

  An unsharded run holds ``lock`` exclusively. Shard i of N holds ``lock``
  shared (the other shards may run beside it, an unsharded run may not) and
  ``lock.shard-i-of-N`` exclusively (the same shard may not run twice). Locks
  are ``fcntl.flock`` locks on open files: the kernel drops them when the
  process ends, however it ends, so a killed run leaves no stale lock.

  Raises:
    WorkdirError: when another process holds a conflicting lock, or the lock
      file cannot be created (one line, naming the workdir).
  """
  index, count = shard
  wanted = [(os.path.join(workdir, LOCK_FILE),
             fcntl.LOCK_EX if count == 1 else fcntl.LOCK_SH, "this workdir")]
  if count > 1:
    wanted.append((os.path.join(workdir, LOCK_FILE + shard_suffix(*shard)),
                   fcntl.LOCK_EX, f"shard {index}/{count}"))
  with contextlib.ExitStack() as stack:
    for path, mode, what in wanted:
      try:
        f = stack.enter_context(open(path, "a+"))
      except OSError as e:
        raise WorkdirError(f"workdir {workdir} cannot be written "
                           f"({type(e).__name__}: {e.strerror or e})") from None
      try:
        fcntl.flock(f.fileno(), mode | fcntl.LOCK_NB)
      except BlockingIOError:
        raise WorkdirError(
            f"another process is running {what} in {workdir} (it holds "
            f"{path}); wait for it to finish or use another --workdir"
            ) from None
    yield


def check_writable(workdir: str) -> None:
  """Raises ``WorkdirError`` (one line) unless a file can be written in
  ``workdir`` and in its ``params/``."""
  for folder in (workdir, os.path.join(workdir, PARAMS_DIR)):
    probe = os.path.join(folder, f".write-test-{os.getpid()}")
    try:
      with open(probe, "w") as f:
        f.write("x")
      os.remove(probe)
    except OSError as e:
      raise WorkdirError(f"workdir {workdir} cannot be written "
                         f"({type(e).__name__}: {e.strerror or e})") from None


def with_workdir(config: Any, workdir: str | None) -> Any:
  """``config`` with ``config.workdir = workdir``: a copy, so the caller's
  config is left as it was; ``config`` itself when ``workdir`` is None or
  already its workdir."""
  if workdir is None or workdir == config.workdir:
    return config
  config = config.copy_and_resolve_references()
  config.workdir = workdir
  return config


def read_json(path: str) -> Any:
  """The JSON value in ``path``, or None when it is missing or unreadable."""
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def write_json_once(path: str, value: Any) -> bool:
  """Writes ``value`` to ``path`` unless it exists; atomic across processes
  (a complete file appears at once, and the first writer wins). Returns
  whether this call wrote it."""
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(value, f, indent=1)
    f.flush()
    os.fsync(f.fileno())
  try:
    os.link(tmp, path)
    return True
  except FileExistsError:
    return False
  finally:
    os.remove(tmp)


def repair_results_file(path: str) -> int:
  """Truncates a torn last line (no newline) of ``path``; returns bytes cut.

  Logs a warning naming the file and the cut bytes. Call it with the
  workdir's lock held, before appending.
  """
  if not os.path.exists(path):
    return 0
  with open(path, "rb+") as f:
    size = f.seek(0, os.SEEK_END)
    if size == 0:
      return 0
    # Find the last newline, reading backwards in blocks.
    end = size
    keep = 0
    while end > 0:
      start = max(0, end - 65536)
      f.seek(start)
      block = f.read(end - start)
      newline = block.rfind(b"\n")
      if newline >= 0:
        keep = start + newline + 1
        break
      end = start
    cut = size - keep
    if cut:
      f.seek(keep)
      torn = f.read(80)
      f.truncate(keep)
      f.flush()
      os.fsync(f.fileno())
      logging.warning("%s: removed a torn last line of %d bytes (a write cut "
                      "short, e.g. by a killed run): %r...; its member will "
                      "be run again", path, cut, torn[:60])
  return cut


def torn_tail(path: str) -> bytes:
  """The torn last line of ``path``: the bytes after its last newline.

  Empty when the file ends with a newline, is empty or does not exist. A
  complete file ends with a newline (``append_row``); a tail is a write cut
  short, which ``read_rows`` skips (unless it is a whole row) and
  ``repair_results_file`` removes before the next append. Reads the file
  backwards from its end, so a long file costs no more than its tail.

  Example:
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), RESULTS_FILE)
    >>> with open(path, "w") as f:
    ...   _ = f.write('{"depth": 1}\\n{"depth": 2, "wi')
    >>> torn_tail(path)
    b'{"depth": 2, "wi'
  """
  if not os.path.exists(path):
    return b""
  with open(path, "rb") as f:
    size = f.seek(0, os.SEEK_END)
    end = size
    while end > 0:
      start = max(0, end - 65536)
      f.seek(start)
      newline = f.read(end - start).rfind(b"\n")
      if newline >= 0:
        start += newline + 1
        break
      end = start
    else:
      start = 0
    f.seek(start)
    return f.read(size - start)


def params_path(workdir: str, depth: int, width: int, seed: int) -> str:
  """Where member (depth, width, seed) keeps its refined parameters."""
  return os.path.join(workdir, PARAMS_DIR,
                      f"depth{depth}_width{width}_seed{seed}.npz")


def json_float(value: Any) -> float | None:
  """``float(value)``, with NaN/inf as None (JSON has no spelling for them)."""
  value = float(value)
  return value if math.isfinite(value) else None


def _encode(value: Any) -> Any:
  if isinstance(value, (np.generic, jax.Array)):
    value = value.item() if np.ndim(value) == 0 else np.asarray(value).tolist()
  if isinstance(value, float):
    return json_float(value)
  if isinstance(value, dict):
    return {k: _encode(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_encode(v) for v in value]
  return value


def encode_row(row: dict[str, Any],
               schema: frozenset[str] | set[str] = ROW_FIELDS) -> str:
  """One JSON line for ``row`` (numpy/JAX scalars as numbers, NaN as null).

  Raises:
    ValueError: on a field outside ``schema`` (the sweep's ``ROW_FIELDS`` by
      default; other scripts pass their own).
  """
  unknown = set(row) - set(schema)
  if unknown:
    raise ValueError(f"unknown row fields {sorted(unknown)}; add them to the "
                     "row schema")
  return json.dumps(_encode(row), allow_nan=False)


def append_row(path: str, row: dict[str, Any],
               schema: frozenset[str] | set[str] = ROW_FIELDS) -> None:
  """Appends ``row`` to the JSONL file ``path`` and flushes it to disk."""
  line = encode_row(row, schema) + "\n"
  with open(path, "a") as f:
    f.write(line)
    f.flush()
    os.fsync(f.fileno())


def read_rows(path: str) -> list[dict[str, Any]]:
  """Rows of a results.jsonl file.

  A torn last line (a write cut short) is skipped. A line that does not
  parse elsewhere is one row appended onto a torn line (by versions before
  ``repair_results_file``): the complete row at its end is salvaged, the torn
  prefix dropped, with a warning; a line with no complete row is skipped with
  a warning.
  """
  if not os.path.exists(path):
    return []
  rows = []
  with open(path) as f:
    lines = f.read().split("\n")
  last = len(lines) - 1  # text after the last newline: "" unless torn
  for number, line in enumerate(lines):
    line = line.strip()
    if not line:
      continue
    try:
      rows.append(json.loads(line))
      continue
    except json.JSONDecodeError:
      pass
    if number == last:
      continue  # A write cut short: repair_results_file removes it.
    salvaged = _salvage(line)
    if salvaged is None:
      logging.warning("%s:%d is not a JSON row; skipped", path, number + 1)
    else:
      logging.warning("%s:%d is a row appended onto a torn line; kept the "
                      "row, dropped %d torn bytes", path, number + 1,
                      len(line) - len(json.dumps(salvaged)))
      rows.append(salvaged)
  return rows


def _salvage(line: str) -> dict[str, Any] | None:
  """The complete JSON object at the end of ``line``, if any."""
  start = line.find("{", 1)
  while start > 0:
    try:
      value = json.loads(line[start:])
      if isinstance(value, dict):
        return value
    except json.JSONDecodeError:
      pass
    start = line.find("{", start + 1)
  return None


def workdir_cost_model(workdir: str, log: Callable[[str], None]
                       ) -> planner.CostModel:
  """The workdir's stored cost model for this backend, else this process's
  (stored when the workdir has none), so that every run plans alike."""
  backend = jax.default_backend()
  path = os.path.join(workdir, COST_MODEL_FILE)
  stored = read_json(path)
  if stored is not None and stored.get("backend") == backend:
    return _stored_cost_model(stored)
  model = calibration.backend_cost_model()
  if stored is None:
    write_json_once(path, {"backend": backend,
                                   **dataclasses.asdict(model)})
    again = read_json(path)
    if again is not None and again.get("backend") == backend:
      return _stored_cost_model(again)
  else:
    log(f"warning: {path} is for backend {stored.get('backend')!r}, this run "
        f"uses {backend!r}: members trained here may round differently")
  return model


def _stored_cost_model(stored: dict[str, Any]) -> planner.CostModel:
  """A workdir's cost model; one written before ``unit_s`` existed planned
  without it (0), and keeps doing so."""
  return planner.CostModel(**{
      field.name: float(stored[field.name] if field.default is
                        dataclasses.MISSING else stored.get(field.name,
                                                            field.default))
      for field in dataclasses.fields(planner.CostModel)})
