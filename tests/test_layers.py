"""The package's plan: subpackages in layers, no import cycles (docs/design.md,
"Package layout and layers")."""

import ast
import os
import pkgutil

from absl.testing import absltest

import lminima

LAYERS = (("dtypes",), ("core", "data"), ("linalg",), ("critical", "theory"),
          ("train",), ("study",), ("related",), ("configs",))
"""Bottom to top: a module imports its own subpackage or lower layers only;
subpackages of one layer do not import each other."""

RANK = {package: rank for rank, layer in enumerate(LAYERS)
        for package in layer}
ROOT = os.path.dirname(lminima.__file__)
MODULES = {m.name for m in pkgutil.walk_packages([ROOT], "lminima.")}


def package_of(module: str) -> str | None:
  """The subpackage (or leaf module) below ``lminima`` that holds ``module``;
  None for the package root."""
  parts = module.split(".")
  return parts[1] if len(parts) > 1 else None


def _is_type_checking(node: ast.If) -> bool:
  return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def imports(module: str) -> set[str]:
  """The lminima modules ``module`` imports when it runs (at any depth of
  its code, not under ``if TYPE_CHECKING``)."""
  path = os.path.join(ROOT, *module.split(".")[1:])
  path = (os.path.join(path, "__init__.py") if os.path.isdir(path)
          else path + ".py")
  with open(path) as f:
    tree = ast.parse(f.read())
  found = set()
  pending = [tree]
  while pending:
    node = pending.pop()
    if isinstance(node, ast.If) and _is_type_checking(node):
      pending.extend(node.orelse)
      continue
    if isinstance(node, ast.Import):
      found.update(a.name for a in node.names if a.name.startswith("lminima"))
    elif (isinstance(node, ast.ImportFrom) and node.level == 0
          and node.module and node.module.split(".")[0] == "lminima"):
      for alias in node.names:
        name = f"{node.module}.{alias.name}"
        found.add(name if name in MODULES else node.module)
    pending.extend(ast.iter_child_nodes(node))
  return found


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
  """Every import that runs against the layers, as "module -> imported"."""
  found = []
  for module, imported in sorted(graph.items()):
    here = package_of(module)
    if here is None:  # the root exports the public API from every layer
      continue
    for other in sorted(imported):
      there = package_of(other)
      if there is None or (there != here and RANK[there] >= RANK[here]):
        found.append(f"{module} -> {other}")
  return found


def import_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One cycle of ``graph`` as a path that returns to its start, or None."""
  done, path = set(), []

  def visit(module):
    if module in path:
      return path[path.index(module):] + [module]
    if module in done:
      return None
    path.append(module)
    for other in sorted(graph.get(module, ())):
      cycle = visit(other)
      if cycle:
        return cycle
    path.pop()
    done.add(module)
    return None

  for module in sorted(graph):
    cycle = visit(module)
    if cycle:
      return cycle
  return None


GRAPH = {module: imports(module) for module in MODULES | {"lminima"}}


class LayersTest(absltest.TestCase):

  def test_the_top_level_holds_only_the_root_and_the_dtype_leaf(self):
    top = {m.name for m in pkgutil.iter_modules([ROOT]) if not m.ispkg}
    self.assertEqual(top, {"dtypes"})

  def test_every_subpackage_has_a_layer(self):
    self.assertEqual({package_of(m) for m in MODULES}, set(RANK))

  def test_imports_follow_the_layers(self):
    self.assertEqual(upward_imports(GRAPH), [])

  def test_no_import_cycle(self):
    self.assertIsNone(import_cycle(GRAPH))

  def test_the_imports_are_read(self):
    # The checks above would pass vacuously if imports() found nothing.
    self.assertIn("lminima.core.problem", imports("lminima.critical.certify"))
    self.assertIn("lminima.core.derivative", imports("lminima.core.problem"))
    self.assertIn("lminima.data", imports("lminima.study.sweep"))
    self.assertGreater(sum(map(len, GRAPH.values())), 150)

  def test_the_checks_fail_on_a_cycle_and_on_upward_imports(self):
    graph = {"lminima.core.problem": {"lminima.core.derivative"},
             "lminima.core.derivative": {"lminima.linalg.lanczos"},
             "lminima.linalg.lanczos": {"lminima.core.problem"},
             "lminima.theory.euler": {"lminima.critical.certify",
                                      "lminima"}}
    self.assertEqual(import_cycle(graph), [
        "lminima.core.derivative", "lminima.linalg.lanczos",
        "lminima.core.problem", "lminima.core.derivative"])
    self.assertEqual(upward_imports(graph), [
        "lminima.core.derivative -> lminima.linalg.lanczos",
        "lminima.theory.euler -> lminima",
        "lminima.theory.euler -> lminima.critical.certify"])


if __name__ == "__main__":
  absltest.main()
