"""Every key with its default; see jaxstab/config/config_lib.py for the one-line meaning of each."""
from jaxstab.config import config_lib


def get_config(arg: str = ""):
  return config_lib.apply_arg(config_lib.base_config(), arg)
