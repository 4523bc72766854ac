"""The paper's analyses of a finished run or study, as PNG figures and one self-contained HTML
page, built from the files the run wrote (nothing is retrained):

    python -m jaxstab.report --workdir=/tmp/table1        # -> /tmp/table1/report/index.html

It reads a workdir through jaxstab.results.records, picks the seeds it shows with jaxstab.results.picks, and
draws what the analyses wrote (<setting dir>/analysis/*) without importing them.

Modules: schedule (effective learning rate with bias correction), figures and gradnorms
(matplotlib, Agg), analyses (the loss surface and forgetting figures, from their files), html
(the page), builder (all of it).
"""
from jaxstab.report.builder import build, Report

__all__ = ["Report", "build"]
