"""`jaxstab.config_lib`, the name config files import (`from jaxstab import config_lib`), kept
for the users' own config files: it is the module jaxstab.config.config_lib itself, not a copy."""
import sys

from jaxstab.config import config_lib as _config_lib

sys.modules[__name__] = _config_lib
