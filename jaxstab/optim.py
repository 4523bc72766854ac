"""`jaxstab.optim`, the optimizer's public import path (`from jaxstab.optim import adamw`): it is
the module jaxstab.engine.optim itself, usable outside jaxstab like any optax transformation."""
import sys

from jaxstab.engine import optim as _optim

sys.modules[__name__] = _optim
