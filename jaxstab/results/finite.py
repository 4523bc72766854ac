"""The one policy for metric values that are not numbers, and for statistics the data do not
define (docs/analyses.md, "Non-finite values and undefined statistics").

A run whose metric is NaN or ±inf (a diverged run) has failed: it counts in the failed-run count
and that count's interval. Its metric is not a number, so every statistic of the metric (spread,
Levene, the permutation tests, the expected best of n, the bootstrap intervals, the init / data
decomposition) is computed over the finite values only, and says over how many (n of N). The
statistics in jaxstab.results.stats refuse a non-finite value (`check`, a ValueError naming the
function), because silently dropping it in one place and propagating it in another is how one
setting came to print `nan` beside finite intervals, and how a NaN made a permutation test
return its smallest p. A caller drops non-finite values explicitly, with `only`, which keeps
the count.

A statistic that is 0/0 or x/0 for the data at hand (Levene's test of two groups without spread,
a test with an empty side) is `Undefined(reason)`, never NaN and never a number that looks
significant. In the JSON summaries its value is null and the mapping that holds it says why in
its `undefined` entry (statistic name -> reason), which `put` writes and `shown` prints as
"undefined: <reason>". A null without a reason is a summary written before this policy: "—".
"""
import dataclasses
from typing import Callable, Mapping, Optional

import numpy as np

UNDEFINED = "undefined"   # the key of a statistics mapping that says why its nulls are null


@dataclasses.dataclass(frozen=True)
class Undefined:
  """A statistic the data do not define, and why (e.g. "rte_ours has 1 value; the test needs 2
  a side"). Returned in place of the number, so a caller cannot mistake it for one."""
  reason: str

  def __str__(self) -> str:
    return f"undefined: {self.reason}"


@dataclasses.dataclass(frozen=True)
class Finite:
  """The finite ones of a setting's N metric values (`values`, float64, in their order) and N
  (`total`): what every metric statistic is computed over, with the count it reports."""
  values: np.ndarray
  total: int

  @property
  def n(self) -> int:
    return int(self.values.size)

  @property
  def dropped(self) -> int:
    return self.total - self.n

  def note(self) -> str:
    """"4 of 5 finite" when a value was dropped, else "" (all N count)."""
    return f"{self.n} of {self.total} finite" if self.dropped else ""

  def none_left(self) -> str:
    """Why a statistic of no value is undefined."""
    return "no runs" if not self.total else f"none of the {self.total} runs has a finite value"


def only(values) -> Finite:
  """The one place a non-finite value is dropped: the finite `values` (NaN, ±inf and None
  left out) and how many there were."""
  v = np.asarray(values, np.float64).ravel()   # numpy reads None as NaN
  return Finite(v[np.isfinite(v)], int(v.size))


def check(values, function: str, name: str = "values") -> np.ndarray:
  """`values` as a flat float64 array; ValueError naming `function` and `name` when one is NaN
  or ±inf (the statistics do not guess what a diverged run's metric would have been)."""
  v = np.asarray(values, np.float64).ravel()
  bad = np.flatnonzero(~np.isfinite(v))
  if bad.size:
    raise ValueError(f"{function}: {name} holds {bad.size} non-finite value(s) (NaN or inf) at "
                     f"position(s) {bad[:5].tolist()}; drop them first with "
                     "jaxstab.results.finite.only (a diverged run counts as failed, not in the "
                     "metric statistics)")
  return v


def put(mapping: dict, key: str, value) -> None:
  """mapping[key] = value; for an Undefined, null there and the reason in mapping['undefined']."""
  if isinstance(value, Undefined):
    mapping[key] = None
    why = mapping.pop(UNDEFINED, {})   # kept after the statistics it explains
    why[key] = value.reason
    mapping[UNDEFINED] = why
  else:
    mapping[key] = value


def reason(mapping: Optional[Mapping], key: str) -> Optional[str]:
  """Why mapping[key] is null, when the mapping says so."""
  if not isinstance(mapping, Mapping) or mapping.get(key) is not None:
    return None
  why = mapping.get(UNDEFINED)
  return why.get(key) if isinstance(why, Mapping) else None


def shown(mapping: Optional[Mapping], key: str, fmt: Callable, missing: str = "—") -> str:
  """A table cell: fmt(mapping[key]), "undefined: <reason>", or `missing` for a null the
  mapping gives no reason for (a summary written before the policy; a field not computed)."""
  value = mapping.get(key) if isinstance(mapping, Mapping) else None
  if value is not None:
    return fmt(value)
  why = reason(mapping, key)
  return str(Undefined(why)) if why else missing
