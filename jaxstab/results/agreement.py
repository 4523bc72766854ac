"""How much the seeds of one setting disagree on the dev set, from their end-of-training outputs
(issue #31, part 1; Du & Nguyen, ACL 2023, "Measuring the Instability of Fine-Tuning").

The std of a dev metric over seeds is one number; two seeds with the same accuracy can still
label different examples. These measures look at the predictions themselves. numpy only.

Inputs: `outputs` [seeds, examples, classes], logits (`kind="logits"`, the default) or
probabilities (`kind="probs"`); for regression [seeds, examples] (or [seeds, examples, 1]).
Every measure takes `seeds`, a boolean mask over the seed axis or a list of indices, to compute
it over a subset (the successful seeds: failed seeds that all predict the majority class agree
perfectly and would make a setting look stable). A NaN or inf output is refused (ValueError);
`jaxstab.results.instability.instability` drops a diverged seed first and says so. A statistic
the data do not define is `finite.Undefined(reason)` (jaxstab.results.finite).
"""
import itertools

import numpy as np

from jaxstab.results import finite
from jaxstab.results.finite import Undefined

KINDS = ("logits", "probs")
QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


def select(outputs, seeds=None, name: str = "outputs") -> np.ndarray:
  """outputs[seeds] as float64: `seeds` None (all), a boolean mask of len(outputs), or indices."""
  x = np.asarray(outputs, np.float64)
  if seeds is None:
    return x
  s = np.asarray(seeds)
  if s.dtype == bool:
    if s.shape != (x.shape[0],):
      raise ValueError(f"seeds: a boolean mask needs one entry per seed ({x.shape[0]} in "
                       f"{name}), got shape {s.shape}")
    return x[s]
  if s.size and (not np.issubdtype(s.dtype, np.integer) or s.min() < -x.shape[0]
                 or s.max() >= x.shape[0]):
    raise ValueError(f"seeds: indices must be integers in [0, {x.shape[0]}) for {name}, got "
                     f"{s.tolist()}")
  return x[s.astype(int).ravel()]


def _classes(outputs, seeds, function: str) -> np.ndarray:
  x = select(outputs, seeds)
  if x.ndim != 3 or x.shape[2] < 2:
    raise ValueError(f"{function}: outputs must be [seeds, examples, classes] with at least 2 "
                     f"classes, got shape {x.shape}")
  finite.check(x, function, "outputs")
  return x


def probabilities(outputs, kind: str = "logits") -> np.ndarray:
  """Softmax of logits over the last axis (shifted by the max, so large logits do not overflow),
  or the probabilities as given (each row must sum to 1 within 1e-6)."""
  if kind not in KINDS:
    raise ValueError(f"kind: one of {KINDS}, got {kind!r}")
  x = np.asarray(outputs, np.float64)
  if kind == "logits":
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)
  if np.any(x < 0) or np.max(np.abs(x.sum(axis=-1) - 1.0), initial=0.0) > 1e-6:
    raise ValueError("outputs: kind='probs' needs non-negative rows that sum to 1")
  return x


def predictions(outputs, seeds=None) -> np.ndarray:
  """The predicted label of every seed and example, [seeds, examples] (argmax; the same from
  logits and from their softmax)."""
  return np.argmax(_classes(outputs, seeds, "agreement.predictions"), axis=-1)


def _too_few(n: int) -> Undefined:
  return Undefined(f"{n} seed{'' if n == 1 else 's'}; a comparison between seeds needs 2")


def disagreement(outputs, seeds=None):
  """Mean over the pairs of seeds of the share of examples they label differently (1 minus the
  pairwise agreement; Du & Nguyen 2023). 0: every seed gives every example one label."""
  pred = np.argmax(_classes(outputs, seeds, "agreement.disagreement"), axis=-1)
  if pred.shape[0] < 2:
    return _too_few(pred.shape[0])
  return float(np.mean([np.mean(pred[i] != pred[j])
                        for i, j in itertools.combinations(range(pred.shape[0]), 2)]))


def pairwise_disagreement(outputs) -> np.ndarray:
  """[seeds, seeds]: the share of examples each two seeds label differently (0 on the diagonal),
  NaN in the rows and columns of a seed with a non-finite output (a diverged seed has no
  labels). The matrix the report draws; `disagreement` is the mean of its upper triangle over
  the finite seeds."""
  x = np.asarray(outputs, np.float64)
  if x.ndim != 3 or x.shape[2] < 2:
    raise ValueError("agreement.pairwise_disagreement: outputs must be [seeds, examples, classes] "
                     f"with at least 2 classes, got shape {x.shape}")
  ok = np.all(np.isfinite(x.reshape(x.shape[0], -1)), axis=1)
  pred = np.argmax(np.where(np.isfinite(x), x, 0.0), axis=-1)
  out = np.mean(pred[:, None, :] != pred[None, :, :], axis=-1)
  out[~ok, :] = np.nan
  out[:, ~ok] = np.nan
  return out


def js_divergence(p, q) -> np.ndarray:
  """Jensen-Shannon divergence in nats between probability rows p and q (last axis):
  (KL(p||m) + KL(q||m)) / 2 with m = (p + q) / 2 and 0 log 0 = 0. Bounded by log 2. This is the
  divergence itself; scipy.spatial.distance.jensenshannon returns its square root."""
  p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
  m = (p + q) / 2

  def kl(a):
    with np.errstate(divide="ignore", invalid="ignore"):
      t = np.where(a > 0, a * np.log(np.where(a > 0, a, 1.0) / np.where(m > 0, m, 1.0)), 0.0)
    return t.sum(axis=-1)
  return np.maximum((kl(p) + kl(q)) / 2, 0.0)


def jsd(outputs, kind: str = "logits", seeds=None):
  """Mean over pairs of seeds and examples of the JSD (nats) of their softmax outputs: unlike
  disagreement it sees two seeds that agree on the label with different confidence."""
  x = _classes(outputs, seeds, "agreement.jsd")
  if x.shape[0] < 2:
    return _too_few(x.shape[0])
  p = probabilities(x, kind)
  return float(np.mean([js_divergence(p[i], p[j]).mean()
                        for i, j in itertools.combinations(range(p.shape[0]), 2)]))


def counts(pred: np.ndarray, classes: int) -> np.ndarray:
  """[examples, classes]: how many seeds gave each example each label (pred [seeds, examples])."""
  table = np.zeros((pred.shape[1], classes), np.int64)
  for row in pred:
    table[np.arange(pred.shape[1]), row] += 1
  return table


def fleiss_kappa(outputs, seeds=None):
  """Fleiss' kappa (Fleiss 1971) with the seeds as raters and the dev examples as subjects, any
  number of classes: kappa = (P_bar - P_e) / (1 - P_e), P_bar the mean over examples of the share
  of agreeing seed pairs, P_e the agreement expected from the pooled label shares. 1: the seeds
  agree on every example; 0: no more than chance; below 0: less. Undefined (0/0) when every seed
  predicts one class for every example (P_bar = P_e = 1), as seeds that all failed to the
  majority class do: perfect agreement with nothing to agree about."""
  x = _classes(outputs, seeds, "agreement.fleiss_kappa")
  n = x.shape[0]
  if n < 2:
    return _too_few(n)
  table = counts(np.argmax(x, axis=-1), x.shape[2])
  p_bar = float(np.mean((np.sum(table * table, axis=1) - n) / (n * (n - 1))))
  share = table.sum(axis=0) / table.sum()
  p_e = float(np.sum(share * share))
  if np.count_nonzero(share) <= 1:
    label = int(np.argmax(share))
    return Undefined(f"every one of the {n} seeds predicts class {label} for every example: "
                     "observed and chance agreement are both 1 (0/0)")
  return (p_bar - p_e) / (1.0 - p_e)


def consistency(outputs, seeds=None):
  """Per example, the share of seeds that give its majority label, [examples] (1/classes..1)."""
  x = _classes(outputs, seeds, "agreement.consistency")
  if x.shape[0] < 1:
    raise ValueError("agreement.consistency: outputs select no seed")
  return counts(np.argmax(x, axis=-1), x.shape[2]).max(axis=1) / x.shape[0]


def consistency_summary(outputs, seeds=None) -> dict:
  """The distribution of `consistency` over examples: mean, min, quantiles (10/25/50/75/90%,
  linear interpolation) and the share of examples on which every seed agrees (`unanimous`)."""
  x = _classes(outputs, seeds, "agreement.consistency_summary")
  if x.shape[0] < 2:
    why, out = _too_few(x.shape[0]), {}
    for k in ("mean", "min", "unanimous"):
      finite.put(out, k, why)
    return out
  c = consistency(x)
  return {"mean": float(c.mean()), "min": float(c.min()),
          "quantiles": {f"{q:g}": float(v) for q, v in zip(QUANTILES, np.quantile(c, QUANTILES))},
          "unanimous": float(np.mean(c == 1.0))}


# ---------------------------------------------------------------- regression (STS-B)
def _values(outputs, seeds, function: str) -> np.ndarray:
  x = select(outputs, seeds)
  if x.ndim == 3 and x.shape[2] == 1:
    x = x[..., 0]
  if x.ndim != 2:
    raise ValueError(f"{function}: outputs must be [seeds, examples] (or [seeds, examples, 1]) "
                     f"for regression, got shape {x.shape}")
  finite.check(x, function, "outputs")
  return x


def mean_squared_difference(outputs, seeds=None):
  """Mean over pairs of seeds and examples of (y_i - y_j)^2: the regression analogue of
  disagreement, in the squared units of the target (0 to 25 for STS-B's 0..5 scores)."""
  y = _values(outputs, seeds, "agreement.mean_squared_difference")
  if y.shape[0] < 2:
    return _too_few(y.shape[0])
  return float(np.mean([np.mean((y[i] - y[j]) ** 2)
                        for i, j in itertools.combinations(range(y.shape[0]), 2)]))


def icc(outputs, seeds=None):
  """ICC(2,1) of Shrout & Fleiss (1979): two-way random effects, absolute agreement, one rater,
  with the examples as targets and the seeds as raters. From the two-way ANOVA without
  replication (n examples, k seeds):
      ICC(2,1) = (MS_ex - MS_err) / (MS_ex + (k-1) MS_err + k (MS_seed - MS_err) / n).
  Why this form: the seeds are a random draw from every seed one could have run (random, not the
  fixed raters of ICC(3,1)), and a seed that shifts all its predictions by a constant predicts
  different numbers, which ICC(3,1) (consistency) would not count; one rater because the
  question is how far a single fine-tuned model can be trusted, not an average of k. 1: seeds
  agree exactly; 0 or below: the seeds differ as much as the examples. Undefined when nothing
  varies (every prediction equal: 0/0)."""
  y = _values(outputs, seeds, "agreement.icc")
  k, n = y.shape
  if k < 2:
    return _too_few(k)
  if n < 2:
    return Undefined(f"{n} example; the ICC needs 2")
  grand, ex, sd = y.mean(), y.mean(axis=0), y.mean(axis=1)
  ms_ex = k * np.sum((ex - grand) ** 2) / (n - 1)
  ms_seed = n * np.sum((sd - grand) ** 2) / (k - 1)
  ms_err = np.sum((y - ex[None, :] - sd[:, None] + grand) ** 2) / ((n - 1) * (k - 1))
  # den >= k ms_seed / n + ms_ex >= 0 for n >= 2; 0 only when every prediction is equal
  den = ms_ex + (k - 1) * ms_err + k * (ms_seed - ms_err) / n
  if np.ptp(y) == 0.0 or den <= 0.0:
    return Undefined("every seed predicts the same value for every example (0/0)")
  return float((ms_ex - ms_err) / den)
