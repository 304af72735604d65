"""Writing a file so that no reader ever sees half of it."""

from __future__ import annotations

import os
from typing import Callable


def write_atomic(path: str, write: Callable[[str], None]) -> None:
  """Writes ``path`` through ``write(tmp)`` and a rename: a reader (another
  shard, a report) never sees half a file. The extension is kept, so writers
  that infer the format from it (matplotlib) work."""
  root, ext = os.path.splitext(path)
  tmp = f"{root}.tmp-{os.getpid()}{ext}"
  try:
    write(tmp)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
