"""scripts/gpu_minilm_study.sh: its stages, printed with PRINT_ONLY=1, are valid jaxstab configs
that together cover the paper's comparison (Devlin 2e-5 vs ours, 25 seeds, every task), the
learning-rate ablation on RTE, and the stabiliser and PEFT studies on RTE."""
import collections
import importlib.util
import os
import shlex
import subprocess
from pathlib import Path

import pytest

from jaxstab.config import runs
from jaxstab.study import studies

ROOT = Path(__file__).resolve().parents[1]


def _stage_commands(env=None, *extra):
  out = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_minilm_study.sh"), *extra],
                       env=dict(os.environ, PRINT_ONLY="1", **(env or {})),
                       capture_output=True, text=True, check=True, cwd=ROOT)
  return [shlex.split(line) for line in out.stdout.splitlines() if line.strip()]


def _study(path, arg):
  spec = importlib.util.spec_from_file_location(Path(path).stem, ROOT / path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def test_the_stages_cover_the_comparison_the_ablations_and_reference_mode_with_25_seeds():
  seeds_of = collections.defaultdict(set)
  for argv in _stage_commands():
    assert argv[:3] == ["python3", "-m", "jaxstab.main"]
    flags = dict(a.split("=", 1) for a in argv[3:])
    path, arg = flags["--config"].split(":", 1)
    assert path in ("configs/study_minilm.py", "configs/study_stabilisers.py",
                    "configs/study_peft.py"), path
    assert flags["--config.data.dir"] == "carry/glue"
    workdir = os.path.basename(flags["--workdir"])
    cfg = _study(path, arg)
    for name, sub in studies.expand(cfg):
      assert sub.model.name_or_path == "carry/minilm_fp16"
      assert sub.train.max_seq_length == 128 and sub.train.batch_size == 16
      seeds_of[(workdir, sub.fidelity, name)] |= {(r.init_seed, r.data_seed)
                                                  for r in runs.parse(sub)}
  corrected = {("minilm_rte", f"rte_{s}") for s in ("devlin_lr2e-5", "ours")}
  corrected |= {("minilm_rte", f"rte_devlin_lr{lr}") for lr in ("1e-5", "3e-5", "5e-5")}
  corrected |= {("minilm_mrpc", "mrpc_devlin_lr2e-5"), ("minilm_cola", "cola_devlin_lr2e-5"),
                ("minilm_mrpc_ours", "mrpc_ours"), ("minilm_cola_ours", "cola_ours")}
  reference = {("minilm_rte_bc", f"rte_{s}_lr{lr}") for s in ("devlin", "devlin_bc")
               for lr in ("1e-5", "2e-5", "3e-5")}
  reference |= {("minilm_rte_reference", f"rte_{s}") for s in ("devlin_lr2e-5", "ours")}
  # 11-14: the stabiliser and PEFT studies on RTE, each setting in its preset's fidelity
  reference |= {("minilm_rte_stabilisers", f"rte_{s}_lr5e-5") for s in (
      "devlin", "r3f", "r4f", "child_tuning_d", "child_tuning_f", "noisytune")}
  reference |= {("minilm_rte_zhang", f"rte_{s}_lr5e-5") for s in ("devlin_bc", "mixout")}
  corrected |= {("minilm_rte_zhang", f"rte_{s}_lr5e-5") for s in ("reinit", "llrd", "prior_wd")}
  reference |= {(f"minilm_rte_peft{w}", f"rte_{r}_{m}") for w, r in (("", "devlin"),
                                                                      ("_ours", "ours"))
                for m in ("full", "lora", "bitfit")}
  grid = ("minilm_rte_grid", "corrected", "rte_devlin_lr5e-5")
  assert set(seeds_of) == ({(w, "corrected", n) for w, n in corrected}
                           | {(w, "reference", n) for w, n in reference} | {grid})
  assert seeds_of.pop(grid) == {(i, d) for i in range(1, 6) for d in range(1, 6)}
  assert all(seeds == {(s, None) for s in range(1, 26)} for seeds in seeds_of.values())


def test_seeds_override_every_stage_and_an_unknown_stage_is_refused():
  commands = _stage_commands({"SEEDS": "1-2", "STAGES": "1 7"}, "--config.train.max_steps=2")
  assert len(commands) == 2
  assert all(",seeds=1-2," in c[3] and c[-1] == "--config.train.max_steps=2" for c in commands)
  with pytest.raises(subprocess.CalledProcessError) as e:
    _stage_commands({"STAGES": "1 15"})
  assert "unknown stage 15" in e.value.stderr
