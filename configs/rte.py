"""RTE with the paper's settings. Argument: model=..., setting=devlin|ours, lr=..., seeds=..."""
from jaxstab.config import config_lib


def get_config(arg: str = ""):
  return config_lib.task_config("rte", arg)
