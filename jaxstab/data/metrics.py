"""Dev metrics as GLUE defines them, and the majority baseline that defines a failed run.

Classification metrics score predicted class ids; the regression metrics (STS-B, or one's own
data with data.metric=pearson_spearman) score real-valued predictions. `score` takes the model's
logits for either: argmax over classes, or the single output of a regression head.
"""
import numpy as np

CLASSIFICATION_METRICS = ("accuracy", "acc_and_f1", "mcc", "f1")
# Every main metric is "higher is better" (best-of-run selection and is_failed rely on it);
# mse is reported beside the correlations but is never a main metric.
REGRESSION_METRICS = ("pearson_spearman", "pearson", "spearman")


def accuracy(preds, labels) -> float:
  return float(np.mean(np.asarray(preds) == np.asarray(labels)))


def f1(preds, labels) -> float:
  """F1 of the positive class (label 1), as GLUE scores MRPC."""
  p, y = np.asarray(preds), np.asarray(labels)
  tp = float(np.sum((p == 1) & (y == 1)))
  fp = float(np.sum((p == 1) & (y == 0)))
  fn = float(np.sum((p == 0) & (y == 1)))
  return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def mcc(preds, labels) -> float:
  """Matthews correlation; 0 when a row or column of the confusion matrix is empty."""
  p, y = np.asarray(preds), np.asarray(labels)
  tp = float(np.sum((p == 1) & (y == 1)))
  tn = float(np.sum((p == 0) & (y == 0)))
  fp = float(np.sum((p == 1) & (y == 0)))
  fn = float(np.sum((p == 0) & (y == 1)))
  denom = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
  return 0.0 if denom == 0 else float((tp * tn - fp * fn) / denom)


def pearson(preds, labels) -> float:
  """Pearson correlation (float64); 0 when either side is constant (undefined otherwise)."""
  p, y = np.asarray(preds, np.float64), np.asarray(labels, np.float64)
  if p.size < 2 or np.all(p == p[0]) or np.all(y == y[0]):
    return 0.0
  p, y = p - p.mean(), y - y.mean()
  denom = np.sqrt(np.sum(p * p) * np.sum(y * y))
  return float(np.sum(p * y) / denom) if np.isfinite(denom) and denom > 0 else 0.0


def ranks(x) -> np.ndarray:
  """1-based ranks, ties given their average rank (scipy.stats.rankdata's 'average')."""
  x = np.asarray(x, np.float64)
  order = np.argsort(x, kind="mergesort")
  xs = x[order]
  starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
  ends = np.r_[starts[1:], len(x)]
  out = np.empty(len(x), np.float64)
  out[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
  return out


def spearman(preds, labels) -> float:
  """Spearman's rank correlation: Pearson of the average ranks (ties as scipy handles them)."""
  return pearson(ranks(preds), ranks(labels))


def mse(preds, labels) -> float:
  d = np.asarray(preds, np.float64) - np.asarray(labels, np.float64)
  return float(np.mean(d * d))


def is_regression(metric: str) -> bool:
  return metric in REGRESSION_METRICS


def compute(metric: str, preds, labels) -> dict:
  """All metrics reported for a task whose main metric is `metric`; the main one under its name.
  `preds` are class ids, or real-valued predictions for a regression metric."""
  if is_regression(metric):
    p, s = pearson(preds, labels), spearman(preds, labels)
    return {"pearson_spearman": (p + s) / 2, "pearson": p, "spearman": s,
            "mse": mse(preds, labels)}
  acc = accuracy(preds, labels)
  if metric == "accuracy":
    return {"accuracy": acc}
  if metric == "acc_and_f1":
    f = f1(preds, labels)
    return {"accuracy": acc, "f1": f, "acc_and_f1": (acc + f) / 2}
  if metric == "mcc":
    return {"mcc": mcc(preds, labels), "accuracy": acc}
  if metric == "f1":  # the user's own data (data.metric=f1): F1 of class 1
    return {"f1": f1(preds, labels), "accuracy": acc}
  raise ValueError(f"unknown metric {metric!r}; choose one of "
                   f"{', '.join(CLASSIFICATION_METRICS + REGRESSION_METRICS)}")


def score(metric: str, logits, labels) -> dict:
  """`compute` from a model's logits [n, C]: the argmax class for a classification metric,
  the single output logits[:, 0] for a regression one."""
  logits = np.asarray(logits)
  preds = logits[..., 0] if is_regression(metric) else logits.argmax(-1)
  return compute(metric, preds, labels)


def majority(metric: str, labels) -> dict:
  """The baseline a run must beat. Classification: the classifier that always predicts the
  most frequent dev label. Regression: the constant predictor of the mean dev label, whose
  correlations are 0 by definition (a constant has none) and whose mse is the dev variance;
  so a regression run fails when its final dev correlation is <= 0."""
  labels = np.asarray(labels)
  if is_regression(metric):
    return compute(metric, np.full(labels.shape, np.mean(labels, dtype=np.float64)), labels)
  most = np.bincount(labels).argmax()
  return compute(metric, np.full_like(labels, most), labels)


def is_failed(main_value: float, majority_value: float) -> bool:
  """The paper's failed run: final dev metric no better than the majority classifier (for
  regression: a correlation <= 0, see `majority`). A value that is not a number (NaN, inf: a
  diverged run) is no better either, so it has failed; without this, NaN <= x being false made a
  diverged run's NaN metric count as a success."""
  return bool(not np.isfinite(main_value) or main_value <= majority_value + 1e-12)
