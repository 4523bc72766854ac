"""The typed result records and their one reader (jaxstab.results.records): every summary committed
under docs/results/ (of several ages and shapes) loads with its content intact and checked
against the table.md written beside it; a record written and read back is the same record; a
workdir in a bucket reads as one on disk does; a bad file is refused in one line naming it."""
import dataclasses
import glob
import json
import math
import os
import re
import shutil

import pytest

from jaxstab.infra import fs
from jaxstab.infra.errors import ConfigError
from jaxstab.report import compare
from jaxstab.results import outputs, records, stats
from jaxstab.results.records import EarlyStop, RunRecord, SettingSummary, StudySummary
from tests.test_bucket import bucket  # noqa: F401  pylint: disable=unused-import  (the fixture)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs", "results")
COMMITTED = sorted(os.path.dirname(p) for p in
                   glob.glob(os.path.join(DOCS, "**", outputs.SUMMARY), recursive=True))


def _raw_settings(raw: dict) -> list:
  """The setting entries of a summary.json as plain JSON, read without jaxstab."""
  if "runs" in raw:
    return [{k: v for k, v in raw.items() if k not in ("settings", "levene", "table", "errors")}]
  return raw["settings"]


def _table_cells(path: str) -> dict:
  """{(row, TASK): cell} of the first markdown table of a table.md."""
  with open(path, encoding="utf-8") as f:
    block = f.read().strip().split("\n\n")[0]
  rows = [[c.strip() for c in l.strip().strip("|").split("|")] for l in block.splitlines()]
  return {(r[0], rows[0][i]): c for r in rows[2:] for i, c in enumerate(r) if i}


def test_the_committed_summaries_are_all_found():
  # cpu_reference (a plain run and its setting folder), the seed grids, the GPU runs and study
  assert len(COMMITTED) >= 7, COMMITTED
  kinds = {(s.plain, s.bare) for s in map(records.read_study, COMMITTED)}
  assert kinds == {(True, True), (True, False), (False, False)}


@pytest.mark.parametrize("workdir", COMMITTED, ids=lambda p: os.path.relpath(p, DOCS))
def test_a_committed_summary_reads_with_every_field(workdir):
  path = os.path.join(workdir, outputs.SUMMARY)
  with open(path, encoding="utf-8") as f:
    text = f.read()
  raw = json.loads(text)
  study = records.read_study(workdir)
  assert study.plain == ("runs" in raw)
  entries = _raw_settings(raw)
  assert len(study.settings) == len(entries)
  table = os.path.join(workdir, "table.md")
  cells = _table_cells(table) if os.path.isfile(table) else None
  for s, e in zip(study.settings, entries):
    assert (s.task, s.metric, s.select, s.setting, s.name) == (
        e["task"], e["metric"], e["select"], e["setting"], e.get("name"))
    assert s.majority[s.metric] == e["majority"][e["metric"]]
    assert len(s.runs) == len(e["runs"]) > 0
    assert [r.seed for r in s.runs] == [r["seed"] for r in e["runs"]]
    assert list(s.seeds) == e["seeds"]
    for r, er in zip(s.runs, e["runs"]):
      assert r.final == er["final"] and r.best == er["best"]
      assert (r.failed, r.diverged_at, r.final_train_loss) == (
          er["failed"], er["diverged_at"], er["final_train_loss"])
      # every run has its metric, or the record says why not
      assert math.isfinite(r.value("final", s.metric)) or r.diverged_at is not None
      assert r.failed in (True, False)          # every committed run trained to the end
    failed = sum(r.failed for r in s.runs)
    assert failed == s.failed_runs == e["failed_runs"]
    assert s.final_spread == e["final_spread"] and s.final_spread["n"] == len(s.runs)
    if "init_seed" in e["runs"][0]:             # a seed grid: run number = 1000 init + data
      assert all(r.seed == 1000 * r.init_seed + r.data_seed for r in s.runs)
      n_init, n_data = s.decomposition["grid"]
      assert n_init * n_data == len(s.runs)
    if cells is not None:  # the study's own Table 1 row, rebuilt from the typed runs
      values = [r.value(s.select, s.metric) for r in s.runs]
      sp = stats.spread(values)
      body = " / ".join(f"{100 * sp[k]:.1f}" for k in ("std", "mean", "median", "max"))
      label = s.recipe or s.name
      assert cells[(label, s.task.upper())] == f"{body} ({failed}/{len(s.runs)} failed)"
  # Written back, the file is byte for byte what was read: nothing dropped, nothing invented.
  assert json.dumps(study.to_json(), indent=2) + "\n" == text


def test_every_committed_table_was_checked():
  checked = [w for w in COMMITTED if os.path.isfile(os.path.join(w, "table.md"))]
  assert len(checked) >= 6


def test_a_setting_folder_reads_as_its_study_lists_it():
  parent = os.path.join(DOCS, "cpu_reference")
  (listed,) = records.read_study(parent).settings
  own = records.read_setting(os.path.join(parent, listed.name))
  assert dataclasses.replace(listed, name=None, recipe=None) == own
  with pytest.raises(ConfigError, match="is a study of 5 settings"):
    records.read_setting(os.path.join(DOCS, "gpu", "minilm_rte"))


def test_load_reads_the_files_of_each_committed_setting():
  study = records.load(os.path.join(DOCS, "cpu_seed_grid", "rte_devlin_lr2e-5"))
  (s,) = study.settings
  assert study.plain and s.name == "rte_devlin" and s.recipe == "devlin"
  assert s.config["task"] == "rte" and not s.missing
  assert sorted(s.probe["seeds"]) == sorted(r.seed for r in s.runs)
  assert {r["seed"] for r in s.records} == {r.seed for r in s.runs}
  gpu = records.load(os.path.join(DOCS, "gpu", "minilm_rte"))
  assert [len(x.runs) for x in gpu.settings] == [25] * 5
  assert all(x.probe is None and len(x.missing) == 3 for x in gpu.settings)  # summaries only


def _study():
  """A study built in code: every record kind, a stopped run, and keys no record knows."""
  run = RunRecord(seed=1, final={"step": 9, "accuracy": 0.7}, best={"step": 5, "accuracy": 0.75},
                  final_train_loss=0.3, diverged_at=None, failed=False,
                  extra={"note": "kept"})
  stopped = RunRecord(seed=2, final={"step": 3, "accuracy": 0.5}, best={"step": 3, "accuracy": 0.5},
                      stopped_at=3, failed=None)
  es = EarlyStop(at=0.3, keep=1, by="dev", step=3, started=2, continued=1,
                 scores={"1": -0.7, "2": None}, fraction_of_compute=0.65, extra={"x": [1]})
  a = SettingSummary(task="rte", metric="accuracy", majority={"accuracy": 0.53}, setting="devlin",
                     select="final", total_steps=10, seeds=(1, 2), failed_runs=0, runs=(run,),
                     early_stop=es, stopped_runs=(stopped,), name="rte_devlin", recipe="devlin",
                     extra={"future_field": {"a": 1}})
  b = dataclasses.replace(a, name="rte_ours", recipe="ours", setting="ours", early_stop=None,
                          stopped_runs=())
  return StudySummary((a, b), levene=({"task": "rte", "a": "rte_devlin", "b": "rte_ours",
                                       "p": 0.5},), table="| t |", errors=(),
                      extra={"comment": "top-level key"})


def test_write_then_read_gives_the_same_records(tmp_path):
  study = _study()
  records.write_study(str(tmp_path), study)
  back = records.read_study(str(tmp_path))
  assert back == study
  assert back.settings[0].extra == {"future_field": {"a": 1}}
  assert back.settings[0].runs[0].extra == {"note": "kept"}
  assert back.settings[0].early_stop.extra == {"x": [1]}
  assert back.extra == {"comment": "top-level key"}
  assert back.settings[0].stopped_runs[0].stopped_at == 3
  # A setting folder's own summary: no study fields, and read back the same.
  (tmp_path / "one").mkdir()
  records.write_setting(str(tmp_path / "one"), study.settings[0])
  raw = json.loads((tmp_path / "one" / "summary.json").read_text(encoding="utf-8"))
  assert "settings" not in raw and "levene" not in raw and raw["runs"][0]["note"] == "kept"
  assert records.read_setting(str(tmp_path / "one")) == study.settings[0]
  # A plain run: its setting at the top, listed again under `settings`.
  plain = StudySummary((study.settings[0],), plain=True, levene=(), table="", errors=())
  (tmp_path / "plain").mkdir()
  records.write_study(str(tmp_path / "plain"), plain)
  raw = json.loads((tmp_path / "plain" / "summary.json").read_text(encoding="utf-8"))
  assert raw["runs"] == raw["settings"][0]["runs"] and list(raw)[-4:] == [
      "settings", "levene", "table", "errors"]
  assert records.read_study(str(tmp_path / "plain")) == plain


def test_an_older_summary_gains_no_fields_when_rewritten(tmp_path):
  """A summary from before `select`, the intervals and the run flags: read, its runs' failed
  flags are None (not False), and written back it is the same JSON."""
  old = {"task": "rte", "metric": "accuracy", "majority": {"accuracy": 0.5},
         "runs": [{"seed": 1, "final": {"accuracy": 0.6}}], "unknown": 1}
  (tmp_path / "summary.json").write_text(json.dumps(old), encoding="utf-8")
  study = records.read_study(str(tmp_path))
  (s,) = study.settings
  assert s.select is None and s.runs[0].failed is None and s.runs[0].best == {}
  assert s.extra == {"unknown": 1} and study.bare
  assert study.to_json() == old and list(study.to_json()) == list(old)


def test_a_bucket_workdir_reads_as_the_local_one(bucket, tmp_path):  # noqa: F811
  local = os.path.join(DOCS, "cpu_reference")
  shutil.copytree(local, bucket / "runs" / "ref")
  remote = "gs://runs/ref"
  assert records.read_study(remote) == records.read_study(local)
  study = records.load(remote)
  assert study.workdir == remote and study.settings[0].directory == remote
  assert study.settings[0].summary == records.load(local).settings[0].summary
  sub = "rte_devlin_lr2e-5"   # the setting folder holds config.json and probe.npz too
  (s,) = records.load(f"{remote}/{sub}").settings
  (h,) = records.load(os.path.join(local, sub)).settings
  assert s.directory == f"{remote}/{sub}" and s.missing == [f"{remote}/{sub}/metrics.jsonl"]
  assert s.summary == h.summary and s.config == h.config and s.config["task"] == "rte"
  assert s.probe["step"].tolist() == h.probe["step"].tolist() and len(s.probe["step"]) > 10
  assert records.read_setting(f"{remote}/{sub}") == records.read_setting(os.path.join(local, sub))
  # compare reads it the same way: the same tables, only the sources line names the bucket
  text = compare.markdown(compare.gather([remote]))
  assert text == compare.markdown(compare.gather([local])).replace(local, remote)
  # the report reads the bucket in place and writes into a local folder (--out)
  from jaxstab.report import __main__ as report_cli  # pylint: disable=import-outside-toplevel
  from jaxstab.report.builder import build  # pylint: disable=import-outside-toplevel
  assert report_cli.main([f"--workdir={remote}/{sub}", f"--out={tmp_path / 'rep'}"]) == 0
  page = (tmp_path / "rep" / "index.html").read_text(encoding="utf-8")
  assert f"{remote}/{sub}" in page and len(list((tmp_path / "rep").glob("*.png"))) >= 5
  with pytest.raises(ConfigError, match="pass a local folder"):
    build(remote)
  fs.write_text(f"{remote}/summary.json", '{"runs": [')
  with pytest.raises(ConfigError, match=re.escape(f"{remote}/summary.json is not a jaxstab "
                                                  "summary (not JSON")):
    records.load(remote)


@pytest.mark.parametrize("text,message", [
    (None, "summary.json not found"),
    ('{"settings": [', "is not a jaxstab summary (not JSON"),
    ("[1, 2]", "is not a jaxstab summary (not a JSON object)"),
    ("{}", "is not a jaxstab summary (no task, metric, runs)"),
    ('{"settings": []}', "its `settings` list is empty"),
    ('{"settings": [{"name": "a", "task": "rte"}]}', "setting 0 has no metric, runs"),
    ('{"task": "rte", "metric": "accuracy", "runs": [3]}',
     "is not a jaxstab summary (`runs`: expected a JSON object, got int)"),
    ('{"task": "rte", "metric": "accuracy", "runs": [{"seed": 1, "final": 0.5}]}',
     "(`runs`: `final`: expected a JSON object, got float)"),
])
def test_a_bad_summary_is_refused_in_one_line_naming_it(tmp_path, text, message):
  if text is not None:
    (tmp_path / "summary.json").write_text(text, encoding="utf-8")
  with pytest.raises(ConfigError) as e:
    records.read_study(str(tmp_path))
  msg = str(e.value)
  assert msg.startswith(str(tmp_path / "summary.json")) and message in msg and "\n" not in msg
