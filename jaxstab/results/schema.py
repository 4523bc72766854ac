"""The typed records of a workdir's summary.json: one run (RunRecord), one setting
(SettingSummary, with its EarlyStop when it stopped runs early) and a whole study or plain run
(StudySummary). jaxstab.results.records reads and writes them; everything else uses their
attributes instead of looking up string keys in the JSON.

They are frozen dataclasses, because a summary is a finished result: code that reads it must not
change it by accident, and a typo in a field name fails at once instead of yielding a silent
None. Each field is a key that study/merge.py or study/studies.py writes; a field older
summaries lack defaults to None (or empty), so every committed summary still loads, and which
fields a reader truly needs is checked by the reader, where the error can name the file.

Nothing is lost in a read/write round trip: keys a record does not know go to `extra`, and
`key_order` remembers which keys the file had and in what order. to_json() then writes back
exactly the keys that were read, in the same order (a key an older summary never had is not
invented as null), and a summary the writers build as a dict comes out byte for byte as before.

The statistics computed from the runs (spreads, bootstrap intervals, the expected best of n,
the decomposition, the failure forecast, Levene's table) stay JSON mappings: jaxstab.results.stats
and .forecast compute them on the JSON form and own their shape; typing them here would copy
those schemas a second time.
"""
import dataclasses
import json
import math
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

_INTERNAL = ("extra", "key_order")


def num(x) -> float:
  """A JSON number as a float; None, strings and the like become NaN."""
  try:
    return float(x)
  except (TypeError, ValueError):
    return math.nan


def _extra():
  return dataclasses.field(default_factory=dict)


def _order():
  return dataclasses.field(default=(), compare=False, repr=False)


def _tuple(v):
  if isinstance(v, (str, bytes, Mapping)) or not hasattr(v, "__iter__"):
    raise TypeError(f"expected a list, got {type(v).__name__}")
  return tuple(v)


def _mapping(v):
  if not isinstance(v, Mapping):
    raise TypeError(f"expected a JSON object, got {type(v).__name__}")
  return v


class _Json:
  """from_json / to_json for a frozen dataclass whose fields are JSON keys.

  _CONVERT maps a field to the function that turns its JSON value into the typed one, _EMIT the
  other way (both skip None); fields without an entry are kept as JSON gives them."""
  _CONVERT: Dict[str, Callable] = {}
  _EMIT: Dict[str, Callable] = {}

  @classmethod
  def _fields(cls):
    return [f for f in dataclasses.fields(cls) if f.name not in _INTERNAL]

  @classmethod
  def from_json(cls, data: Mapping[str, Any]):
    """The record of one JSON object; TypeError / ValueError when its shape is wrong."""
    data = _mapping(data)
    names = {f.name for f in cls._fields()}
    kwargs = {}
    for k, v in data.items():
      if k in names:
        try:
          kwargs[k] = cls._CONVERT[k](v) if k in cls._CONVERT and v is not None else v
        except (TypeError, ValueError, AttributeError) as e:
          raise ValueError(f"`{k}`: {e}") from e
    extra = {k: v for k, v in data.items() if k not in names}
    return cls(**kwargs, extra=extra, key_order=tuple(data))

  def to_json(self) -> dict:
    """The JSON object: the keys read, in their order, then any field set since (in field
    order; one still at its default is left out), then new `extra` keys."""
    fields = {f.name: f for f in self._fields()}
    order = list(self.key_order)
    order += [n for n in fields if n not in self.key_order]
    order += [k for k in self.extra if k not in order]
    out = {}
    for k in order:
      if k in fields:
        v = getattr(self, k)
        if k not in self.key_order and v == _default(fields[k]):
          continue
        out[k] = self._EMIT[k](v) if k in self._EMIT and v is not None else v
      elif k in self.extra:
        out[k] = self.extra[k]
    return out


def _default(f):
  return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


@dataclasses.dataclass(frozen=True)
class RunRecord(_Json):
  """One run's result, an entry of a setting's `runs` (or `stopped_runs`)."""
  seed: Optional[int] = None             # the run number (1000 x init + data for a grid run)
  final: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # last dev evaluation
  best: Mapping[str, Any] = dataclasses.field(default_factory=dict)   # best one by the metric
  final_train_loss: Optional[float] = None
  init_seed: Optional[int] = None        # with data_seeds only
  data_seed: Optional[int] = None
  stopped_at: Optional[int] = None       # stopped by train.early_stop at this step
  diverged_at: Optional[int] = None      # first step with a non-finite loss or gradient
  failed: Optional[bool] = None          # None: not judged (stopped early) or an old summary
  extra: Mapping[str, Any] = _extra()
  key_order: Tuple[str, ...] = _order()

  _CONVERT = {"final": _mapping, "best": _mapping}

  def value(self, which: str, metric: str) -> float:
    """The `metric` of the `final` or `best` evaluation; NaN when absent."""
    return num((getattr(self, which) or {}).get(metric))


@dataclasses.dataclass(frozen=True)
class EarlyStop(_Json):
  """A setting's train.early_stop record: where the runs were ranked, how, and what it saved."""
  at: Optional[float] = None             # fraction of the total steps
  keep: Optional[int] = None
  by: Optional[str] = None               # "dev" or "probe"
  step: Optional[int] = None             # the stop step
  started: Optional[int] = None
  continued: Optional[int] = None
  scores: Mapping[str, Optional[float]] = dataclasses.field(default_factory=dict)
  seed_steps: Optional[int] = None
  seed_steps_without: Optional[int] = None
  fraction_of_compute: Optional[float] = None
  extra: Mapping[str, Any] = _extra()
  key_order: Tuple[str, ...] = _order()


def _runs(v):
  return tuple(RunRecord.from_json(r) for r in _tuple(v))


def _emit_runs(v):
  return [r.to_json() for r in v]


@dataclasses.dataclass(frozen=True)
class SettingSummary(_Json):
  """One setting's summary: its runs and the statistics over them (a setting folder's
  summary.json, or an entry of a study's `settings`, which adds `name` and `recipe`)."""
  task: Optional[str] = None
  metric: Optional[str] = None           # the task's main dev metric
  majority: Mapping[str, float] = dataclasses.field(default_factory=dict)
  setting: Optional[str] = None          # the recipe's preset name (config `setting`)
  select: Optional[str] = None           # "final", or "best": the best dev checkpoint
  model: Optional[str] = None
  matmul_precision: Optional[str] = None  # model.matmul_precision; None: a summary written
                                          # before the key, whose runs ran at "default"
  peft: Optional[Mapping[str, Any]] = None  # peft.method and its keys; None: written before PEFT
  trainable_params: Optional[int] = None    # parameters each seed trained (engine/peft.py)
  total_steps: Optional[int] = None
  seeds: Tuple[int, ...] = ()            # every run started, stopped ones too
  failed_runs: Optional[int] = None
  final_spread: Optional[Mapping[str, Any]] = None
  best_spread: Optional[Mapping[str, Any]] = None
  reported_spread: Optional[Mapping[str, Any]] = None
  expected_max: Optional[Tuple[float, ...]] = None
  expected_max_std: Optional[Tuple[float, ...]] = None
  ci: Optional[Mapping[str, Any]] = None
  runs: Tuple[RunRecord, ...] = ()       # the runs trained to the end
  early_stop: Optional[EarlyStop] = None
  stopped_runs: Tuple[RunRecord, ...] = ()
  decomposition: Optional[Mapping[str, Any]] = None   # init vs data order (data_seeds)
  forecast: Optional[Mapping[str, Any]] = None        # forecast.evaluate's result
  # How K (seeds per compiled step) was chosen and halved: the workdir's seeds_per_step.json.
  seeds_per_step: Optional[Mapping[str, Any]] = None
  # How much the seeds' end-of-training dev predictions disagree (jaxstab.results.instability;
  # None: a summary written before it, or null with its reason under `undefined`).
  instability: Optional[Mapping[str, Any]] = None
  # Linear connectivity between the seeds (barriers, basins): jaxstab.results.connectivity,
  # added afterwards by python -m jaxstab.connectivity; None: not computed.
  connectivity: Optional[Mapping[str, Any]] = None
  name: Optional[str] = None             # in a study's list: the setting's folder
  recipe: Optional[str] = None
  extra: Mapping[str, Any] = _extra()
  key_order: Tuple[str, ...] = _order()

  _CONVERT = {"majority": _mapping, "seeds": _tuple, "expected_max": _tuple,
              "expected_max_std": _tuple, "runs": _runs, "stopped_runs": _runs,
              "early_stop": EarlyStop.from_json, "instability": _mapping,
              "connectivity": _mapping, "peft": _mapping}
  _EMIT = {"seeds": list, "expected_max": list, "expected_max_std": list, "runs": _emit_runs,
           "stopped_runs": _emit_runs, "early_stop": lambda es: es.to_json()}


STUDY_KEYS = ("settings", "levene", "table", "errors")


@dataclasses.dataclass(frozen=True)
class StudySummary:
  """A workdir's summary.json: a study of several settings (each in workdir/<name>/), or, with
  `plain`, a workdir that is itself the one setting. A plain run's file is its setting's summary
  with the study's fields added (and the setting listed again under `settings`: `listed`); a
  setting folder's own file, written by merge.py, has none of them (`bare`)."""
  settings: Tuple[SettingSummary, ...]
  plain: bool = False
  listed: bool = True                    # a plain file repeats its setting under `settings`
  levene: Optional[Tuple[Mapping[str, Any], ...]] = None
  table: Optional[str] = None
  errors: Optional[Tuple[Mapping[str, Any], ...]] = None
  extra: Mapping[str, Any] = _extra()
  key_order: Tuple[str, ...] = _order()

  @property
  def bare(self) -> bool:
    """A setting folder's own summary (merge.py's): its one setting, not listed again under
    `settings` as a plain run's summary (studies.py's) lists it."""
    return self.plain and not self.listed

  @classmethod
  def from_json(cls, data: Mapping[str, Any]) -> "StudySummary":
    data = _mapping(data)
    study = {k: data[k] for k in STUDY_KEYS if k in data}
    if "runs" in data:  # the workdir is the setting; its `settings` repeats it
      setting = SettingSummary.from_json({k: v for k, v in data.items() if k not in STUDY_KEYS})
      settings, extra = (setting,), {}
      if "settings" in data and not _same(data["settings"], [setting.to_json()]):
        extra["settings"] = data["settings"]  # a list that differs is kept as it was
    else:
      settings = tuple(SettingSummary.from_json(e) for e in _tuple(study.get("settings", ())))
      extra = {k: v for k, v in data.items() if k not in STUDY_KEYS}
    return cls(settings=settings, plain="runs" in data, listed="settings" in data,
               levene=_tuple(study["levene"]) if study.get("levene") is not None else None,
               table=study.get("table"),
               errors=_tuple(study["errors"]) if study.get("errors") is not None else None,
               extra=extra, key_order=tuple(data))

  def to_json(self) -> dict:
    """The summary.json object, keys in the order read (a study's: settings, levene, table,
    errors; a plain run's: its setting's, then those)."""
    own = {}
    if not self.plain or self.listed:
      own["settings"] = self.extra.get("settings", [s.to_json() for s in self.settings])
    for k in ("levene", "table", "errors"):
      v = getattr(self, k)
      if v is not None or k in self.key_order:
        own[k] = v if v is None or k == "table" else list(v)
    own.update({k: v for k, v in self.extra.items() if k not in own})
    setting = self.settings[0].to_json() if self.plain else {}
    order = [k for k in self.key_order if k in own or k in setting]
    order += [k for k in setting if k not in order] + [k for k in own if k not in order]
    return {k: own[k] if k in own else setting[k] for k in order}


def _same(a, b) -> bool:
  """Equal as JSON text (NaN equals NaN there, and the key order counts)."""
  return json.dumps(a, default=repr) == json.dumps(b, default=repr)
