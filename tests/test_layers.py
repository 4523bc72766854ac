"""The package's shape: imports run one way between layers with no cycle (scripts/import_graph.py,
pure ast), every tool follows one command-line convention (jaxstab/infra/cli.py), and two lines no
longer print on every run (jaxstab/infra/quiet.py)."""
import importlib
import logging
import os
import sys
import tomllib

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "scripts"))
import import_graph  # noqa: E402  pylint: disable=wrong-import-position

from jaxstab.infra import quiet  # noqa: E402  pylint: disable=wrong-import-position

TOOLS = {"report": "jaxstab.report.__main__", "compare": "jaxstab.compare",
         "loss-surface": "jaxstab.loss_surface", "forgetting": "jaxstab.forgetting",
         "connectivity": "jaxstab.connectivity"}


def test_jaxstab_imports_run_one_way_without_cycles(capsys):
  assert import_graph.main(["--package", os.path.join(REPO, "jaxstab")]) == 0, \
      capsys.readouterr().out


def _fake_package(root, files):
  pkg = root / "fakepkg"
  for name, text in files.items():
    path = pkg / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
  (pkg / "__init__.py").touch()
  return str(pkg)


def test_an_upward_import_fails(tmp_path):
  pkg = _fake_package(tmp_path, {
      "infra/__init__.py": "",
      "infra/fs.py": "import os\n",
      "results/__init__.py": "",
      "results/stats.py": "from fakepkg.infra import fs\n",
      # infra reaching up to the study part, inside a function as the old cycle-dodgers did
      "infra/errors.py": "def f():\n  from fakepkg.study import run\n  return run\n",
      "study/__init__.py": "",
      "study/run.py": "from fakepkg.results import stats\n",
  })
  _, problems = import_graph.check(pkg)
  assert [p.text for p in problems] == [
      "upward: fakepkg.infra.errors (infra) imports fakepkg.study (study) at line 2 (in a function)",
      "upward: fakepkg.infra.errors (infra) imports fakepkg.study.run (study) at line 2 "
      "(in a function)"]
  assert import_graph.main(["--package", pkg, "--quiet"]) == 1


def test_a_module_takes_its_part_from_its_folder():
  assert import_graph.layer_of("engine.train") == "engine"
  assert import_graph.layer_of("results") == "results"        # a part's own __init__
  assert import_graph.layer_of("main") == "entry"
  assert import_graph.layer_of("__init__") == "infra"
  assert import_graph.layer_of("helpers") is None              # a top-level module, no entry
  assert import_graph.layer_of("misc.helpers") is None         # a folder that is no part


def test_a_sideways_import_a_cycle_and_an_unassigned_module_fail(tmp_path):
  pkg = _fake_package(tmp_path, {
      "analysis/__init__.py": "from fakepkg.report import figures\n",  # analysis -> report code
      "report/__init__.py": "",
      "report/figures.py": "from .. import analysis\n",                # and back: a cycle
      "helpers.py": "",                                                # in no part
      "misc/__init__.py": "",                                          # a folder in no part
  })
  _, problems = import_graph.check(pkg)
  texts = sorted(p.text for p in problems)
  assert ("fakepkg.helpers is in no part (move it into a part's folder, or name it an entry "
          "point in ENTRY)") in texts
  assert any(t.startswith("fakepkg.misc is in no part") for t in texts)
  assert any(t.startswith("sideways: fakepkg.analysis (analysis) imports fakepkg.report.figures")
             for t in texts)
  assert any(t.startswith("sideways: fakepkg.report.figures (report) imports fakepkg.analysis")
             for t in texts)
  assert "cycle: fakepkg.analysis -> fakepkg.report.figures -> fakepkg.analysis" in texts


def test_a_clean_fake_package_passes(tmp_path):
  pkg = _fake_package(tmp_path, {"infra/__init__.py": "", "infra/errors.py": "",
                                 "infra/fs.py": "from . import errors\n",
                                 "results/__init__.py": "",
                                 "results/outputs.py": "import fakepkg.infra.fs\n",
                                 "report/__init__.py": "from fakepkg.results import outputs\n"})
  edges, problems = import_graph.check(pkg)
  assert problems == []
  assert ("infra.fs", "infra.errors") in {(e.source, e.target) for e in edges}
  assert ("results.outputs", "infra.fs") in {(e.source, e.target) for e in edges}


def test_the_tree_is_the_part_table():
  """Every sub-package of jaxstab is a part of the table, and every part has its folder."""
  root = os.path.join(REPO, "jaxstab")
  folders = {d for d in os.listdir(root)
             if os.path.isfile(os.path.join(root, d, "__init__.py"))}
  assert folders == set(import_graph.PARTS) - {"entry"}
  top = {f[:-3] for f in os.listdir(root) if f.endswith(".py")} - {"__init__"}
  assert top == set(import_graph.ENTRY)


# ------------------------------------------------------------------ one command-line convention
def test_every_tool_has_a_console_script_and_a_python_m_module():
  with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
    scripts = tomllib.load(f)["project"]["scripts"]
  assert scripts["jaxstab"] == "jaxstab.main:run"
  for tool, module in TOOLS.items():
    assert scripts[f"jaxstab-{tool}"] == f"{module}:main"
    assert callable(importlib.import_module(module).main)


@pytest.mark.parametrize("tool", sorted(TOOLS))
def test_every_tool_takes_help_and_names_how_it_was_called(tool, capsys, monkeypatch):
  main = importlib.import_module(TOOLS[tool]).main
  python_m = "jaxstab.report" if tool == "report" else TOOLS[tool]
  with pytest.raises(SystemExit) as done:
    main(["--help"])
  assert done.value.code == 0
  assert capsys.readouterr().out.startswith(f"usage: python -m {python_m} ")
  monkeypatch.setattr(sys, "argv", [f"/venv/bin/jaxstab-{tool}"])
  with pytest.raises(SystemExit):
    main(["--help"])
  assert capsys.readouterr().out.startswith(f"usage: jaxstab-{tool} ")


@pytest.mark.parametrize("tool", sorted(TOOLS))
def test_every_tool_reports_a_bad_workdir_in_one_line(tool, tmp_path, capsys):
  main = importlib.import_module(TOOLS[tool]).main
  missing = str(tmp_path / "nothing")
  argv = [missing] if tool == "compare" else [f"--workdir={missing}"]
  assert main(argv) == 2
  err = capsys.readouterr().err
  assert err.startswith("jaxstab: error: ") and missing in err and err.count("\n") == 1


# ------------------------------------------------------------------ quiet
def _passes(logger_name, level, message) -> bool:
  log = logging.getLogger(logger_name)
  return bool(log.filter(log.makeRecord(logger_name, level, "x.py", 1, message, (), None)))


def test_the_tpu_probe_and_the_flax_deprecation_warning_are_caught(caplog, monkeypatch):
  monkeypatch.setattr(quiet, "_noted", [])
  quiet.install()
  quiet.install()  # idempotent
  probe = "jax._src.xla_bridge"
  assert logging.getLogger(probe).filters.count(quiet._keep) == 1  # pylint: disable=protected-access
  assert not _passes(probe, logging.INFO, "Unable to initialize backend 'tpu': INTERNAL: Failed "
                                          "to open libtpu.so: libtpu.so: cannot open shared object")
  assert _passes(probe, logging.INFO, "something else jax says")
  assert _passes(probe, logging.WARNING, "Unable to initialize backend 'cuda': a real problem")
  flax = ("TensorFlow and JAX classes are deprecated and will be removed in Transformers v5. We "
          "recommend migrating to PyTorch classes or pinning your version of Transformers.")
  with caplog.at_level(logging.INFO, logger="jaxstab"):
    for name in quiet.TRANSFORMERS_LOGGERS:
      assert not _passes(name, logging.WARNING, flax)
    assert _passes("transformers.modeling_flax_utils", logging.WARNING, "Some weights of ...")
  notes = [r.getMessage() for r in caplog.records if r.name == "jaxstab"]
  assert len(notes) == 1 and "pins transformers<5 on purpose" in notes[0]


def test_the_public_aliases_are_the_modules_themselves():
  """`from jaxstab import config_lib` (configs/*.py of users) and `from jaxstab.optim import
  adamw` keep working after the move into parts, as the very modules, not copies."""
  from jaxstab import config_lib as old_config_lib  # pylint: disable=import-outside-toplevel
  from jaxstab.config import config_lib  # pylint: disable=import-outside-toplevel
  from jaxstab.engine import optim  # pylint: disable=import-outside-toplevel
  from jaxstab.optim import adamw  # pylint: disable=import-outside-toplevel
  assert old_config_lib is config_lib and sys.modules["jaxstab.config_lib"] is config_lib
  assert adamw is optim.adamw and sys.modules["jaxstab.optim"] is optim
