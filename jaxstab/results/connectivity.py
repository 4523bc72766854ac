"""Linear connectivity between a setting's seeds, from losses already measured along straight
lines in weight space (jaxstab.analysis.connectivity measures them): which pairs to measure, the
barrier of one line, the basins, and the `connectivity` block of summary.json. Numbers only: no
model, no JAX, so the report, compare and the tests use it on the stored JSON.

Barrier (Frankle et al. 2020; Juneja et al. 2023). On the line theta(alpha) = (1 - alpha)
theta_a + alpha theta_b, the barrier is the largest excess of the loss over the straight line
between the two endpoint losses:

    B(a, b) = max_alpha [ L(theta(alpha)) - ((1 - alpha) L(theta_a) + alpha L(theta_b)) ]

over the measured alphas. The endpoints are among them and add 0, so B >= 0; B = 0 means the loss
never rises above the chord (the pair is linearly connected).

Basins: the connected components of the graph on the finite seeds whose edges are the measured
pairs with B < threshold. A pair that was not measured (pairs sampled beyond `max_pairs`) is no
edge, so with sampled pairs a basin can split only because its linking pair was not drawn.

Default threshold: a tenth of the loss of a predictor that knows nothing: 0.1 ln(K) nats for K
classes (the cross-entropy of the uniform prediction; 0.069 nats for a binary task), 0.1 x the
variance of the labels for a regression task (the MSE of predicting their mean). A bump of that
size means that halfway between two seeds the model has lost a tenth of what separates a useful
model from a guess; it is a property of the task, not of the runs, so every setting of a task,
and every study, is cut at the same height.
"""
import itertools
import math
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from jaxstab.results import finite

DEFAULT_MAX_PAIRS = 300      # every pair of 25 seeds
DEFAULT_THRESHOLD_SHARE = 0.1


def alphas(points: int) -> np.ndarray:
  """`points` interior points evenly spaced in (0, 1), plus both endpoints: points + 2 values."""
  if points < 1:
    raise ValueError(f"points must be >= 1, got {points}")
  return np.linspace(0.0, 1.0, int(points) + 2)


def choose_pairs(seeds: Sequence[int], max_pairs: int = DEFAULT_MAX_PAIRS,
                 pair_seed: int = 0) -> Tuple[List[Tuple[int, int]], bool]:
  """(pairs (a, b) with a < b, sampled?): every pair of `seeds` when there are at most
  `max_pairs`, else `max_pairs` of them drawn without replacement by `pair_seed` (sorted)."""
  every = list(itertools.combinations(sorted(int(s) for s in seeds), 2))
  if len(every) <= max_pairs:
    return every, False
  pick = np.sort(np.random.default_rng(pair_seed).choice(len(every), size=max_pairs,
                                                         replace=False))
  return [every[i] for i in pick], True


def barrier(loss: Sequence[float], alpha: Sequence[float]) -> float:
  """B of one line (see the module docstring): NaN when any loss on it is not finite."""
  y, a = np.asarray(loss, np.float64), np.asarray(alpha, np.float64)
  if not np.all(np.isfinite(y)):
    return math.nan
  chord = (1.0 - a) * y[0] + a * y[-1]
  return float(np.max(y - chord))


def default_threshold(num_labels: int, regression: bool, labels=None,
                      share: float = DEFAULT_THRESHOLD_SHARE) -> Tuple[float, str]:
  """(threshold, how it was chosen): `share` of the loss of a predictor that knows nothing."""
  if regression:
    var = float(np.var(np.asarray(labels, np.float64)))
    return share * var, (f"{share:g} x the variance of the training labels ({var:.4g}): a "
                         f"tenth of the MSE of predicting their mean")
  return share * math.log(num_labels), (f"{share:g} x ln({num_labels}) nats: a tenth of the "
                                        "cross-entropy of the uniform prediction")


def basins(seeds: Sequence[int], pairs: Sequence[Tuple[int, int]], barriers: Sequence[float],
           threshold: float) -> List[List[int]]:
  """Connected components of `seeds` joined by the pairs whose barrier is < threshold (a NaN
  barrier is no edge); each basin sorted, the basins by size (largest first), then first seed."""
  parent = {int(s): int(s) for s in seeds}

  def root(s):
    while parent[s] != s:
      parent[s] = parent[parent[s]]
      s = parent[s]
    return s
  for (a, b), h in zip(pairs, barriers):
    if a in parent and b in parent and h is not None and math.isfinite(h) and h < threshold:
      parent[root(a)] = root(b)
  groups: Dict[int, List[int]] = {}
  for s in parent:
    groups.setdefault(root(s), []).append(s)
  return sorted((sorted(g) for g in groups.values()), key=lambda g: (-len(g), g[0]))


def failed_apart(found: Sequence[Sequence[int]], failed: Dict[int, bool]):
  """True when no basin holds both a failed and a successful seed; an Undefined (with its
  reason) when the question has no answer: every seed failed, or none did."""
  seeds = [s for b in found for s in b]
  n_failed = sum(bool(failed.get(s)) for s in seeds)
  if n_failed == 0:
    return finite.Undefined("no seed with finite parameters failed")
  if n_failed == len(seeds):
    return finite.Undefined(f"all {len(seeds)} seeds with finite parameters failed: there is no "
                            "successful seed to be apart from")
  return all(len({bool(failed.get(s)) for s in b}) == 1 for b in found)


def block(seeds: Sequence[int], pairs: Sequence[Tuple[int, int]], alpha: Sequence[float],
          barriers: Sequence[float], threshold: float, rule: str, failed: Dict[int, bool],
          not_finite: Dict[int, str], loss_on: str, sampled: bool, pair_seed: int,
          dev_metric: Optional[Dict[int, float]] = None) -> dict:
  """The `connectivity` block of summary.json: `pairs` [[a, b]], `alphas`, `barrier` (one per
  pair, null with its reason under `undefined` when a seed of the pair diverged), `basins` (lists
  of seeds, the finite ones), `threshold`, `failed_seeds_apart` (bool, or null with its reason),
  and the facts a reader needs to judge them."""
  finite_seeds = [int(s) for s in seeds if int(s) not in not_finite]
  found = basins(finite_seeds, pairs, barriers, threshold)
  out = {"seeds": [int(s) for s in seeds], "pairs": [[int(a), int(b)] for a, b in pairs],
         "pairs_sampled": bool(sampled), "pair_seed": int(pair_seed) if sampled else None,
         "alphas": [float(a) for a in alpha], "loss": loss_on,
         "barrier": [None if not math.isfinite(h) else float(h) for h in barriers],
         "threshold": float(threshold), "threshold_rule": rule, "basins": found,
         "failed": sorted(s for s in finite_seeds if failed.get(s))}
  valid = [h for h in barriers if math.isfinite(h)]
  finite.put(out, "largest_barrier", max(valid) if valid else finite.Undefined(
      "no measured pair of two seeds with finite parameters"))
  if dev_metric is not None:
    out["basin_dev_metric"] = [_mean([dev_metric.get(s) for s in b]) for b in found]
  why = {f"seed {s}": reason for s, reason in not_finite.items()}
  finite.put(out, "failed_seeds_apart", failed_apart(found, failed))
  if why:
    out.setdefault(finite.UNDEFINED, {}).update(why)
  return out


def _mean(values) -> Optional[float]:
  v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
  return float(np.mean(v)) if v else None


def matrix(seeds: Sequence[int], pairs, barriers) -> np.ndarray:
  """[seeds, seeds] barrier matrix (symmetric, 0 on the diagonal, NaN where not measured)."""
  index = {int(s): i for i, s in enumerate(seeds)}
  m = np.full((len(seeds), len(seeds)), np.nan)
  np.fill_diagonal(m, 0.0)
  for (a, b), h in zip(pairs, barriers):
    v = np.nan if h is None else float(h)
    m[index[int(a)], index[int(b)]] = m[index[int(b)], index[int(a)]] = v
  return m
