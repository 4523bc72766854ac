"""Spread statistics over seeds, as the paper's Table 1 reports them."""
import numpy as np


def spread(values) -> dict:
  v = np.asarray(values, np.float64)
  return {"n": int(v.size), "std": float(v.std(ddof=0)) if v.size else float("nan"),
          "mean": float(v.mean()) if v.size else float("nan"),
          "median": float(np.median(v)) if v.size else float("nan"),
          "max": float(v.max()) if v.size else float("nan")}


def levene(a, b) -> float:
  """p-value of Levene's test (median-centred) that two groups of runs have equal spread."""
  from scipy import stats  # pylint: disable=import-outside-toplevel
  return float(stats.levene(a, b, center="median").pvalue)
