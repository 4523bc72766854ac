"""Where the connectivity analysis leaves its results: <setting dir>/analysis/connectivity.json
(every curve), the `connectivity` block of the setting's summary.json, of the study's
summary.json entry for that setting, and the connectivity table at the end of the study's
table.md (the rest of table.md is kept as it is).

Every new file's content is built first, from files read now; only then is anything written, each
file atomically (outputs.write_json, fs.write_text). A failure while building (a garbled summary)
writes nothing. Everything the summaries held is kept: they go through the typed records, whose
round trip is exact (jaxstab.results.schema), with only `connectivity` set.
"""
import dataclasses
from typing import List, Tuple

from jaxstab.infra import fs
from jaxstab.results import outputs, records, tables


def _with_block(study: records.StudySummary, name: str, block: dict,
                plain_setting: bool) -> records.StudySummary:
  """`study` with `block` as the connectivity of its setting `name` (its only one when plain)."""
  settings = []
  hit = False
  for s in study.settings:
    if plain_setting or s.name == name:
      s, hit = dataclasses.replace(s, connectivity=block), True
    settings.append(s)
  if not hit:
    raise ValueError(f"setting {name!r} not in the study's summary")
  return dataclasses.replace(study, settings=tuple(settings))


def plan(workdir: str, name: str, directory: str, block: dict,
         record: dict) -> List[Tuple[str, str, object]]:
  """[(kind, path, content)] of every file to write, in the order to write them."""
  out = [("json", outputs.analysis_path(directory, outputs.CONNECTIVITY), record)]
  top = records.read_study(workdir)
  if not top.plain:  # a study: the setting folder's own summary, then the study's
    own = records.read_study(directory)
    out.append(("summary", directory, _with_block(own, name, block, True)))
    top = _with_block(top, name, block, False)
  else:
    top = _with_block(top, name, block, True)
  out.append(("summary", workdir, top))
  table = fs.join(workdir, "table.md")
  if fs.isfile(table):  # only its connectivity table changes (tables.with_connectivity)
    out.append(("text", table, tables.with_connectivity(
        fs.read_text(table), tables.connectivity_markdown([s.to_json() for s in top.settings]))))
  return out


def write(workdir: str, name: str, directory: str, block: dict, record: dict) -> str:
  """Writes everything `plan` lists; the path of connectivity.json."""
  todo = plan(workdir, name, directory, block, record)
  fs.makedirs(fs.join(directory, outputs.ANALYSIS_DIR))
  for kind, path, content in todo:
    if kind == "json":
      outputs.write_json(path, content)
    elif kind == "summary":
      records.write_study(path, content)
    else:
      fs.write_text(path, content)
  return todo[0][1]
