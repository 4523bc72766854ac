"""The report page in a real browser: every image loads, the console stays clean."""
import subprocess

from jaxstab import report
from jaxstab.config import config_lib
from jaxstab.study import studies
from tests import browser


def test_report_page_loads_every_image_without_console_errors(tmp_path, glue_dir):
  """A tiny real study: RTE from ../shared/glue, 4 seeds, two settings, a few steps."""
  browser.chromium()
  cfg = config_lib.task_config("rte", "model=tiny-bert,seeds=1-4")
  cfg.data.dir = str(glue_dir)
  cfg.data.train_examples = 96  # 6 steps of 16 need no more; only these are tokenized
  cfg.model.tiny.vocab_size = 300
  cfg.train.max_steps = 6
  cfg.train.max_seq_length = 24
  cfg.train.evals_per_epoch = 1
  cfg.probe.every = 2
  # groups of 4 everywhere: devlin, the grid's two groups and the early stop's first phase run
  # one program, compiled once (the test session's XLA cache), the grid's 8 runs included
  cfg.train.seeds_per_step = 4
  cfg.settings["rte_devlin"] = "setting=devlin"
  cfg.settings["rte_ours"] = "setting=ours"
  # the seed analyses: an init x data-order grid, and 4 runs of which 2 go on after step 3
  cfg.settings["rte_grid"] = "setting=devlin,data_seeds=1-2"  # seeds 1-4 x data seeds 1-2
  cfg.settings["rte_stop"] = "setting=devlin,stop_at=0.5,stop_keep=2"
  result = studies.run(cfg, str(tmp_path / "study"))
  by_name = {s["name"]: s for s in result["settings"]}
  assert {n: len(s["runs"]) for n, s in by_name.items()} == {
      "rte_devlin": 4, "rte_ours": 4, "rte_grid": 8, "rte_stop": 2}
  assert by_name["rte_grid"]["decomposition"]["grid"] == [4, 2]
  assert by_name["rte_stop"]["early_stop"]["started"] == 4
  # every setting kept its seeds' per-layer representations (analysis.rep_examples), so each
  # has its CKA matrices: the embeddings' output and the tiny model's layers
  layers = cfg.model.tiny.num_layers + 1
  assert {n: len(s["instability"]["cka"]) for n, s in by_name.items()} == dict.fromkeys(by_name,
                                                                                       layers)
  out = tmp_path / "study" / "report"
  report.build(str(tmp_path / "study"), str(out))
  page = out / "index.html"
  html = page.read_text(encoding="utf-8")
  assert html.count("<img") >= 4
  counts, console = browser.probe(page, {
      "expected best-of-n": "data-best-of-n", "failure forecast of": "data-forecast",
      "init x data-order grid of": "data-seed-grid", "early stop of": "data-early-stop",
      "seed disagreement of": "data-disagreement", "per-layer CKA of": "data-cka"},
      tmp_path / "profile")
  loaded, total = counts["data-images"]
  assert total >= 4 and loaded == total, (loaded, total)
  # the expected best-of-n figure of the task (one per task) is on the page and drawn
  assert counts["data-best-of-n"] == (1, 1)
  assert "expected best-of-n curves of RTE" in html and "Uncertainty over seeds" in html
  # the failure-forecast figure of the task (jaxstab.results.forecast) is drawn, its table beside it
  assert counts["data-forecast"] == (1, 1)
  assert "Failure forecast from the probe" in html
  # the init x data-order heat map and the early-stop curves, one each, drawn
  assert counts["data-seed-grid"] == (1, 1) and counts["data-early-stop"] == (1, 1)
  # a disagreement matrix per setting (predictions.npz), the CKA curves where the summary has cka
  assert counts["data-disagreement"] == (4, 4) and counts["data-cka"] == (4, 4)
  table = (tmp_path / "study" / "table.md").read_text(encoding="utf-8")
  assert "| init × data seeds |" in table and "4 started, 2 continued" in table
  assert not [l for l in console if "rror" in l], console
  shot = out / "screenshot.png"
  subprocess.run(browser.common_args(browser.chromium(), tmp_path / "profile")
                 + ["--window-size=1400,2400", f"--screenshot={shot}", page.as_uri()],
                 capture_output=True, timeout=120, check=True)
  assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20000
