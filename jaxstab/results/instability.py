"""The `instability` block of a setting's summary.json (issue #31, "Interfaces"): how much its
seeds disagree on the dev set, and where their representations part, beside the std of the
metric. Built from jaxstab.results.agreement (predictions) and jaxstab.results.representations
(layers). JSON-ready: plain floats, lists and dicts; an undefined value is null with its reason
under the block's `undefined` entry (jaxstab.results.finite).
"""
import numpy as np

from jaxstab.results import agreement, finite
from jaxstab.results import representations as layers
from jaxstab.results.finite import Undefined

TASK_TYPES = ("classification", "regression")


def _finite_seeds(outputs: np.ndarray) -> np.ndarray:
  """Boolean mask of the seeds whose every output is finite (a diverged seed's logits are NaN)."""
  return np.all(np.isfinite(outputs.reshape(outputs.shape[0], -1)), axis=1)


def _mask(seeds, n: int, name: str) -> np.ndarray:
  m = np.zeros(n, bool)
  if seeds is None:
    return ~m
  s = np.asarray(seeds)
  if s.dtype == bool:
    if s.shape != (n,):
      raise ValueError(f"{name}: a boolean mask needs one entry per seed ({n}), got shape {s.shape}")
    return s.copy()
  if s.size and (not np.issubdtype(s.dtype, np.integer) or s.min() < 0 or s.max() >= n):
    raise ValueError(f"{name}: indices must be integers in [0, {n}), got {s.tolist()}")
  m[s.astype(int).ravel()] = True
  return m


def predictions_block(outputs, kind: str = "logits", seeds=None,
                      task_type: str = "classification") -> dict:
  """The prediction measures over the seeds `seeds` selects (all by default) whose outputs are
  finite: classification `disagreement`, `jsd` (nats), `fleiss_kappa`, `consistency_mean` and
  `consistency` (its distribution); regression `mean_squared_difference` and `icc` (ICC(2,1)).
  `seeds` counts the seeds used and `of` those selected."""
  if task_type not in TASK_TYPES:
    raise ValueError(f"task_type: one of {TASK_TYPES}, got {task_type!r}")
  x = np.asarray(outputs, np.float64)
  if x.ndim not in (2, 3) or x.shape[0] < 1:
    raise ValueError(f"outputs must be [seeds, examples(, outputs)], got shape {x.shape}")
  chosen = _mask(seeds, x.shape[0], "seeds")
  use = chosen & _finite_seeds(x)
  out = {"seeds": int(use.sum()), "of": int(chosen.sum())}
  if out["seeds"] < out["of"]:
    out["note"] = f"{out['seeds']} of {out['of']} seeds have finite outputs"
  if task_type == "regression":
    finite.put(out, "mean_squared_difference", agreement.mean_squared_difference(x, use))
    finite.put(out, "icc", agreement.icc(x, use))
    out["icc_form"] = "ICC(2,1)"
    return out
  finite.put(out, "disagreement", agreement.disagreement(x, use))
  finite.put(out, "jsd", agreement.jsd(x, kind, use))
  finite.put(out, "fleiss_kappa", agreement.fleiss_kappa(x, use))
  summary = agreement.consistency_summary(x, use)
  finite.put(out, "consistency_mean",
             summary["mean"] if summary.get("mean") is not None
             else Undefined(finite.reason(summary, "mean")))
  out["consistency"] = summary
  return out


def instability(outputs, kind: str = "logits", successful=None, representations=None,
                task_type: str = "classification", cka_estimator: str = "unbiased") -> dict:
  """The `instability` dict of a setting: the prediction measures over every seed with finite
  outputs (`predictions_block`), the same over the successful ones under `successful`
  (`successful`: a boolean mask or indices over the seeds; None leaves it out), and, when
  `representations` [seeds, layers, examples, dims] is given, `cka` (estimator
  `cka_estimator`), `procrustes` and `svcca` as [layers][seeds][seeds] lists (null where
  undefined; the reasons under `undefined`, keyed "cka: layer l, seeds i-j")."""
  out = predictions_block(outputs, kind, None, task_type)
  if successful is not None:
    out["successful"] = predictions_block(outputs, kind, successful, task_type)
  if representations is not None:
    r = np.asarray(representations)
    if r.ndim != 4 or r.shape[0] != np.asarray(outputs).shape[0]:
      raise ValueError("representations must be [seeds, layers, examples, dims] with the "
                       f"seeds of outputs ({np.asarray(outputs).shape[0]}), got shape {r.shape}")
    why = {}
    ok = np.asarray([np.isfinite(r[s]).all() for s in range(r.shape[0])])
    for s in np.flatnonzero(~ok):  # a diverged seed: NaN, or past float16's range when stored
      why[f"seed {s}"] = ("its representations hold NaN or inf (a diverged run): every measure "
                          "with it is undefined")
    for measure in layers.MEASURES:
      out[measure], cells = _over_finite_seeds(r, ok, measure, cka_estimator)
      why.update({f"{measure}: {where}": reason
                  for where, reason in _by_layer(cells, int(ok.sum())).items()})
    out["cka_estimator"] = cka_estimator
    out["svcca_cap"] = layers.svcca_cap(r.shape[2])
    if why:
      out.setdefault(finite.UNDEFINED, {}).update(why)
  return out


def _over_finite_seeds(r: np.ndarray, ok: np.ndarray, measure: str, estimator: str):
  """layers.matrices over the seeds whose representations are finite (`ok`), spread back to
  every seed: rows and columns of the others are null (their reason is the block's "seed i")."""
  index = np.flatnonzero(ok)
  if len(index) == len(ok):
    return layers.matrices(r, measure, estimator)
  if len(index) == 0:
    sub, cells = [[[]] for _ in range(r.shape[1])], {}
  else:
    sub, cells = layers.matrices(r[index], measure, estimator)
  full = [[[None] * len(ok) for _ in ok] for _ in range(r.shape[1])]
  for layer, m in enumerate(sub):
    for a, i in enumerate(index):
      for b, j in enumerate(index):
        full[layer][i][j] = m[a][b]
  renamed = {}
  for where, reason in cells.items():  # "layer l, seeds a-b" in the subset's numbering
    head, pair = where.rsplit("seeds ", 1)
    a, b = (int(x) for x in pair.split("-"))
    renamed[f"{head}seeds {index[a]}-{index[b]}"] = reason
  return full, renamed


def _by_layer(cells: dict, seeds: int) -> dict:
  """The reasons of undefined cells ("layer l, seeds i-j"), one entry "layer l, every pair" for
  a layer whose every pair is undefined for one reason: the first token after the embeddings
  is the same vector for every example ([CLS] at position 0), so that layer has no measure
  at all, and 300 identical lines for 25 seeds would hide the reasons that differ."""
  pairs = seeds * (seeds - 1) // 2
  layers: dict = {}
  for where, reason in cells.items():
    layers.setdefault(where.split(", seeds ")[0], []).append((where, reason))
  out = {}
  for layer, found in layers.items():
    if len(found) == pairs and len({r for _, r in found}) == 1:
      out[f"{layer}, every pair"] = found[0][1]
    else:
      out.update(found)
  return out
