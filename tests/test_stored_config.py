"""A stored config.json read back (config.stored.from_json): base defaults for keys an older
workdir lacks, ABSENT_MEANS where the absent value is not today's default, and no
`.get(<config key>, default)` outside jaxstab/config/ (defaults are written in one place)."""
import json
import pathlib
import re

import pytest

from jaxstab.config import config_lib, stored
from jaxstab.infra.errors import ConfigError
from jaxstab.study import workdir as workdir_lib


def _saved(cfg) -> dict:
  return json.loads(json.dumps(cfg.to_dict()))


def _without(d: dict, *dotted) -> dict:
  d = json.loads(json.dumps(d))
  for key in dotted:
    *path, last = key.split(".")
    node = d
    for p in path:
      node = node[p]
    del node[last]
  return d


def test_an_old_config_missing_keys_loads_with_the_base_defaults():
  cfg = config_lib.task_config("mrpc", "setting=ours,lr=1e-5")
  old = _without(_saved(cfg), "model.attention", "stabilisers.mixout_head", "train.early_stop",
                 "data_seeds")
  got = stored.from_json(old)
  base = config_lib.base_config()
  assert got.model.attention == base.model.attention
  assert got.stabilisers.mixout_head == base.stabilisers.mixout_head
  assert got.train.early_stop.to_dict() == base.train.early_stop.to_dict()
  assert got.data_seeds == base.data_seeds
  assert got.optim.lr == 1e-5 and got.task == "mrpc"  # stored values win over the defaults
  del got.model["attention"], got.stabilisers["mixout_head"], got.train["early_stop"]
  del got["data_seeds"]
  assert _saved(got) == old
  assert _saved(stored.from_json(_saved(cfg))) == _saved(cfg)  # a whole config: unchanged


def test_unknown_keys_and_values_of_another_type_are_kept_as_stored():
  old = _saved(config_lib.base_config())
  old["model"]["retired_switch"] = True
  old["seeds"] = 5
  got = stored.from_json(old)
  assert got.model.retired_switch is True and got.seeds == 5
  assert config_lib.parse_seeds(got) == [5]
  diff = workdir_lib.config_diff(old, _saved(config_lib.base_config()))
  assert "model.retired_switch: True -> '<absent>'" in diff  # resuming it is refused


def _with_new_key(monkeypatch, default="highest", absent="default"):
  """A key added to base_config later, whose absent value differs from its default."""
  real = config_lib.base_config

  def base():
    cfg = real()
    cfg.model.fake_precision = default
    return cfg
  monkeypatch.setattr(config_lib, "base_config", base)
  monkeypatch.setitem(stored.ABSENT_MEANS, "model.fake_precision",
                      stored.Absent(absent, "older workdirs ran with XLA's default precision"))


def test_absent_means_wins_over_the_default_only_when_the_key_is_absent(monkeypatch):
  before = _saved(config_lib.base_config())  # written before the key existed
  _with_new_key(monkeypatch)
  assert config_lib.base_config().model.fake_precision == "highest"
  assert stored.from_json(before).model.fake_precision == "default"
  assert stored.absent_value("model.fake_precision") == "default"
  now = _saved(config_lib.base_config())
  assert stored.from_json(now).model.fake_precision == "highest"
  now["model"]["fake_precision"] = "high"
  assert stored.from_json(now).model.fake_precision == "high"


def test_absent_means_on_an_existing_key_and_its_group(monkeypatch):
  monkeypatch.setitem(stored.ABSENT_MEANS, "train.early_stop.by",
                      stored.Absent("probe", "a test: the group did not exist"))
  old = _without(_saved(config_lib.base_config()), "train.early_stop")
  got = stored.from_json(old)
  assert got.train.early_stop.by == "probe" and got.train.early_stop.at == 0.0
  assert stored.from_json(_saved(config_lib.base_config())).train.early_stop.by == "dev"


def test_resume_check_compares_an_absent_key_with_what_it_ran_with(monkeypatch):
  before = _saved(config_lib.base_config())
  _with_new_key(monkeypatch)
  today = config_lib.base_config()
  diff = workdir_lib.config_diff(before, _saved(today))
  assert diff == ["model.fake_precision: '<absent>' -> 'highest' (a config.json without the key "
                  "ran with 'default')"]
  today.model.fake_precision = "default"  # the value the old workdir ran with: resumable
  assert workdir_lib.config_diff(before, _saved(today)) == []


def test_a_workdir_from_before_matmul_precision_resumes_at_default(tmp_path):
  """Before model.matmul_precision existed nothing set the precision, so those runs ran at JAX's
  default: a config.json without the key reads as 'default', the resume check accepts a config
  at 'default' (`precision=default`) and refuses today's 'highest', naming the key."""
  cfg = config_lib.task_config("rte", "model=tiny-bert")
  assert cfg.model.matmul_precision == "highest"
  old = _without(_saved(cfg), "model.matmul_precision")
  assert stored.from_json(old).model.matmul_precision == "default"
  (tmp_path / "config.json").write_text(json.dumps(old))
  with pytest.raises(ConfigError, match=re.escape(
      "model.matmul_precision: '<absent>' -> 'highest' (a config.json without the key ran with "
      "'default')")):
    workdir_lib.check_same_config(cfg, str(tmp_path))
  config_lib.apply_arg(cfg, "precision=default")  # the short argument
  assert cfg.model.matmul_precision == "default"
  workdir_lib.check_same_config(cfg, str(tmp_path))  # resumes as it ran
  assert workdir_lib.config_diff(old, _saved(cfg)) == []


def test_every_absent_means_entry_is_a_base_key_with_another_value_and_a_reason():
  base = config_lib.base_config()
  for key, absent in stored.ABSENT_MEANS.items():
    assert config_lib.get_path(base, key) is not None, key
    assert absent.value != config_lib.get_path(base, key), key
    assert absent.why.strip(), key


def _key_names(d: dict, out: set) -> set:
  for k, v in d.items():
    out.add(k)
    if isinstance(v, dict):
      _key_names(v, out)
  return out


# results/ and report/ read JSON records (summary.json, runs/*.json, probe.npz, config.json as a
# dict) whose fields share names with config keys (task, seed, seeds, metric, model): there only
# a `.get` on a ConfigDict-like name counts. Everywhere else any `.get("<config key>", ...)` does.
_RECORD_READERS = ("results", "report")
_CONFIG_LIKE = re.compile(r"(?:\bcfg|_cfg|\bconfig)(?:\.\w+)*$")


def test_no_config_key_is_read_with_a_default_outside_the_config_part():
  package = pathlib.Path(config_lib.__file__).resolve().parents[1]
  keys = sorted(_key_names(config_lib.base_config().to_dict(), set()))
  pattern = re.compile(r"([\w.]*)\.get\(\s*[\"'](" + "|".join(keys) + r")[\"']\s*,")
  found = []
  for path in sorted(package.rglob("*.py")):
    part = path.relative_to(package).parts[0]
    if part == "config":
      continue
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
      for m in pattern.finditer(line):
        if part in _RECORD_READERS and not _CONFIG_LIKE.search(m.group(1)):
          continue
        found.append(f"{path.relative_to(package)}:{n}: {line.strip()}")
  assert not found, ("a config key read with a default outside jaxstab/config/ (its default "
                     "belongs in config_lib.base_config, or ABSENT_MEANS for older workdirs):\n"
                     + "\n".join(found))
