"""jaxstab.data.tasks and jaxstab.data.metrics."""
import numpy as np
import pytest

from jaxstab.data import metrics, tasks
from jaxstab.infra.errors import ConfigError


# ---------------------------------------------------------------- tasks

def test_get_task_known_and_normalised():
  rte = tasks.get_task("rte")
  assert rte.glue_dir == "RTE" and rte.metric == "accuracy" and rte.num_labels == 2
  assert rte.labels.index("entailment") == 0
  assert tasks.get_task("MRPC").metric == "acc_and_f1"
  assert tasks.get_task("CoLA").text_b is None and tasks.get_task("cola").header is False
  assert tasks.get_task("SST-2") is tasks.TASKS["sst2"]


def test_get_task_unknown_lists_choices():
  with pytest.raises(ConfigError) as e:
    tasks.get_task("mnli-mm")
  msg = str(e.value)
  assert "mnli-mm" in msg
  for name in tasks.TASKS:
    assert name in msg


# ---------------------------------------------------------------- metrics

# preds/labels: tp=2 (idx 0,1), fn=1 (idx 2), fp=1 (idx 3), tn=2 (idx 4,5)
PREDS = [1, 1, 0, 1, 0, 0]
LABELS = [1, 1, 1, 0, 0, 0]


def test_hand_computed_small_example():
  assert metrics.accuracy(PREDS, LABELS) == pytest.approx(4 / 6)
  assert metrics.f1(PREDS, LABELS) == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
  # (tp*tn - fp*fn) / sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn)) = (4 - 1) / sqrt(3*3*3*3)
  assert metrics.mcc(PREDS, LABELS) == pytest.approx(3 / 9)


def test_degenerate_cases():
  y = [0, 1, 1, 0]
  assert metrics.mcc(y, y) == pytest.approx(1.0)
  assert metrics.mcc([1 - v for v in y], y) == pytest.approx(-1.0)
  assert metrics.mcc([1, 1, 1, 1], y) == 0.0   # constant prediction: empty column
  assert metrics.f1([0, 0, 0, 0], y) == 0.0    # no positive prediction
  assert metrics.f1(y, y) == pytest.approx(1.0)
  assert metrics.accuracy([1 - v for v in y], y) == 0.0


@pytest.mark.parametrize("seed", range(5))
def test_against_independent_computations(seed):
  rng = np.random.default_rng(seed)
  y = rng.integers(0, 2, 200)
  p = np.where(rng.random(200) < 0.7, y, rng.integers(0, 2, 200))
  # MCC of two binary vectors is their Pearson correlation.
  assert metrics.mcc(p, y) == pytest.approx(np.corrcoef(p, y)[0, 1], rel=1e-9)
  precision = np.sum(p & y) / np.sum(p)
  recall = np.sum(p & y) / np.sum(y)
  assert metrics.f1(p, y) == pytest.approx(2 * precision * recall / (precision + recall))
  assert metrics.accuracy(p, y) == pytest.approx(np.count_nonzero(p == y) / len(y))


def test_compute_reports_per_metric():
  out = metrics.compute("acc_and_f1", PREDS, LABELS)
  assert out["acc_and_f1"] == pytest.approx((out["accuracy"] + out["f1"]) / 2)
  assert set(metrics.compute("mcc", PREDS, LABELS)) == {"mcc", "accuracy"}
  assert set(metrics.compute("accuracy", PREDS, LABELS)) == {"accuracy"}


def test_majority():
  labels = np.array([1, 1, 1, 0, 0])
  maj = metrics.majority("acc_and_f1", labels)
  assert maj["accuracy"] == pytest.approx(3 / 5)
  assert maj["f1"] == pytest.approx(2 * 3 / (2 * 3 + 2))
  # majority class 0: no positive predictions, F1 = 0
  assert metrics.majority("acc_and_f1", 1 - labels)["f1"] == 0.0
  assert metrics.majority("mcc", labels)["mcc"] == 0.0
  assert metrics.majority("accuracy", np.array([0, 2, 2, 1]))["accuracy"] == pytest.approx(0.5)


def test_is_failed():
  assert metrics.is_failed(0.5, 0.527)
  assert metrics.is_failed(0.527, 0.527)  # equal to the majority counts as failed
  assert not metrics.is_failed(0.53, 0.527)
  assert metrics.is_failed(0.0, 0.0) and not metrics.is_failed(0.01, 0.0)
  assert metrics.is_failed(-0.02, 0.0)
