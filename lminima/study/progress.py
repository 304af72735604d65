"""The sweep's progress bar: one bar over the whole grid, with the time left."""

from __future__ import annotations

from typing import Callable, Sequence

import ml_collections
import tqdm

from lminima import data as data_lib
from lminima.study import eta as eta_lib
from lminima.train import population


class Progress:
  """One bar over the whole grid: each member counts 1 for training (split
  over the steps of its depth's population) and 1 for its certificate; the
  time left is ``lminima.study.eta``'s estimate (absent without one)."""

  def __init__(self, total_members: int, enabled: bool,
               log: Callable[[str], None], estimate: eta_lib.Eta | None):
    self.bar = tqdm.tqdm(
        total=2 * total_members, disable=not enabled, unit="",
        bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}{postfix}]")
    self._log = log
    self.base = 0.0
    self.estimate = estimate

  def say(self, message: str) -> None:
    if self.bar.disable:
      self._log(message)
    else:
      with tqdm.tqdm.external_write_mode():
        self._log(message)

  def set(self, value: float, desc: str | None = None) -> None:
    if self.bar.disable:
      return
    if desc is not None:
      self.bar.set_description_str(desc, refresh=False)
    if self.estimate is not None:
      self.bar.set_postfix_str("< " + tqdm.tqdm.format_interval(
          self.estimate.remaining_s()) + " left", refresh=False)
    self.bar.n = min(value, self.bar.total)
    self.bar.refresh()

  def extend(self, members: Sequence[population.Member],
             config: ml_collections.ConfigDict,
             data: data_lib.Dataset) -> None:
    """Adds the members of a coverage round to the bar, and a new estimate
    of their time (training measured per member so far, analysis by the
    member model fitted so far)."""
    self.bar.total += 2 * len(members)
    if self.estimate is not None:
      self.estimate = self.estimate.for_more(
          eta_lib.iteration_seconds_by_cell(config, data, members),
          [(m.depth, m.width) for m in members])

  def close(self) -> None:
    self.bar.close()
