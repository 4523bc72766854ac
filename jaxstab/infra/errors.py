"""The exception types that reach the user as one line, without a traceback."""


class ConfigError(ValueError):
  """Bad input from the user: a config key, a value, a file. The message names the culprit."""


class DiskFull(Exception):
  """A write failed for want of space. The run stops at once with one line (what could not be
  written, where, how to go on) and a non-zero exit; everything it wrote is atomic, so the
  workdir resumes from where it stopped once space is freed."""

  def __init__(self, what: str):
    super().__init__(f"no space left on the device: could not write {what}. Free some space "
                     "there and rerun the same command: finished seeds are kept, the others go "
                     "on from their last checkpoint")
