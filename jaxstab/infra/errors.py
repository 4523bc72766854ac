"""One exception type for user-facing mistakes, so the CLI can print them without a traceback."""


class ConfigError(ValueError):
  """Bad input from the user: a config key, a value, a file. The message names the culprit."""
