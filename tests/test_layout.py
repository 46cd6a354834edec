"""
The package's shape (docs/architecture.rst): layers with one-way arrows, no
cycles, no private names across subpackages, short functions, small classes.

Read from the source with ``ast``, so a rule broken anywhere in ``txcb/``
fails here, with the module and line that broke it.
"""

import ast
import configparser
import importlib
import os
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from tests.support import ROOT

PKG = os.path.join(ROOT, "txcb")

#: Old module paths that keep working as thin re-exports of their new home.
COMPAT = {
    "txcb.codec": "txcb.wire.netstring",
    "txcb.embedded": "txcb.buckets.embedded",
    "txcb.persistent": "txcb.buckets.persistent",
    "txcb.memcached": "txcb.buckets.memcached",
    "txcb.mcserver": "txcb.server.memcached",
    "txcb.blocking": "txcb.client.blocking",
    "txcb.tap": "txcb.service.tap",
    "txcb.metrics": "txcb.service.metrics",
}
#: Which layers a layer may import (besides itself).  "core" is txcb's
#: top-level modules; "top" is cli and testing.
ALLOWED = {
    "core": {"core"},
    "wire": {"core"},
    "buckets": {"core", "wire"},
    "client": {"core", "wire"},
    "server": {"core", "wire"},
    "service": {"core", "wire", "buckets", "client", "server"},
    "top": {"core", "wire", "buckets", "client", "server", "service"},
}
MAX_FUNCTION_LINES = 80
MAX_CLASS_LINES = 500

#: Breaches of the rules below that the redesign (issue 11) has still to
#: remove.  The tests assert this list is exactly what the code breaks, so it
#: can only shrink: a new breach fails, and so does a fixed one still listed.
KNOWN = set()


def modules():
    """{module name: path} for every module of the package but the shims."""
    found = {}
    for folder, _dirs, files in os.walk(PKG):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
            if rel.endswith(".__init__"):
                rel = rel[:-len(".__init__")]
            if rel not in COMPAT:
                found[rel] = path
    return found


def layer(module):
    parts = module.split(".")
    if len(parts) == 1:
        return "core"
    if parts[1] in ("cli", "testing", "__main__"):
        return "top"
    if parts[1] in ALLOWED:
        return parts[1]
    return "core"


def _type_checking(node):
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imports(path, module):
    """(imported module, names, line, at module level) for txcb imports."""
    tree = ast.parse(open(path).read(), path)
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    found = []

    def visit(node, top):
        for child in ast.iter_child_nodes(node):
            if _type_checking(child):
                continue
            inner = top and not isinstance(
                child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                for a in child.names:
                    if a.name.split(".")[0] == "txcb":
                        found.append((a.name, [], child.lineno, top))
            elif isinstance(child, ast.ImportFrom):
                target = child.module or ""
                if child.level:
                    base = package.split(".")[:len(package.split(".")) - child.level + 1]
                    target = ".".join(base + ([target] if target else []))
                if target.split(".")[0] == "txcb":
                    found.append((target, [a.name for a in child.names], child.lineno, top))
            visit(child, inner)
    visit(tree, True)
    return found


def resolve(target, names, known):
    """The modules one import statement loads (a ``from pkg import mod`` names mod)."""
    out = []
    for n in names:
        if "%s.%s" % (target, n) in known:
            out.append("%s.%s" % (target, n))
    if not out or len(out) < len(names):
        out.append(target)
    return out


def breaches():
    known = modules()
    found = set()
    graph = {}
    for module, path in known.items():
        graph[module] = set()
        for target, names, line, top in imports(path, module):
            if target in COMPAT:
                found.add("%s imports the compatibility shim %s" % (module, target))
                continue
            for dep in resolve(target, names, known):
                if dep == module:
                    continue
                if not top:
                    found.add("%s imports %s inside a function" % (module, dep))
                else:
                    graph[module].add(dep)
                src, dst = layer(module), layer(dep)
                if dst != src and dst not in ALLOWED[src]:
                    found.add("%s imports %s (%s -> %s)" % (module, dep, src, dst))
                if dst != src or (src == "core") != (dst == "core") or \
                        module.split(".")[:2] != dep.split(".")[:2]:
                    last = dep.split(".")[-1]
                    if last.startswith("_") and not last.startswith("__"):
                        found.add("%s imports the private module %s" % (module, dep))
                    for n in names:
                        if n.startswith("_") and not n.startswith("__"):
                            found.add("%s imports the private name %s.%s" % (module, dep, n))
    for cycle in cycles(graph):
        found.add("import cycle: " + " -> ".join(cycle))
    return found


def cycles(graph):
    """One representative cycle per strongly connected component."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10000))
    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def oversized():
    found = set()
    for module, path in modules().items():
        for node in ast.walk(ast.parse(open(path).read(), path)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                limit, kind = MAX_FUNCTION_LINES, "function"
            elif isinstance(node, ast.ClassDef):
                limit, kind = MAX_CLASS_LINES, "class"
            else:
                continue
            size = node.end_lineno - node.lineno + 1
            if size > limit:
                found.add("%s.%s: %s over %d lines" % (module, node.name, kind, limit))
    return found


class LayoutTests(SynchronousTestCase):

    def test_layers_cycles_and_private_names(self):
        found = breaches() | oversized()
        self.assertEqual(sorted(found - KNOWN), [], "new breaches of the layout rules")
        self.assertEqual(sorted(KNOWN - found), [], "fixed: remove them from KNOWN")

    def test_wire_codecs_import_no_twisted(self):
        code = ("import sys, txcb.wire.netstring, txcb.wire.mcascii, txcb.wire.mcbinary; "
                "print(sorted(m for m in sys.modules if m.split('.')[0] in "
                "('twisted', 'zope')))")
        out = subprocess.check_output([sys.executable, "-c", code], cwd=ROOT)
        self.assertEqual(out.strip(), b"[]")

    def test_checker_sees_a_breach(self):
        """The rules themselves: a server importing a bucket is caught."""
        self.assertEqual(layer("txcb.server.netstring"), "server")
        self.assertNotIn("buckets", ALLOWED["server"])
        self.assertEqual(cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}), [["a", "b"]])
        self.assertEqual(resolve("txcb.wire", ["mcbinary"], {"txcb.wire.mcbinary": ""}),
                         ["txcb.wire.mcbinary"])


class CompatibilityTests(SynchronousTestCase):
    """Every module path README.rst documented before the redesign still works."""

    def test_old_paths_reexport_the_new_modules(self):
        for old, new in sorted(COMPAT.items()):
            moved, home = importlib.import_module(old), importlib.import_module(new)
            self.assertTrue(home.__all__, new)
            for name in home.__all__:
                self.assertIs(getattr(moved, name), getattr(home, name), (old, name))

    def test_package_faces(self):
        import txcb
        from txcb import client, server
        from txcb.buckets.embedded import EmbeddedBucket
        from txcb.client.remote import connect
        from txcb.server.netstring import BucketServerFactory
        self.assertIs(txcb.EmbeddedBucket, EmbeddedBucket)
        self.assertIs(client.connect, connect)
        self.assertIs(server.BucketServerFactory, BucketServerFactory)


class PackagingTests(SynchronousTestCase):
    """A non-editable ``pip install .`` ships every package of the tree."""

    def test_every_package_is_listed_in_setup_cfg(self):
        cfg = configparser.ConfigParser()
        cfg.read(os.path.join(ROOT, "setup.cfg"))
        listed = set(cfg["options"]["packages"].split())
        on_disk = {os.path.relpath(d, ROOT).replace(os.sep, ".")
                   for d, _dirs, files in os.walk(os.path.join(ROOT, "txcb"))
                   if "__init__.py" in files}
        self.assertEqual(on_disk - listed, set())
