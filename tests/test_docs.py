"""Every docstring example in the package runs and prints what it says."""

import doctest
import importlib
import pkgutil

from absl.testing import absltest
from absl.testing import parameterized

import lminima

MODULES = sorted(m.name for m in pkgutil.iter_modules(lminima.__path__,
                                                       "lminima."))


class DocstringExamplesTest(parameterized.TestCase):

  def test_every_module_is_listed(self):
    self.assertContainsSubset(
        {"lminima.train", "lminima.hessian", "lminima.certify",
         "lminima.theory", "lminima.classical", "lminima.sweep"}, MODULES)

  @parameterized.parameters(*MODULES)
  def test_examples(self, name):
    result = doctest.testmod(importlib.import_module(name))
    self.assertEqual(result.failed, 0, f"{result.failed} examples failed")


if __name__ == "__main__":
  absltest.main()
