"""Which runs a setting trains, and the number that names each.

Without `data_seeds` a run is a seed: its number decides the head's initialisation, the order of
the training examples and every dropout (and Mixout) mask, and names its files. With
`data_seeds` (Dodge et al. 2020) the runs are the grid seeds x data_seeds: the *init seed* keeps
the head, re-initialised layers, dropout and Mixout, and the *data seed* decides the order of
the examples alone. Each grid run is named by one number, 1000 x init + data (run 3002 = init
seed 3, data seed 2), so every file, TensorBoard folder and figure label that names a seed names
a grid run the same way.

Dropout follows the init seed because it is noise of the model, not of the data: the data-order
share of a decomposition then measures the order of the examples and nothing else. Data seed d
draws exactly the order that a plain run of seed d draws, so the grid's diagonal reproduces
plain runs.
"""
import dataclasses
from typing import List, Optional

from jaxstab.config import config_lib
from jaxstab.infra.errors import ConfigError

GRID_BASE = 1000  # run number = GRID_BASE * init seed + data seed


@dataclasses.dataclass(frozen=True)
class Run:
  number: int                 # names the run's files and records ("seed" in them)
  init_seed: int              # head, re-initialised layers, dropout, Mixout
  data_seed: Optional[int]    # order of the training examples; None = the init seed's own

  def record(self) -> dict:
    """What a run's summary entry carries besides its number (empty for a plain run)."""
    if self.data_seed is None:
      return {}
    return {"init_seed": self.init_seed, "data_seed": self.data_seed}


def uses_data_seeds(cfg) -> bool:
  return bool(str(cfg.data_seeds).strip())


def parse(cfg) -> List[Run]:
  """The runs of `cfg`: one per seed, or seeds x data_seeds (init-major order)."""
  seeds = config_lib.parse_seeds(cfg)
  if not uses_data_seeds(cfg):
    return [Run(s, s, None) for s in seeds]
  data_seeds = config_lib.parse_seed_list(cfg.data_seeds, "data_seeds")
  bad = [d for d in data_seeds if not 0 <= d < GRID_BASE]
  if bad:
    raise ConfigError(f"data_seeds={cfg.data_seeds!r}: data seeds must lie in 0..{GRID_BASE - 1} "
                      f"(a grid run is named {GRID_BASE} x init + data); got {bad}")
  negative = [s for s in seeds if s < 0]
  if negative:
    raise ConfigError(f"seeds={cfg.seeds!r}: with data_seeds the init seeds must be >= 0; got "
                      f"{negative}")
  return [Run(GRID_BASE * s + d, s, d) for s in seeds for d in data_seeds]


def by_number(runs: List[Run]) -> dict:
  return {r.number: r for r in runs}
