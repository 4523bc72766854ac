"""Shared test setup: CPU-only JAX, quiet tokenizers, and the location of the real GLUE files."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

GLUE_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "glue"


@pytest.fixture(scope="session")
def glue_dir() -> str:
  """Absolute path of ../shared/glue (next to the repository root)."""
  if not GLUE_DIR.is_dir():
    msg = f"GLUE test data not found at {GLUE_DIR} (expected ../shared/glue next to the repo)"
    if "CI" in os.environ:
      pytest.fail(msg + "; it is required in CI", pytrace=False)
    pytest.skip(msg)
  return str(GLUE_DIR)
