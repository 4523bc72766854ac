"""Names along a parameter's path in a pytree: the one helper by which probe groups, weight-decay
masks, Mixout and re-initialisation read parameters."""
from typing import List


def names(path) -> List[str]:
  """The keys of a jax key path as strings: (DictKey('bert'), DictKey('pooler'), ...) ->
  ['bert', 'pooler', ...] (a GetAttrKey gives its name)."""
  return [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
