"""A report page opened in headless Chromium (Debian's package; .ci/run installs it): which of
its images the browser drew, and what the page wrote to the console."""
import os
import re
import shutil
import subprocess

import pytest

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# Run on load: for each alt-text prefix, "drawn/all" of the images whose alt starts with it, as
# a data- attribute of <body> (images with a natural width are the ones the browser decoded).
PROBE = """<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var drawn = function (list) {
    return list.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length; };
  document.body.setAttribute('data-images', drawn(imgs) + '/' + imgs.length);
  (window.JAXSTAB_PREFIXES || []).forEach(function (pair) {
    var mine = imgs.filter(function (i) { return i.alt.indexOf(pair[0]) === 0; });
    document.body.setAttribute(pair[1], drawn(mine) + '/' + mine.length);
  });
});
</script>"""


def chromium() -> str:
  path = shutil.which("chromium") or shutil.which("chromium-browser")
  if not path:
    if os.environ.get("CI"):
      pytest.fail("chromium is missing: .ci/run installs Debian's chromium package")
    pytest.skip("no chromium on this machine (apt-get install chromium)")
  return path


def common_args(browser: str, profile) -> list:
  return [browser, *FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=5000"]


def probe(page, prefixes: dict, profile) -> tuple:
  """Opens a copy of `page` (an index.html) with PROBE added; returns ({attribute: (drawn,
  all)} for 'data-images' and each of `prefixes` ({alt prefix: attribute}), the console lines
  of the page). Fails the test when Chromium fails or an attribute is missing."""
  browser = chromium()
  html = page.read_text(encoding="utf-8")
  pairs = ",".join(f"[{p!r}, {a!r}]" for p, a in prefixes.items())
  script = f"<script>window.JAXSTAB_PREFIXES = [{pairs}];</script>" + PROBE
  probed = page.with_name("probed.html")
  probed.write_text(html.replace("</body>", script + "</body>"), encoding="utf-8")
  dom = subprocess.run(common_args(browser, profile) + ["--enable-logging=stderr", "--v=0",
                                                        "--dump-dom", probed.as_uri()],
                       capture_output=True, text=True, timeout=120)
  assert dom.returncode == 0, dom.stderr[-2000:]
  counts = {}
  for attribute in ["data-images", *prefixes.values()]:
    m = re.search(attribute + r'="(\d+)/(\d+)"', dom.stdout)
    assert m, (attribute, dom.stdout[-2000:])
    counts[attribute] = (int(m.group(1)), int(m.group(2)))
  console = [l for l in dom.stderr.splitlines() if "CONSOLE" in l and "probed.html" in l]
  return counts, console
