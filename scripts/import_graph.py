"""The import graph of the jaxstab package by part, checked against the one-way rule.

    python scripts/import_graph.py [--package=jaxstab] [--quiet]

A module's part is its folder: `jaxstab/<part>/...` belongs to <part>, so the rule cannot drift
from the tree. The top-level modules are the entry points (ENTRY: thin command lines and the two
public aliases); the package's own __init__ counts as infra, since every import of a sub-package
runs it. Reads every module with `ast` (nothing is imported or run), collects its imports of the
package's own modules, at module level and inside functions, prints them grouped by part, and
exits 1 when
  - a module imports a module of a part it may not use (upward, or sideways between two parts of
    the same height, e.g. report <-> analysis): ALLOWED below, from ../shared/design/LAYOUT.md,
    with its few single-module exceptions (EXTRA), each with its reason;
  - the modules import each other in a cycle (function-level imports count: a local import that
    dodges a cycle at import time is still a cycle in the design);
  - a module belongs to no part: a folder not in PARTS, or a top-level module not in ENTRY.

`import jaxstab.a.b` and `from jaxstab.a import b` also run `jaxstab/a/__init__.py`, so an import
from outside a subpackage counts as an import of the subpackage's __init__ too.
"""
import argparse
import ast
import os
import sys
from typing import Dict, List, NamedTuple, Optional, Sequence, Set, Tuple

# part -> height; a module's part is its folder under the package (LAYOUT.md).
PARTS: Dict[str, int] = {
    "entry": 5,     # the top-level modules: one thin module per command line, public aliases
    "study": 4, "analysis": 4, "report": 4,
    "engine": 3, "results": 3,
    "data": 2,
    "config": 1,
    "infra": 0,     # plus the package's own __init__
}
# The top-level modules, each a thin entry point or a public alias of a module in a part.
ENTRY = ("main", "compare", "loss_surface", "forgetting", "connectivity", "config_lib",
         "optim")

# What each part may use besides itself. An analysis rebuilds a setting through the engine's
# public `inputs`; the report reads analyses' outputs on disk, never their code.
ALLOWED: Dict[str, Set[str]] = {
    "entry": {"study", "analysis", "report", "engine", "results", "data", "config", "infra"},
    "study": {"engine", "results", "data", "config", "infra"},
    "analysis": {"engine", "results", "data", "config", "infra"},
    "report": {"results", "config", "infra"},
    "engine": {"data", "config", "infra"},
    "results": {"data", "config", "infra"},
    "data": {"config", "infra"},
    "config": {"infra"},
    "infra": set(),
}

# Single modules a part may use beyond its table, each for one stated reason.
EXTRA: Dict[Tuple[str, str], str] = {
    ("report", "engine.optim"): "the bias-correction figure computes the schedule with the "
                                "optimizer's own pure functions, so it shows what training used",
}

class Import(NamedTuple):
  source: str       # importing module, relative dotted name ("report.builder")
  target: str       # imported module, relative dotted name
  line: int
  local: bool       # inside a function (or class) body


class Problem(NamedTuple):
  kind: str         # "layer" | "cycle" | "unassigned"
  text: str


# ------------------------------------------------------------------ reading the package
def modules_of(package_dir: str) -> Dict[str, str]:
  """Relative dotted module name -> file path, for every .py file of the package."""
  out = {}
  for root, dirs, files in os.walk(package_dir):
    dirs[:] = sorted(d for d in dirs if not d.startswith((".", "__pycache__")))
    for f in sorted(files):
      if not f.endswith(".py"):
        continue
      rel = os.path.relpath(os.path.join(root, f), package_dir)[:-3].split(os.sep)
      if rel[-1] == "__init__" and len(rel) > 1:
        rel = rel[:-1]
      out[".".join(rel)] = os.path.join(root, f)
  return out


def _is_package(name: str, modules: Dict[str, str]) -> bool:
  return name == "__init__" or modules[name].endswith("__init__.py")


def _resolve(name: str, modules: Dict[str, str]) -> Optional[str]:
  """The package module `name` (relative dotted) refers to, or its nearest existing parent."""
  parts = name.split(".") if name else []
  while parts:
    if ".".join(parts) in modules:
      return ".".join(parts)
    parts.pop()
  return "__init__"


def _parents(name: str) -> List[str]:
  parts = name.split(".")
  return [".".join(parts[:i]) for i in range(1, len(parts))]


def imports_of(package: str, package_dir: str) -> List[Import]:
  """Every import of the package's own modules, module-level and function-level."""
  modules = modules_of(package_dir)
  out = []
  for source, path in modules.items():
    with open(path, encoding="utf-8") as f:
      tree = ast.parse(f.read(), filename=path)
    here = source.split(".") if _is_package(source, modules) and source != "__init__" else (
        source.split(".")[:-1])
    for node, local in _walk(tree):
      for target in _targets(node, package, here, modules):
        for t in [p for p in _parents(target) if not _inside(source, p)] + [target]:
          if t != source:
            out.append(Import(source, t, node.lineno, local))
  return sorted(set(out))


def _inside(source: str, package: str) -> bool:
  return source == package or source.startswith(package + ".")


def _walk(tree):
  """(import node, inside a function or class) for every import of the module."""
  stack = [(tree, False)]
  while stack:
    node, local = stack.pop()
    for child in ast.iter_child_nodes(node):
      if isinstance(child, (ast.Import, ast.ImportFrom)):
        yield child, local
      nested = local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef,
                                           ast.Lambda))
      stack.append((child, nested))


def _targets(node, package: str, here: List[str], modules: Dict[str, str]) -> List[str]:
  names = []
  if isinstance(node, ast.Import):
    for alias in node.names:
      if alias.name == package or alias.name.startswith(package + "."):
        names.append(_resolve(alias.name[len(package) + 1:], modules))
    return names
  if node.level:  # relative: from . import x / from .a import b
    base = here[:len(here) - (node.level - 1)] if node.level > 1 else list(here)
    mod = ".".join(base + (node.module.split(".") if node.module else []))
  elif node.module == package or (node.module or "").startswith(package + "."):
    mod = node.module[len(package) + 1:]
  else:
    return names
  for alias in node.names:  # `from a import b`: b is a module when a/b.py exists
    sub = f"{mod}.{alias.name}" if mod else alias.name
    names.append(sub if sub in modules else _resolve(mod, modules))
  return names


# ------------------------------------------------------------------ checking
def layer_of(module: str) -> Optional[str]:
  """The part of `module` (dotted, relative to the package): its folder, or entry at the top."""
  if module == "__init__":
    return "infra"
  first = module.split(".")[0]
  if first in PARTS and first != "entry":
    return first
  return "entry" if module in ENTRY else None


def check(package_dir: str, package: Optional[str] = None, allowed=ALLOWED,
          extra=EXTRA) -> Tuple[List[Import], List[Problem]]:
  """(the imports, the problems) of the package in `package_dir` (see the module docstring)."""
  package = package or os.path.basename(os.path.normpath(package_dir))
  edges = imports_of(package, package_dir)
  height = PARTS
  problems = []
  for m in modules_of(package_dir):
    if layer_of(m) is None:
      problems.append(Problem("unassigned", f"{package}.{m} is in no part (move it into a part's "
                                            "folder, or name it an entry point in ENTRY)"))
  for e in edges:
    a, b = layer_of(e.source), layer_of(e.target)
    # an exception module's package __init__ runs with it, so it is excepted too
    excepted = any(part == a and (m == e.target or m.startswith(e.target + "."))
                   for part, m in extra)
    if a is None or b is None or a == b or b in allowed.get(a, set()) or excepted:
      continue
    way = "upward" if height[b] > height[a] else (
        "sideways" if height[b] == height[a] else "not in the table")
    problems.append(Problem("layer", f"{way}: {package}.{e.source} ({a}) imports "
                                     f"{package}.{e.target} ({b}) at line {e.line}"
                                     + (" (in a function)" if e.local else "")))
  for cycle in cycles(edges):
    problems.append(Problem("cycle", "cycle: " + " -> ".join(f"{package}.{m}" for m in cycle)))
  return edges, problems


def cycles(edges: Sequence[Import]) -> List[List[str]]:
  """One cycle (a -> ... -> a) through each strongly connected group of two or more modules."""
  graph: Dict[str, Set[str]] = {}
  for e in edges:
    graph.setdefault(e.source, set()).add(e.target)
    graph.setdefault(e.target, set())
  index, low, on_stack, stack, groups = {}, {}, set(), [], []

  def visit(v):  # Tarjan's algorithm
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in sorted(graph[v]):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      group = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        group.append(w)
        if w == v:
          break
      if len(group) > 1:
        groups.append(set(group))

  sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
  for v in sorted(graph):
    if v not in index:
      visit(v)
  return [_one_cycle(graph, g) for g in groups]


def _one_cycle(graph, group) -> List[str]:
  """A shortest path from the group's first module back to itself, inside the group."""
  start = min(group)
  paths, seen = [[start]], {start}
  while paths:
    nxt = []
    for p in paths:
      for w in sorted(graph[p[-1]] & group):
        if w == start:
          return p + [start]
        if w not in seen:
          seen.add(w)
          nxt.append(p + [w])
    paths = nxt
  return sorted(group)


# ------------------------------------------------------------------ printing
def render(package: str, edges: Sequence[Import], modules=()) -> str:
  """The module-level graph, layer by layer from the top; `*` marks a function-level import."""
  by_source: Dict[str, Dict[str, bool]] = {}
  for e in edges:
    # a target imported both ways counts as module-level
    by_source.setdefault(e.source, {})[e.target] = by_source.get(e.source, {}).get(
        e.target, True) and e.local
  lines = []
  modules = sorted(set(modules) | {e.source for e in edges} | {e.target for e in edges})
  for name, height in PARTS.items():
    members = [m for m in modules if layer_of(m) == name]
    uses = sorted({layer_of(t) or "?" for m in members for t in by_source.get(m, {})}
                  - {name})
    lines.append(f"{name} (height {height}) uses: {', '.join(uses) or 'nothing'}")
    for m in members:
      targets = by_source.get(m, {})
      shown = ", ".join(f"{t}{'*' if local else ''}" for t, local in sorted(targets.items()))
      lines.append(f"  {m:24s} -> {shown}" if shown else f"  {m}")
  lines.append("(* only inside a function)")
  return "\n".join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python scripts/import_graph.py", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  default = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "jaxstab")
  parser.add_argument("--package", default=default, help="the package folder (default: jaxstab)")
  parser.add_argument("--quiet", action="store_true", help="print only the problems")
  args = parser.parse_args(argv)
  package = os.path.basename(os.path.normpath(args.package))
  edges, problems = check(args.package)
  if not args.quiet:
    print(render(package, edges, modules=modules_of(args.package)))
    used = {(layer_of(e.source), e.target) for e in edges} & set(EXTRA)
    for (layer, module), why in sorted(EXTRA.items()):
      if (layer, module) in used:
        print(f"exception: {layer} uses {package}.{module}: {why}")
  for p in problems:
    print(p.text)
  print(f"{len(problems)} problem(s)" if problems else "no upward or sideways import, no cycle")
  return 1 if problems else 0


if __name__ == "__main__":
  sys.exit(main())
