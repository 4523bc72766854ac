"""Dev metrics as GLUE defines them, and the majority-class baseline that defines a failed run."""
import numpy as np


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


def compute(metric: str, preds, labels) -> dict:
  """All metrics reported for a task whose main metric is `metric`; the main one under its name."""
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
  raise ValueError(f"unknown metric {metric!r}; choose accuracy, acc_and_f1, mcc or f1")


def majority(metric: str, labels) -> dict:
  """Metrics of the classifier that always predicts the most frequent dev label."""
  labels = np.asarray(labels)
  most = np.bincount(labels).argmax()
  return compute(metric, np.full_like(labels, most), labels)


def is_failed(main_value: float, majority_value: float) -> bool:
  """The paper's failed run: final dev metric no better than the majority classifier."""
  return bool(main_value <= majority_value + 1e-12)
