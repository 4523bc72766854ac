"""The config's journey: which modules of the package read the whole ConfigDict themselves.

    python scripts/config_journey.py [--package=jaxstab] [--quiet]

Why: a module that reads `cfg.train.x` itself depends on the shape of the whole config (renaming
or moving a key touches it, and its tests must build a full config); a module that receives a
resolved record (engine.train.StepSpec, a Plan, an early_stop.Spec) depends only on that record.
The fewer modules on the config's journey, the fewer places a key's meaning can drift.

The rule, read with `ast` (nothing is imported or run): a module counts when any of its names
that holds a config is *loaded* (an attribute read off it, `cfg.get(...)`, or passed on as an
argument). A name holds a config when it is
  - `cfg`, or ends in `_cfg` (`train_cfg`, `model_cfg`, `optim_cfg`, `stab_cfg`, ...), or
  - `config` used with a top-level key of config_lib.base_config() (`config.train`,
    `config.get("compile_cache")`), so that a transformers model config (`config.hidden_size`,
    also named `config` in the engine) does not count.
A name bound in the module from a transformers config (`cfg = module.config`) does not count.
Aliases of a sub-tree (`st = cfg.stabilisers`) are not followed: the read of `cfg` counts already.
The config part itself (jaxstab/config/) is listed apart, since defining the keys is its job.
Prints each counted module with the names it reads, then the count (total and outside config/).
"""
import argparse
import ast
import os
import sys
from typing import Dict, Set

TOP_KEYS = {"task", "seed", "seeds", "data_seeds", "setting", "fidelity", "select", "settings",
            "overwrite", "compile_cache", "explicit", "data", "model", "optim", "train",
            "stabilisers", "checkpoint", "probe", "get", "to_dict", "unlocked",
            "copy_and_resolve_references"}


def _is_cfg_name(name: str) -> bool:
  return name == "cfg" or name.endswith("_cfg")


def reads(tree: ast.AST) -> Set[str]:
  """The config-holding names the module loads (by the rule in the docstring)."""
  found, hf = set(), set()
  for node in ast.walk(tree):  # names bound to a transformers config: `cfg = module.config`
    if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Attribute)
        and node.value.attr == "config"):
      hf |= {t.id for t in node.targets if isinstance(t, ast.Name)}
  for node in ast.walk(tree):
    if (isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and _is_cfg_name(node.id)
        and node.id not in hf):
      found.add(node.id)
    elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
          and node.value.id == "config" and node.attr in TOP_KEYS):
      found.add("config")
  return found


def journey(package: str) -> Dict[str, Set[str]]:
  """module path (relative to the package's parent) -> the config names it loads."""
  out = {}
  for root, _, files in os.walk(package):
    for f in sorted(files):
      if not f.endswith(".py"):
        continue
      path = os.path.join(root, f)
      with open(path, encoding="utf-8") as fh:
        names = reads(ast.parse(fh.read(), path))
      if names:
        out[os.path.relpath(path, os.path.dirname(os.path.abspath(package)))] = names
  return dict(sorted(out.items()))


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--package", default=os.path.join(os.path.dirname(__file__), "..",
                                                        "jaxstab"))
  parser.add_argument("--quiet", action="store_true", help="print the counts only")
  args = parser.parse_args(argv)
  package = os.path.normpath(args.package)
  found = journey(package)
  config_part = os.path.join(os.path.basename(package), "config") + os.sep
  outside = {m: n for m, n in found.items() if not m.startswith(config_part)}
  if not args.quiet:
    for module, names in found.items():
      print(f"{module:45s} {', '.join(sorted(names))}")
  print(f"{len(found)} modules read the config ({len(outside)} outside "
        f"{config_part.rstrip(os.sep)}/)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
