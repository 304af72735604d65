"""The quickstart notebook runs end to end on CPU, in its smoke mode.

``notebooks/depth_width_colab.ipynb`` is executed with nbclient in a kernel of
this interpreter (a kernel spec written to a temporary JUPYTER_PATH, so nothing
has to be registered in the venv or the user's Jupyter), with ``SMOKE = True``
injected after its ``parameters`` cell, papermill-style, and its workdir in a
temporary directory (``LMINIMA_NOTEBOOK_WORKDIR``). The notebook's own checks:
nbformat 4.5 with a cell id on every cell, a ``parameters`` cell, and every
package it imports declared in setup.cfg.
"""

import ast
import configparser
import importlib.metadata
import json
import os
import re
import sys
import tempfile
from unittest import mock

from absl.testing import absltest
import nbclient
import nbformat

from _helpers import REPO

NOTEBOOK = os.path.join(REPO, "notebooks", "depth_width_colab.ipynb")
KERNEL = "lminima-notebook-test"


def _read():
  return nbformat.read(NOTEBOOK, as_version=4)


def _normalize(name):
  return re.sub(r"[-_.]+", "-", name).lower()


def _declared_distributions():
  """install_requires and the test extra of setup.cfg, normalized names."""
  parser = configparser.ConfigParser()
  parser.read(os.path.join(REPO, "setup.cfg"))
  lines = (parser["options"]["install_requires"].splitlines()
           + parser["options.extras_require"]["test"].splitlines())
  return {_normalize(re.split(r"[<>=!~\[; ]", line.strip())[0])
          for line in lines if line.strip()}


def _imported_modules(nb):
  names = set()
  for cell in nb.cells:
    if cell.cell_type != "code":
      continue
    for node in ast.walk(ast.parse(cell.source)):
      if isinstance(node, ast.Import):
        names.update(alias.name.split(".")[0] for alias in node.names)
      elif isinstance(node, ast.ImportFrom) and node.level == 0:
        names.add(node.module.split(".")[0])
  return names


def _write_kernel_spec(directory):
  """A kernel spec running this interpreter, under ``directory``/kernels."""
  spec_dir = os.path.join(directory, "kernels", KERNEL)
  os.makedirs(spec_dir)
  with open(os.path.join(spec_dir, "kernel.json"), "w") as f:
    json.dump({"argv": [sys.executable, "-m", "ipykernel_launcher", "-f",
                        "{connection_file}"],
               "display_name": "Python (lminima test)",
               "language": "python"}, f)


class NotebookFormatTest(absltest.TestCase):

  def test_valid_with_cell_ids_and_a_parameters_cell(self):
    nb = _read()
    nbformat.validate(nb)
    self.assertEqual((nb.nbformat, nb.nbformat_minor), (4, 5))
    ids = [cell.get("id") for cell in nb.cells]
    self.assertTrue(all(ids), ids)
    self.assertLen(set(ids), len(ids))
    tagged = [cell for cell in nb.cells
              if "parameters" in cell.metadata.get("tags", [])]
    self.assertLen(tagged, 1)
    self.assertIn("SMOKE = True", tagged[0].source)

  def test_runs_outside_colab_without_magics(self):
    for cell in _read().cells:
      if cell.cell_type == "code":
        self.assertNotRegex(cell.source, r"(?m)^\s*[%!]", cell.id)

  def test_every_imported_package_is_declared(self):
    declared = _declared_distributions()
    providers = importlib.metadata.packages_distributions()
    for module in sorted(_imported_modules(_read())):
      if module in sys.stdlib_module_names or module == "lminima":
        continue
      self.assertIn(module, providers, f"{module} is not installed")
      self.assertTrue(
          {_normalize(d) for d in providers[module]} & declared,
          f"the notebook imports {module} ({providers[module]}), which "
          "setup.cfg does not declare")


class NotebookRunTest(absltest.TestCase):

  def test_smoke_run_end_to_end(self):
    nb = _read()
    index = next(i for i, cell in enumerate(nb.cells)
                 if "parameters" in cell.metadata.get("tags", []))
    injected = nbformat.v4.new_code_cell("SMOKE = True",
                                         id="injected-parameters")
    injected.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(index + 1, injected)
    with tempfile.TemporaryDirectory() as tmp:
      jupyter_path = os.path.join(tmp, "jupyter")
      _write_kernel_spec(jupyter_path)
      workdir = os.path.join(tmp, "workdir")
      env = {"JUPYTER_PATH": os.pathsep.join(
                 [jupyter_path] + [p for p in os.environ.get(
                     "JUPYTER_PATH", "").split(os.pathsep) if p]),
             "LMINIMA_NOTEBOOK_WORKDIR": workdir,
             "MPLBACKEND": "Agg"}
      with mock.patch.dict(os.environ, env):
        client = nbclient.NotebookClient(
            nb, timeout=600, kernel_name=KERNEL,
            resources={"metadata": {"path": tmp}})
        client.execute()  # raises CellExecutionError if a cell fails
      self.assertTrue(os.path.exists(os.path.join(workdir, "summary.csv")))
      self.assertTrue(os.path.exists(os.path.join(workdir, "report.md")))

    outputs = {cell.id: cell.get("outputs", []) for cell in nb.cells
               if cell.cell_type == "code"}
    for cell_id, cell_outputs in outputs.items():
      for output in cell_outputs:
        self.assertNotEqual(output.output_type, "error", cell_id)

    def text(cell_id):
      parts = []
      for output in outputs[cell_id]:
        if output.output_type == "stream":
          parts.append(output.text)
        elif output.output_type in ("display_data", "execute_result"):
          parts.extend(str(v) for k, v in output.data.items()
                       if k.startswith("text/"))
      return "".join(parts)

    self.assertIn("JAX devices:", text("setup"))
    self.assertIn(f"recorded in {workdir}", text("study"))
    shown = text("report")
    self.assertIn("| claim | test |", shown)
    self.assertIn("## Members by outcome", shown)
    self.assertRegex(shown, r"\n\| 1 \| 2 \|")  # depth 1, width 2
    self.assertRegex(shown, r"\n\| 1 \| 4 \|")
    images = [output for output in outputs["figures"]
              if "image/png" in output.get("data", {})]
    self.assertLen(images, 5)


if __name__ == "__main__":
  absltest.main()
