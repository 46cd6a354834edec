"""
The test suite's own structure (read from the source, nothing imported):
shared harnesses live in tests.support, no test module imports another,
test class names are unique across modules, and the only FaultyBucket is
txcb.testing's.
"""

import ast
import glob
import os

from twisted.trial.unittest import SynchronousTestCase

from tests.support import ROOT

TESTS = os.path.join(ROOT, "tests")


def parsed_test_modules():
    """``{module name: parsed source}`` of every tests/test_*.py."""
    out = {}
    for path in sorted(glob.glob(os.path.join(TESTS, "test_*.py"))):
        with open(path) as f:
            out[os.path.basename(path)[:-3]] = ast.parse(f.read(), path)
    return out


def imported_modules(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module
            for alias in node.names:
                yield node.module + "." + alias.name


class SuiteStructureTests(SynchronousTestCase):

    def test_test_modules_import_only_tests_support(self):
        found = []
        for name, tree in parsed_test_modules().items():
            for module in imported_modules(tree):
                if module == "tests" or (module.startswith("tests.")
                                         and not module.startswith("tests.support")):
                    found.append((name, module))
        self.assertEqual(found, [])

    def test_class_names_are_unique_across_test_modules(self):
        seen = {}
        for name, tree in parsed_test_modules().items():
            for node in tree.body:
                if isinstance(node, ast.ClassDef):
                    seen.setdefault(node.name, []).append(name)
        self.assertEqual({c: ms for c, ms in seen.items() if len(ms) > 1}, {})

    def test_the_only_faulty_bucket_is_txcb_testing(self):
        found = []
        for path in glob.glob(os.path.join(TESTS, "**", "*.py"), recursive=True):
            with open(path) as f:
                tree = ast.parse(f.read(), path)
            found += [os.path.relpath(path, ROOT) for node in ast.walk(tree)
                      if isinstance(node, ast.ClassDef) and node.name == "FaultyBucket"]
        self.assertEqual(found, [])
