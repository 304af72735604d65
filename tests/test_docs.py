"""Every docstring example in the package runs and prints what it says."""

import doctest
import importlib
import os
import pkgutil
import re

from absl.testing import absltest
from absl.testing import parameterized

import lminima

MODULES = sorted(m.name for m in pkgutil.walk_packages(lminima.__path__,
                                                       "lminima."))


class DocstringExamplesTest(parameterized.TestCase):

  def test_every_module_is_listed(self):
    self.assertContainsSubset(
        {"lminima.core.problem", "lminima.critical.refinement",
         "lminima.critical.certify", "lminima.theory.identities",
         "lminima.core.derivative", "lminima.theory.classical",
         "lminima.theory.kernel_regression", "lminima.core.hessian",
         "lminima.linalg.lanczos", "lminima.linalg.slq", "lminima.train.driver",
         "lminima.study.records", "lminima.study.sweep"}, MODULES)

  def test_docstrings_point_to_the_projects_own_docs(self):
    theory_md = os.path.join(os.path.dirname(os.path.dirname(__file__)),
                             "docs", "theory.md")
    with open(theory_md) as f:
      anchors = {_anchor(line) for line in f if line.startswith("#")}
    for name in MODULES:
      with open(importlib.import_module(name).__file__) as f:
        source = f.read()
      self.assertNotIn("DESIGN", source, name)
      for anchor in re.findall(r"docs/theory\.md#([a-z0-9-]+)", source):
        self.assertIn(anchor, anchors, f"{name}: docs/theory.md#{anchor}")

  @parameterized.parameters(*MODULES)
  def test_examples(self, name):
    result = doctest.testmod(importlib.import_module(name))
    self.assertEqual(result.failed, 0, f"{result.failed} examples failed")


class ReadmeTest(absltest.TestCase):

  def test_library_example_runs_and_certifies(self):
    readme = os.path.join(os.path.dirname(os.path.dirname(__file__)),
                          "README.md")
    with open(readme) as f:
      example = re.findall(r"```python\n(.*?)```", f.read(), re.S)[0]
    namespace = {}
    exec(example, namespace)  # pylint: disable=exec-used
    self.assertEqual(namespace["result"].stop_reason, "grad_tol")
    import lminima  # pylint: disable=g-import-not-at-top
    self.assertEqual(lminima.certificate(namespace["refined"]).verdict,
                     "local_min")


def _anchor(heading: str) -> str:
  """GitHub's anchor of a Markdown heading."""
  text = heading.lstrip("#").strip().lower()
  return re.sub(r"[^a-z0-9 -]", "", text).replace(" ", "-")


if __name__ == "__main__":
  absltest.main()
