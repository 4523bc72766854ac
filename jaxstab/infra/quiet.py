"""Two lines that printed on every command, caught before they print.

- jax logs "Unable to initialize backend 'tpu': ... libtpu.so ..." (INFO) on every machine without
  libtpu: it is jax probing its optional backends, not a failure. Dropped. A backend that
  JAX_PLATFORMS asks for and that fails still raises; jaxstab logs the devices it runs on.
- transformers 4.x warns "TensorFlow and JAX classes are deprecated and will be removed in
  Transformers v5" when it builds a Flax model. jaxstab runs on those classes and pins
  transformers<5 on purpose (pyproject.toml), so the warning is replaced by one INFO line of
  jaxstab's that says so (shown where INFO is shown, e.g. `python -m jaxstab.main`).

`install()` is idempotent and cheap (it imports neither jax nor transformers); every command line
calls it first. It also keeps the tokenizers library from warning about parallelism after a fork.
"""
import logging
import os
from importlib import metadata

TPU_PROBE = "Unable to initialize backend"
FLAX_DEPRECATION = "TensorFlow and JAX classes are deprecated"
PIN_NOTE = ("transformers %s: its Flax classes are deprecated upstream and gone in v5; jaxstab "
            "uses them and pins transformers<5 on purpose")
# The loggers that emit either line (a logger's filters see only its own records).
JAX_LOGGERS = ("jax._src.xla_bridge",)
TRANSFORMERS_LOGGERS = ("transformers.modeling_flax_utils", "transformers.tokenization_utils_base",
                        "transformers.feature_extraction_utils", "transformers.modeling_tf_utils",
                        "transformers.pipelines.base")

_noted = []


def _keep(record: logging.LogRecord) -> bool:
  """False for the two lines (see the module docstring); the first deprecation warning of a
  process is replaced by PIN_NOTE."""
  text = record.getMessage()
  if record.levelno < logging.WARNING and text.startswith(TPU_PROBE):
    return False
  if FLAX_DEPRECATION in text:
    if not _noted:
      _noted.append(True)
      logging.getLogger("jaxstab").info(PIN_NOTE, _transformers_version())
    return False
  return True


def _transformers_version() -> str:
  try:
    return metadata.version("transformers")
  except metadata.PackageNotFoundError:
    return "4.x"


def install() -> None:
  """Filters the two lines out of jax's and transformers' loggers (once per process)."""
  os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
  for name in JAX_LOGGERS + TRANSFORMERS_LOGGERS:
    log = logging.getLogger(name)
    if _keep not in log.filters:
      log.addFilter(_keep)
