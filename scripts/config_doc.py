"""Writes docs/configuration.md, every config key with its default and meaning, from the comments
of `base_config()` itself (jaxstab/config/config_lib.py), so the page cannot drift from the code.

    python scripts/config_doc.py            # rewrite docs/configuration.md
    python scripts/config_doc.py --check    # exit 1 when the page is stale (tests run this)

A key's meaning is the comment on its line plus the comment-only lines right below it; a comment
line above a run of keys (`# Your own files ...:`) is a note on that group. A key of a group
written in one expression (model.tiny) takes the group's comment. Every key must have a meaning:
a key without one is an error, so a new key cannot land undocumented.
"""
import argparse
import inspect
import os
import re
import sys
from typing import Dict, List, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from jaxstab.config import config_lib  # noqa: E402  pylint: disable=wrong-import-position

DOC = os.path.join(REPO, "docs", "configuration.md")
_KEY = re.compile(r"^\s*c\.([\w.]+)\s*=\s*(.*?)\s*(?:#\s?(.*))?$")
_COMMENT = re.compile(r"^\s*#\s?(.*)$")

HEADER = """\
# Configuration

Every key of jaxstab's configuration, with its default and what it means. This page is written
by `python scripts/config_doc.py` from the comments of `base_config()` in
[jaxstab/config/config_lib.py](../jaxstab/config/config_lib.py); a test fails when the two
differ, so edit the comments there, not this page.

Values are applied in one order: `base_config()`, then the presets (model, then setting, then
fidelity; [running.md](running.md)), then your own values in the order you wrote them: the
config file's argument string (`--config=configs/rte.py:lr=1e-5`), then `--config.a.b=v` flags.
Your values win over every preset, and a study re-applies them after each setting's presets.
A key that does not exist is refused with the keys that do.
"""


def leaves(cfg, prefix="") -> Dict[str, object]:
  """dotted key -> default, for every leaf (an empty group counts as a leaf: `settings`)."""
  out = {}
  for k in cfg.keys():
    v, name = cfg[k], f"{prefix}{k}"
    if hasattr(v, "keys") and len(v.keys()):
      out.update(leaves(v, name + "."))
    else:
      out[name] = v.to_dict() if hasattr(v, "to_dict") else v
  return out


def meanings() -> Tuple[Dict[str, str], Dict[str, str]]:
  """(dotted key -> meaning, dotted key -> the group note written above it)."""
  lines = inspect.getsource(config_lib.base_config).splitlines()
  meaning: Dict[str, List[str]] = {}
  notes: Dict[str, str] = {}
  last, pending_note = None, None
  for line in lines:
    key = _KEY.match(line)
    comment = _COMMENT.match(line)
    if key:
      last = key.group(1)
      meaning[last] = [key.group(3)] if key.group(3) else []
      if pending_note:
        notes[last], pending_note = pending_note, None
    elif comment and last is not None and line.index("#") > 20:  # continuation, in the column
      meaning[last].append(comment.group(1))
    elif comment:
      pending_note, last = comment.group(1), None
    elif last is not None and not line.strip().startswith(("c.", "return")):
      continue  # the rest of a multi-line expression (model.tiny's dict)
  return {k: " ".join(v).strip() for k, v in meaning.items()}, notes


def _default(value) -> str:
  if isinstance(value, str) and os.path.isabs(value):
    value = os.path.relpath(value, REPO)  # data.dir: ../shared/glue beside the repository
  if isinstance(value, str):
    return f"`'{value}'`" if value else "`''`"
  return f"`{value!r}`"


def render() -> str:
  base = config_lib.base_config()
  keys = leaves(base)
  meaning, notes = meanings()
  missing = [k for k in keys if not (meaning.get(k) or meaning.get(k.rsplit(".", 1)[0]))]
  if missing:
    raise SystemExit(f"config keys without a comment in base_config(): {', '.join(missing)}")
  out = [HEADER]
  order = list(meaning)  # source order: a group's leaves where the group is written
  rank = {k: order.index(k) if k in order else order.index(k.rsplit(".", 1)[0]) for k in keys}
  groups: Dict[str, List[str]] = {}
  for k in sorted(keys, key=lambda k: (rank[k], k)):
    groups.setdefault(k.split(".")[0] if "." in k else "", []).append(k)
  for group, names in groups.items():
    out.append(f"\n## {group or 'top level'}\n")
    if group and meaning.get(group):
      out.append(meaning[group] + "\n")
    out.append("| key | default | meaning |\n|---|---|---|")
    for k in names:
      text = meaning.get(k) or meaning[k.rsplit(".", 1)[0]]
      if k in notes:
        text = f"{notes[k].rstrip(':')}: {text}"
      out.append(f"| `{k}` | {_default(keys[k])} | {text.replace('|', chr(92) + '|')} |")
  return "\n".join(out) + "\n"


def listed(text: str) -> List[str]:
  """The keys a page lists (its table rows)."""
  return re.findall(r"^\| `([\w.]+)` \|", text, re.M)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python scripts/config_doc.py", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--check", action="store_true", help="exit 1 when the page is stale")
  args = parser.parse_args(argv)
  text = render()
  if args.check:
    old = open(DOC, encoding="utf-8").read() if os.path.isfile(DOC) else ""
    if old != text:
      keys = set(leaves(config_lib.base_config()))
      have = set(listed(old))
      print(f"{os.path.relpath(DOC, REPO)} is stale: run python scripts/config_doc.py"
            + (f"; missing {sorted(keys - have)}" if keys - have else "")
            + (f"; no longer keys {sorted(have - keys)}" if have - keys else ""))
      return 1
    return 0
  with open(DOC, "w", encoding="utf-8") as f:
    f.write(text)
  print(f"wrote {os.path.relpath(DOC, REPO)}: {len(listed(text))} keys")
  return 0


if __name__ == "__main__":
  sys.exit(main())
