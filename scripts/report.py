"""The report of one or more finished (or partial) depth x width studies.

For every --workdir, reads all its results files (shards merged) and writes
report.md (the claims table (A)-(E), members by outcome, certified minima per
cell), claims.json, summary.csv and the figures (i)-(v) beside them
(lminima.study.report.write_report). ``scripts/depth_width.py`` calls the same
function at the end of a sweep; run this one to redo the report, or on a
workdir that several shard processes filled. With --combined, the claims
tables of all workdirs go into one markdown file, one section per study.

  python scripts/report.py --workdir=runs/synthetic
  python scripts/report.py --workdir=runs/synthetic,runs/synthetic_skip \\
      --combined=runs/claims.md
"""

import os
import sys

from absl import flags

from lminima.study import claims
from lminima.study import cli
from lminima.study import records
from lminima.study import report

_WORKDIRS = flags.DEFINE_list("workdir", None, "Work directories of studies "
                              "(comma-separated).", required=True)
_TITLE = flags.DEFINE_string("title", "", "Heading of report.md (default: the "
                             "data set's label); with several workdirs, "
                             "each keeps its default.")
_COMBINED = flags.DEFINE_string("combined", "", "Also write every workdir's "
                                "claims table into this markdown file.")


def warn_torn_lines(workdir: str) -> None:
  """One ``warning:`` line on stderr per results file of ``workdir`` whose
  last line was cut short (no newline): the report reads complete rows
  only, and the next run on the workdir removes the line."""
  for path in records.results_files(workdir):
    tail = records.torn_tail(path)
    if tail:
      print(f"warning: {path} ends in a line cut short ({len(tail)} bytes "
            "without a newline, e.g. by a killed run); the report reads "
            "complete rows only, and the next run on this workdir removes "
            "the line and reruns its member", file=sys.stderr)


def main(argv):
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}")
  sections = []
  for workdir in _WORKDIRS.value:
    warn_torn_lines(workdir)
    try:
      written = report.write_report(
          workdir, title=_TITLE.value if len(_WORKDIRS.value) == 1 else "")
    except (records.WorkdirError, OSError) as error:
      sys.exit(f"error: {error}")
    print(f"{workdir}: wrote {', '.join(os.path.basename(p) for p in written)}")
    # The table just written, not recomputed.
    table = records.read_json(os.path.join(workdir, report.CLAIMS_FILE))
    sections += [f"## {workdir}", "", claims.claims_markdown(table), ""]
  if _COMBINED.value:
    try:
      with open(_COMBINED.value, "w") as f:
        f.write("\n".join(["# Claims per study", "", *sections]))
    except OSError as error:
      sys.exit(f"error: {error}")
    print(f"claims of {len(_WORKDIRS.value)} studies: {_COMBINED.value}")


if __name__ == "__main__":
  cli.run_script(
      main, interrupted="rerun the same command for the whole report")
