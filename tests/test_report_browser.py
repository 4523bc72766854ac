"""The report page in a real browser: every image loads, the console stays clean."""
import os
import re
import shutil
import subprocess

import pytest

from jaxstab import report
from jaxstab.config import config_lib
from jaxstab.study import studies

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PROBE = """<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute('data-images', ok + '/' + imgs.length);
  var best = imgs.filter(function (i) { return i.alt.indexOf('expected best-of-n') === 0; });
  var drawn = best.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute('data-best-of-n', drawn + '/' + best.length);
  var fc = imgs.filter(function (i) { return i.alt.indexOf('failure forecast of') === 0; });
  var fcDrawn = fc.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute('data-forecast', fcDrawn + '/' + fc.length);
  [['init x data-order grid of', 'data-seed-grid'], ['early stop of', 'data-early-stop'],
   ['seed disagreement of', 'data-disagreement'], ['per-layer CKA of', 'data-cka']
  ].forEach(function (pair) {
    var mine = imgs.filter(function (i) { return i.alt.indexOf(pair[0]) === 0; });
    var shown = mine.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
    document.body.setAttribute(pair[1], shown + '/' + mine.length);
  });
});
</script>"""


def _chromium():
  path = shutil.which("chromium") or shutil.which("chromium-browser")
  if not path:
    if os.environ.get("CI"):
      pytest.fail("chromium is missing: .ci/run installs Debian's chromium package")
    pytest.skip("no chromium on this machine (apt-get install chromium)")
  return path


def test_report_page_loads_every_image_without_console_errors(tmp_path, glue_dir):
  """A tiny real study: RTE from ../shared/glue, 4 seeds, two settings, a few steps."""
  chromium = _chromium()
  cfg = config_lib.task_config("rte", "model=tiny-bert,seeds=1-4")
  cfg.data.dir = str(glue_dir)
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
  probed = out / "probed.html"
  html = page.read_text(encoding="utf-8")
  assert html.count("<img") >= 4
  probed.write_text(html.replace("</body>", PROBE + "</body>"), encoding="utf-8")
  common = [chromium, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=5000"]
  dom = subprocess.run(common + ["--enable-logging=stderr", "--v=0", "--dump-dom",
                                 probed.as_uri()], capture_output=True, text=True, timeout=120)
  assert dom.returncode == 0, dom.stderr[-2000:]
  counts = re.search(r'data-images="(\d+)/(\d+)"', dom.stdout)
  assert counts, dom.stdout[-2000:]
  loaded, total = int(counts.group(1)), int(counts.group(2))
  assert total >= 4 and loaded == total, (loaded, total)
  # the expected best-of-n figure of the task (one per task) is on the page and drawn
  assert re.search(r'data-best-of-n="1/1"', dom.stdout), dom.stdout[-2000:]
  assert "expected best-of-n curves of RTE" in html and "Uncertainty over seeds" in html
  # the failure-forecast figure of the task (jaxstab.results.forecast) is drawn, its table beside it
  assert re.search(r'data-forecast="1/1"', dom.stdout), dom.stdout[-2000:]
  assert "Failure forecast from the probe" in html
  # the init x data-order heat map and the early-stop curves, one each, drawn
  assert re.search(r'data-seed-grid="1/1"', dom.stdout), dom.stdout[-2000:]
  assert re.search(r'data-early-stop="1/1"', dom.stdout), dom.stdout[-2000:]
  # a disagreement matrix per setting (predictions.npz), the CKA curves where the summary has cka
  assert re.search(r'data-disagreement="4/4"', dom.stdout), dom.stdout[-2000:]
  assert re.search(r'data-cka="4/4"', dom.stdout), dom.stdout[-2000:]
  table = (tmp_path / "study" / "table.md").read_text(encoding="utf-8")
  assert "| init × data seeds |" in table and "4 started, 2 continued" in table
  console = [l for l in dom.stderr.splitlines() if "CONSOLE" in l and "probed.html" in l]
  assert not [l for l in console if "rror" in l], console
  shot = out / "screenshot.png"
  subprocess.run(common + ["--window-size=1400,2400", f"--screenshot={shot}", page.as_uri()],
                 capture_output=True, timeout=120, check=True)
  assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20000
