"""One table from several workdirs: a two-recipe RTE study and a plain MRPC run, tiny BERT on real
GLUE text, merged by `python -m jaxstab.compare` without retraining."""
import dataclasses
import json
import math
import os
import shutil

import numpy as np
import pytest
from scipy import stats as sps

from jaxstab.config import config_lib
from jaxstab.report import compare
from jaxstab.results import agreement, representations, stats
from jaxstab.study import studies


def _small(cfg, glue_dir):
  cfg.data.dir = str(glue_dir)
  cfg.data.train_examples = 64  # 3 steps of 8 need no more; only these are tokenized
  cfg.model.tiny.vocab_size = 300
  cfg.train.max_steps = 3
  cfg.train.max_seq_length = 24
  cfg.train.batch_size = 8
  cfg.train.eval_batch_size = 128
  cfg.train.evals_per_epoch = 1
  cfg.probe.every = 3
  cfg.seeds = "1-3"
  return cfg


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory, glue_dir):
  rte = str(tmp_path_factory.mktemp("rte"))
  cfg = config_lib.study_config("model=tiny-bert", tasks=("rte",), settings=("devlin", "ours"))
  studies.run(_small(cfg, glue_dir), rte)
  mrpc = str(tmp_path_factory.mktemp("mrpc"))
  studies.run(_small(config_lib.task_config("mrpc", "model=tiny-bert,setting=devlin"), glue_dir),
            mrpc)
  return rte, mrpc


def _cells(table: str) -> dict:
  """{(row, column): cell} of the first markdown table in `table` (table.md then has the
  intervals and best-of-n tables below it)."""
  rows = [l.strip("|").split("|") for l in table.strip().split("\n\n")[0].splitlines()]
  head = [c.strip() for c in rows[0]]
  return {(r[0].strip(), head[i]): c.strip() for r in rows[2:] for i, c in enumerate(r) if i}


def test_merged_table_keeps_every_cell_of_its_sources(workdirs, tmp_path, capsys):
  rte, mrpc = workdirs
  out = tmp_path / "table.md"
  assert compare.main([rte, mrpc, f"--out={out}"]) == 0
  text = out.read_text(encoding="utf-8")
  assert capsys.readouterr().out == text
  merged = _cells(text.split("\n\n")[0])
  assert set(merged) == {(r, t) for r in ("devlin", "ours") for t in ("RTE", "MRPC")}
  assert merged[("ours", "MRPC")] == ""                  # MRPC ran devlin only
  own_rte = _cells(open(f"{rte}/table.md", encoding="utf-8").read())
  own_mrpc = _cells(open(f"{mrpc}/table.md", encoding="utf-8").read())
  assert merged[("devlin", "RTE")] == own_rte[("devlin", "RTE")]
  assert merged[("ours", "RTE")] == own_rte[("ours", "RTE")]
  (mrpc_cell,) = own_mrpc.values()                        # a plain run's row is its setting
  assert merged[("devlin", "MRPC")] == mrpc_cell and mrpc_cell.endswith("/3 failed)")
  # majority and Levene from the per-seed records, computed here independently
  summary = json.load(open(f"{rte}/summary.json", encoding="utf-8"))
  finals = {s["recipe"]: [r["final"]["accuracy"] for r in s["runs"]] for s in summary["settings"]}
  p = sps.levene(finals["devlin"], finals["ours"], center="median").pvalue
  perm = [stats.permutation_test(finals["devlin"], finals["ours"], k) for k in ("mean", "std")]
  expected = "| RTE | devlin vs ours | " + " | ".join(
      f"{x:.2g}" if math.isfinite(x) else "—" for x in [p] + perm) + " |"
  assert [l for l in text.splitlines() if l.startswith("| RTE |")] == [expected]
  assert "permutation tests of the difference in mean and in std (10,000 random splits" in text
  # each setting's intervals and best of n = 1, 5 (more than 3 seeds: —) and N = 3, as the
  # study's table.md gives them below its Table 1
  own = open(f"{rte}/table.md", encoding="utf-8").read().split("\n\n", 1)[1]
  for s in summary["settings"]:
    v = [r["final"]["accuracy"] for r in s["runs"]]
    lo, hi = stats.bootstrap_ci(v, "mean")
    (row,) = [l for l in text.splitlines() if l.startswith(f"| {s['recipe']} | RTE | 3 | ")
              and "±" not in l]
    assert f" | {100 * np.mean(v):.1f} [{100 * lo:.1f}, {100 * hi:.1f}] | " in row and row in own
    mean, std = stats.expected_max(v)
    assert len(mean) == 3 and mean[0] == pytest.approx(np.mean(v))
    best = (f"| {s['recipe']} | RTE | 3 | {100 * mean[0]:.1f} ± {100 * std[0]:.1f} | — | "
            f"{100 * mean[2]:.1f} ± {100 * std[2]:.1f} |")
    assert best in text.splitlines() and best in own.splitlines()
  majority = summary["settings"][0]["majority"]["accuracy"]
  assert f"RTE {100 * majority:.1f}, MRPC " in text
  assert not any(l.startswith("| MRPC |") for l in text.splitlines())   # one recipe: no pair
  assert f"RTE {rte} (3 seeds); MRPC {mrpc} (3 seeds)" in text


def test_instability_columns_are_recomputed_from_predictions(workdirs, capsys):
  """compare and each study's table.md carry one instability row per setting: disagreement and
  Fleiss' kappa over every seed / the successful ones, computed here again from the setting's
  predictions.npz with the summary's failed flags, and the last layer's mean CKA over pairs of
  seeds, computed here again from the seeds' runs/reps_seed_N.npy."""
  rte, mrpc = workdirs
  assert compare.main([rte, mrpc]) == 0
  text = capsys.readouterr().out
  head = "| setting | task | seeds (successful) | disagreement | Fleiss' κ | CKA, last layer |"
  assert head in text.splitlines()
  for folder, recipe, table in ((f"{rte}/rte_devlin", "devlin", f"{rte}/table.md"),
                                (f"{rte}/rte_ours", "ours", f"{rte}/table.md"),
                                (mrpc, "devlin", f"{mrpc}/table.md")):
    summary = json.load(open(f"{folder}/summary.json", encoding="utf-8"))
    with np.load(f"{folder}/predictions.npz") as z:
      logits = z["logits"]
    ok = [i for i, r in enumerate(summary["runs"]) if r["failed"] is False]
    show = lambda v: f"{v:.3f}" if isinstance(v, float) else f"undefined: {v.reason}"
    cell = lambda fn: f"{show(fn(logits))} / {show(fn(logits, ok))}"
    top = [np.load(f"{folder}/runs/reps_seed_{r['seed']}.npy")[-1] for r in summary["runs"]]
    ckas = [representations.linear_cka(top[i], top[j]) for i in range(3) for j in range(3) if i != j]
    ckas = [c for c in ckas if isinstance(c, float)]
    row = (f"| {recipe} | {summary['task'].upper()} | 3 ({len(ok)}) | "
           f"{cell(agreement.disagreement)} | {cell(agreement.fleiss_kappa)} | "
           f"{f'{np.mean(ckas):.3f}' if ckas else '—'} |")
    assert row in text.splitlines(), (row, text)
    assert row in open(table, encoding="utf-8").read().splitlines()


def test_paper_rows_are_the_notes_table(workdirs, capsys):
  """--paper adds the paper's Table 1 rows, for the tasks shown, as ../shared/paper/NOTES.md
  gives them."""
  notes = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "paper", "NOTES.md")
  with open(notes, encoding="utf-8") as f:
    text = f.read().split("## Results to compare against")[1]
  rows = [l.strip("|").split("|") for l in text.splitlines() if l.startswith("| ") and "/" in l]
  table = {r[0].strip(): [c.strip() for c in r[1:4]] for r in rows}   # RTE, MRPC, CoLA
  assert len(table) == 3
  for name, row in compare.PAPER_TABLE1.items():
    key = "Ours" if name.startswith("Ours") else name
    assert [" / ".join(f"{x:.1f}" for x in row[t]) for t in ("rte", "mrpc", "cola")] == table[key]
  expected = {k: v[:2] for k, v in table.items()}
  rte, mrpc = workdirs
  assert compare.main([rte, mrpc, "--paper"]) == 0
  got = _cells(capsys.readouterr().out.split("\n\n")[0])
  paper = {r[len("paper, BERT-large: "):]: (got[(r, "RTE")], got[(r, "MRPC")])
           for r, _ in got if r.startswith("paper, BERT-large: ")}
  assert sorted(paper) == sorted(compare.PAPER_TABLE1)
  for name, cells in paper.items():
    key = "Ours" if name.startswith("Ours") else name
    assert list(cells) == expected[key], name


def test_paper_rows_only_for_the_papers_tasks(workdirs):
  """--paper on a task the paper has no numbers for (the demo, one's own data) says so in one
  line instead of printing the paper's rows with empty cells; with one task of the paper among
  others, the rows stay and the other tasks' cells say '—'."""
  rte, mrpc = workdirs
  settings = [dataclasses.replace(s, summary=dataclasses.replace(s.summary, task="demo"))
              for s in compare.gather([rte])]
  text = compare.markdown(settings, paper=True)
  assert "paper, BERT-large" not in text
  assert ("--paper: the paper's Table 1 has no numbers for DEMO; it reports COLA, MRPC, RTE."
          in text.splitlines())
  mixed = compare.gather([mrpc]) + settings
  text = compare.markdown(mixed, paper=True)
  rows = [l for l in text.split("\n\n")[0].splitlines() if l.startswith("| paper, BERT-large")]
  assert len(rows) == len(compare.PAPER_TABLE1)
  assert all(l.rstrip(" |").endswith("—") for l in rows)      # DEMO is the last column
  assert "no numbers for DEMO;" in text
  assert "no numbers" not in compare.markdown(compare.gather([rte, mrpc]), paper=True)


def test_a_setting_folder_and_a_running_study(workdirs, tmp_path, capsys):
  rte, mrpc = workdirs
  own = _cells(open(f"{rte}/table.md", encoding="utf-8").read())
  # one setting folder of a study: its recipe is the folder name less the task
  assert compare.main([os.path.join(rte, "rte_ours"), mrpc]) == 0
  merged = _cells(capsys.readouterr().out.split("\n\n")[0])
  assert merged[("ours", "RTE")] == own[("ours", "RTE")] and merged[("devlin", "RTE")] == ""
  # a study stopped while `ours` trained: no study summary, no summary for `ours` yet
  running = tmp_path / "running"
  shutil.copytree(rte, running)
  os.remove(running / "summary.json")
  os.remove(running / "rte_ours" / "summary.json")
  assert compare.main([str(running)]) == 0
  text = capsys.readouterr().out
  merged = _cells(text.split("\n\n")[0])
  assert merged == {("devlin", "RTE"): own[("devlin", "RTE")]}
  assert f"{running} is a study still running or stopped: only its finished settings " \
         "(rte_devlin) are in the table." in text


def test_bad_workdirs_are_refused_by_name(workdirs, tmp_path, capsys):
  rte, mrpc = workdirs
  assert compare.main([rte, rte]) == 2
  assert "'devlin' is in both" in capsys.readouterr().err
  missing = tmp_path / "nothing"
  assert compare.main([mrpc, str(missing)]) == 2
  assert f"{missing}/summary.json not found" in capsys.readouterr().err
  empty = tmp_path / "empty"
  empty.mkdir()
  assert compare.main([str(empty)]) == 2
  assert f"{empty} holds no finished run" in capsys.readouterr().err
  bad = tmp_path / "bad"
  bad.mkdir()
  (bad / "summary.json").write_text("{}", encoding="utf-8")
  out = tmp_path / "never.md"
  assert compare.main([mrpc, str(bad), f"--out={out}"]) == 2
  assert "is not a jaxstab summary (no task, setting" in capsys.readouterr().err
  assert not out.exists()
  (bad / "summary.json").write_text('{"settings": [', encoding="utf-8")
  assert compare.main([str(bad)]) == 2
  assert "summary.json is not a jaxstab summary (not JSON" in capsys.readouterr().err


def test_readme_gpu_table_is_what_compare_makes_of_the_committed_summaries():
  """The full-size results table of docs/results/README.md must be regenerable from
  docs/results/gpu/, not typed."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  workdirs = [os.path.join(root, "docs", "results", "gpu", f"minilm_{t}")
              for t in ("rte", "mrpc", "cola")]
  settings = compare.gather(workdirs)
  assert all(len(s.runs) == 25 for s in settings)
  table = compare.markdown(settings, paper=True).split("\n\n")[0].strip()
  with open(os.path.join(root, "docs", "results", "README.md"), encoding="utf-8") as f:
    readme = f.read()
  assert table.count("\n") >= 9 and table in readme
