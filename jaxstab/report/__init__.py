"""The paper's analyses of a finished run or study, as PNG figures and one self-contained HTML
page, built from the files the run wrote (nothing is retrained):

    python -m jaxstab.report --workdir=/tmp/table1        # -> /tmp/table1/report/index.html

Modules: load (reading a workdir), picks (which seeds stand for failed / successful runs),
schedule (effective learning rate with bias correction), figures and gradnorms (matplotlib, Agg),
html (the page), builder (all of it).
"""
from jaxstab.report.builder import Report, build

__all__ = ["Report", "build"]
