"""Studies: several settings sharing seeds, statistics, resume, divergence isolation."""
import csv
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats as sps

from jaxstab.config import config_lib
from jaxstab.engine import train as train_lib
from jaxstab.results import records, stats, tables
from jaxstab.study import studies
from tests import guards
from tests.helpers import build_step, demo_config, tiny_setup, tree_max_abs_diff


def _demo(seeds="1-2", **over):
  return demo_config(seeds, **over)


def test_spread_and_levene_against_direct_computation():
  v = [0.5, 0.7, 0.9, 0.6]
  sp = stats.spread(v)
  assert sp["n"] == 4 and sp["min"] == 0.5 and sp["max"] == 0.9
  # float64 arithmetic: measured |d| / value 0 (mean, std) and 1.7e-16 (median, 0.65 is not a
  # binary fraction); bounds a few tens of ulps
  assert sp["mean"] == pytest.approx(0.675, rel=1e-14)
  assert sp["median"] == pytest.approx(0.65, rel=1e-14)
  assert sp["std"] == pytest.approx(np.sqrt(np.mean((np.array(v) - 0.675) ** 2)), rel=1e-14)
  a, b = [0.5, 0.52, 0.7, 0.71, 0.53], [0.69, 0.70, 0.71, 0.70, 0.72]
  assert stats.levene(a, b) == sps.levene(a, b, center="median").pvalue  # scipy's, exactly
  # By hand: one-way ANOVA on absolute deviations from each group's median.
  z = [np.abs(np.array(g) - np.median(g)) for g in (a, b)]
  zbar = np.concatenate(z).mean()
  between = sum(len(g) * (g.mean() - zbar) ** 2 for g in z)
  within = sum(((g - g.mean()) ** 2).sum() for g in z)
  w = (10 - 2) / (2 - 1) * between / within
  assert stats.levene(a, b) == pytest.approx(sps.f.sf(w, 1, 8), rel=1e-12)  # measured 0


def test_reported_metric_follows_select():
  """Table cells and Levene's test use what a recipe reports (best dev checkpoint for
  select=best); the failed count stays the end-of-training one."""
  finals, bests = [0.50, 0.62, 0.70, 0.55], [0.66, 0.64, 0.72, 0.69]
  runs = [{"final": {"accuracy": f}, "best": {"accuracy": b}, "failed": f <= 0.527}
          for f, b in zip(finals, bests)]
  plain_finals = [0.40, 0.75, 0.53, 0.60]
  plain_runs = [{"final": {"accuracy": f}, "best": {"accuracy": f + 0.05}, "failed": f <= 0.527}
                for f in plain_finals]
  settings = [
      {"task": "rte", "metric": "accuracy", "name": "rte_devlin", "recipe": "devlin",
       "select": "final", "runs": plain_runs, **stats.setting_stats(plain_runs, "accuracy")},
      {"task": "rte", "metric": "accuracy", "name": "rte_ours", "recipe": "ours",
       "select": "best", "runs": runs, **stats.setting_stats(runs, "accuracy", "best")}]
  assert stats.reported(settings[0]) == plain_finals and stats.reported(settings[1]) == bests
  assert settings[1]["reported_spread"]["mean"] == pytest.approx(np.mean(bests), rel=1e-14)
  assert settings[1]["failed_runs"] == 1 and settings[0]["failed_runs"] == 1
  (row,) = stats.levene_table(settings)
  assert row["p"] == sps.levene(plain_finals, bests, center="median").pvalue  # 0.110
  assert abs(row["p"] - sps.levene(plain_finals, finals, center="median").pvalue) > 0.1  # 0.438

  def cell(v):
    return " / ".join(f"{100 * x:.1f}" for x in (np.std(v), np.mean(v), np.median(v), np.max(v)))
  table = tables.table1_markdown(settings)
  assert f"| ours | {cell(bests)} (1/4 failed) |" in table
  assert f"| devlin | {cell(plain_finals)} (1/4 failed) |" in table
  # a summary written before `select` existed reports the end of training
  del settings[1]["select"]
  assert stats.reported(settings[1]) == finals


def test_two_settings_share_seeds_and_are_compared(tmp_path):
  cfg = _demo()
  cfg.settings["plain"] = "setting=devlin"
  cfg.settings["corrected"] = "setting=ours,precision=default"
  cfg.train.max_steps = 6  # `ours` sets 20 epochs; max_steps still bounds both
  result = studies.run(cfg, str(tmp_path))
  # the matmul precision is recorded in each setting's config.json and every summary
  for name, prec in (("plain", "highest"), ("corrected", "default")):
    assert json.loads((tmp_path / name / "config.json").read_text())["model"][
        "matmul_precision"] == prec
    assert records.read_setting(str(tmp_path / name)).matmul_precision == prec
  with open(tmp_path / "summary.json", encoding="utf-8") as f:
    saved = json.load(f)
  names = [s["name"] for s in saved["settings"]]
  assert sorted(names) == ["corrected", "plain"]
  for s in saved["settings"]:
    assert [r["seed"] for r in s["runs"]] == [1, 2]
    assert os.path.isfile(tmp_path / s["name"] / "summary.json")
    finals = [r["final"]["accuracy"] for r in s["runs"]]
    assert s["final_spread"]["mean"] == pytest.approx(np.mean(finals), rel=1e-14)
    assert s["failed_runs"] == sum(f <= s["majority"]["accuracy"] for f in finals)
  by = {s["name"]: s for s in saved["settings"]}
  assert by["corrected"]["setting"] == "ours" and by["plain"]["setting"] == "devlin"
  assert len(saved["levene"]) == 1 and saved["levene"][0]["task"] == "demo"
  # What each recipe reports: Devlin the end of training, the paper's baseline its best dev
  # checkpoint (the statistics themselves are checked in test_reported_metric_follows_select).
  assert (by["plain"]["select"], by["corrected"]["select"]) == ("final", "best")
  best = [r["best"]["accuracy"] for r in by["corrected"]["runs"]]
  assert by["corrected"]["reported_spread"]["mean"] == pytest.approx(np.mean(best), rel=1e-14)
  assert by["plain"]["reported_spread"] == by["plain"]["final_spread"]
  csv_rows = (tmp_path / "summary.csv").read_text().strip().splitlines()
  assert len(csv_rows) == 1 + 2 * 2
  rows = list(csv.DictReader(csv_rows))
  assert {r["setting"]: r["result"] for r in rows if r["reported"] == "True"} == {
      "plain": "final", "corrected": "best"}
  table = (tmp_path / "table.md").read_text()
  assert "| plain |" in table and "| corrected |" in table and "DEMO" in table
  assert result["levene"] == saved["levene"]


def test_rerun_skips_finished_seeds_and_refuses_a_changed_config(tmp_path):
  first = studies.run(_demo("1-2"), str(tmp_path))
  stamp = os.path.getmtime(tmp_path / "runs" / "seed_1.json")
  second = studies.run(_demo("1-3"), str(tmp_path))
  assert os.path.getmtime(tmp_path / "runs" / "seed_1.json") == stamp  # not retrained
  assert [r["seed"] for r in second["runs"]] == [1, 2, 3]
  assert second["runs"][:2] == first["runs"]
  with np.load(tmp_path / "probe.npz") as z:
    assert z["grad_norm"].shape[0] == 3 and list(z["seeds"]) == [1, 2, 3]
  from jaxstab.infra.errors import ConfigError
  with pytest.raises(ConfigError, match="train.max_steps"):
    studies.run(_demo("1-3", train__max_steps=8), str(tmp_path))
  again = studies.run(_demo("1-2", train__max_steps=8, overwrite=True), str(tmp_path))
  assert again["total_steps"] == 8 and [r["seed"] for r in again["runs"]] == [1, 2]


def test_a_diverging_seed_is_frozen_and_the_others_continue(glue_dir):
  cfg, model, arrays = tiny_setup(glue_dir, "bert", probe__every=1)
  create, step, _ = build_step(cfg, model, arrays)
  group = jax.jit(jax.vmap(create))(jnp.stack([train_lib.seed_key(s) for s in (4, 9)]))
  vstep = jax.jit(jax.vmap(step, in_axes=(0, None)))
  dev = jax.device_put(arrays)
  group = vstep(group, dev)
  # Poison seed 4 after one step: its classifier becomes non-finite.
  kern = group.params["classifier"]["kernel"]
  group = group.replace(params=dict(group.params, classifier=dict(
      group.params["classifier"], kernel=kern.at[0].set(jnp.inf))))
  frozen = jax.tree_util.tree_map(lambda x: x[0], group.params)
  for _ in range(3):
    group = vstep(group, dev)
  assert np.asarray(group.diverged_at).tolist() == [1, -1]
  assert tree_max_abs_diff(jax.tree_util.tree_map(lambda x: x[0], group.params), frozen) == 0.0
  alone = jax.jit(create)(train_lib.seed_key(9))
  for _ in range(4):
    alone = jax.jit(step)(alone, dev)
  healthy = jax.tree_util.tree_map(lambda x: x[1], group.params)
  err = tree_max_abs_diff(healthy, alone.params)
  moved = tree_max_abs_diff(alone.params, jax.jit(create)(train_lib.seed_key(9)).params)
  print(f"\nhealthy seed vs alone: max |d param| {err:.2e}; moved by {moved:.2e}")
  # vmap vs alone: float32 rounding only (tests.guards.SEED_GROUP_BOUNDS; measured here 3.7e-9)
  assert err <= guards.SEED_GROUP_BOUNDS["vmap"]["params"] < moved / 1000


def test_a_diverged_setting_is_failed_while_the_other_finishes(tmp_path):
  cfg = _demo("1-2")
  cfg.settings["sane"] = "lr=1e-3"
  cfg.settings["absurd"] = "lr=1e30"
  result = studies.run(cfg, str(tmp_path))
  by = {s["name"]: s for s in result["settings"]}
  assert all(r["diverged_at"] is not None and r["failed"] for r in by["absurd"]["runs"])
  assert all(r["diverged_at"] is None for r in by["sane"]["runs"])
  assert all(np.isfinite(r["final"]["accuracy"]) for r in by["absurd"]["runs"])


def test_a_crashing_setting_does_not_lose_the_others(tmp_path, monkeypatch):
  """A user's mistake (a model folder that is not there) and an internal error (planted in the
  engine's train.build_programs) in the first two settings (settings run in name order): the
  third still trains and its
  summary and the study's are written. Because one failure was internal, the study ends with a
  RuntimeError caused by it (the command line prints its traceback, exit 1), not as a config
  mistake; had every failure been the user's, it would be a ConfigError."""
  from jaxstab.infra.errors import ConfigError  # pylint: disable=import-outside-toplevel
  from jaxstab.results import records  # pylint: disable=import-outside-toplevel
  real = train_lib.build_programs

  def build_programs(cfg, *args, **kwargs):
    if cfg.optim.lr == 2e-3:
      raise RuntimeError("planted internal error")
    return real(cfg, *args, **kwargs)
  monkeypatch.setattr(train_lib, "build_programs", build_programs)
  cfg = _demo("1")
  cfg.settings["broken"] = f"model={tmp_path / 'no_such_model'}"
  cfg.settings["crash"] = "lr=2e-3"
  cfg.settings["good"] = "lr=1e-3"
  with pytest.raises(RuntimeError, match="2 of 3 settings failed .*broken.*crash") as err:
    studies.run(cfg, str(tmp_path / "s"))
  assert not isinstance(err.value, ConfigError)
  assert isinstance(err.value.__cause__, RuntimeError)
  assert str(err.value.__cause__) == "planted internal error"
  saved = json.loads((tmp_path / "s" / "summary.json").read_text())
  assert [s["name"] for s in saved["settings"]] == ["good"]
  assert [e["name"] for e in saved["errors"]] == ["broken", "crash"]
  assert saved["errors"][1]["error"] == "RuntimeError: planted internal error"
  good = records.read_setting(str(tmp_path / "s" / "good"))
  assert [r.seed for r in good.runs] == [1] and good.runs[0].final
  # every failure the user's: one ConfigError (nothing trains, nothing is compiled)
  cfg = _demo("1")
  cfg.settings["broken"] = f"model={tmp_path / 'no_such_model'}"
  cfg.settings["also"] = f"model={tmp_path / 'nor_this_one'}"
  with pytest.raises(ConfigError, match="every setting failed: also: .*broken: "):
    studies.run(cfg, str(tmp_path / "t"))


def test_hf_source_maps_the_hub_dataset(monkeypatch, require):
  datasets = require("datasets")  # CI installs it (.ci/run): a failure there, a skip elsewhere
  from jaxstab.data import dataset, tasks  # pylint: disable=import-outside-toplevel
  calls = []

  def fake_load(path, name, split, cache_dir=None):
    calls.append((path, name, split, cache_dir))
    return datasets.Dataset.from_dict({"sentence1": ["a b", "c"], "sentence2": ["d", "e f"],
                                       "label": [1, 0], "idx": [0, 1]})

  monkeypatch.setattr(datasets, "load_dataset", fake_load)
  got = dataset.load_split(tasks.get_task("rte"), "dev", "hf", "/cache")
  assert calls == [("nyu-mll/glue", "rte", "validation", "/cache")]
  assert got.text_a == ["a b", "c"] and got.text_b == ["d", "e f"] and got.labels.tolist() == [1, 0]


def test_small_data_subset_and_full_data_step_count(glue_dir, tmp_path):
  from jaxstab.data import dataset  # pylint: disable=import-outside-toplevel
  arrays = {"labels": np.arange(2490), "input_ids": np.arange(2490 * 3).reshape(2490, 3)}
  sub = dataset.subsample(arrays, 1000, seed=0)
  assert len(np.unique(sub["labels"])) == 1000  # N distinct examples
  np.testing.assert_array_equal(sub["input_ids"][:, 0] // 3, sub["labels"])  # rows kept whole
  assert np.array_equal(dataset.subsample(arrays, 1000, 0)["labels"], sub["labels"])
  assert not np.array_equal(dataset.subsample(arrays, 1000, 1)["labels"], sub["labels"])
  cfg = config_lib.task_config("rte", "model=tiny-bert,train_examples=40,steps_of_full_epochs=0.02")
  cfg.data.dir = str(glue_dir)
  cfg.model.tiny.vocab_size = 300
  cfg.train.max_seq_length = 16
  cfg.train.evals_per_epoch = 1
  # The subset is drawn from the texts and only it is tokenized: the very rows the whole set
  # tokenized gives (200 real RTE pairs stand for the set: tokenizing all 2,490 takes seconds).
  from jaxstab.engine import inputs  # pylint: disable=import-outside-toplevel
  loaded = inputs.load(cfg)
  part = dataset.Split(loaded.train_split.text_a[:200], loaded.train_split.text_b[:200],
                       loaded.train_split.labels[:200])
  whole = dataset.subsample(dataset.tokenize(part, loaded.tokenizer, 16), 40, 3)
  drawn = dataset.tokenize(dataset.subsample_split(part, 40, 3), loaded.tokenizer, 16)
  assert set(drawn) == set(whole) and all(np.array_equal(drawn[k], whole[k]) for k in whole)
  assert not np.array_equal(dataset.tokenize(dataset.subsample_split(part, 40, 4),
                                             loaded.tokenizer, 16)["input_ids"],
                            whole["input_ids"])  # another subsample seed: other rows
  arrays = inputs.tokenize(cfg, loaded, None)
  assert len(arrays.train["labels"]) == 40 and arrays.full_steps_per_epoch == 156
  result = studies.run(cfg, str(tmp_path / "small"))
  full_steps_per_epoch = dataset.num_batches(2490, 16)  # RTE's full training set, batch 16
  assert result["total_steps"] == round(0.02 * full_steps_per_epoch)
  with np.load(tmp_path / "small" / "probe.npz") as z:
    assert z["loss"].shape[1] == (result["total_steps"] - 1) // cfg.probe.every + 1


def test_tfds_source_maps_rows_and_names_the_missing_package(monkeypatch):
  import sys  # pylint: disable=import-outside-toplevel
  import types  # pylint: disable=import-outside-toplevel
  from jaxstab.data import dataset, tasks  # pylint: disable=import-outside-toplevel
  from jaxstab.infra.errors import ConfigError  # pylint: disable=import-outside-toplevel
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
  with pytest.raises(ConfigError, match=r"pip install 'jaxstab\[tfds\]'"):
    dataset.load_split(tasks.get_task("rte"), "train", "tfds", "gs://bucket/tfds")
  calls = []
  fake = types.ModuleType("tensorflow_datasets")
  fake.load = lambda name, split, data_dir: calls.append((name, split, data_dir)) or "ds"
  fake.as_numpy = lambda ds: iter([{"sentence1": b"a b", "sentence2": b"c", "label": 1, "idx": 0},
                                   {"sentence1": b"d", "sentence2": b"e f", "label": 0, "idx": 1}])
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", fake)
  got = dataset.load_split(tasks.get_task("rte"), "dev", "tfds", "gs://bucket/tfds")
  assert calls == [("glue/rte", "validation", "gs://bucket/tfds")]
  assert got.text_a == ["a b", "d"] and got.text_b == ["c", "e f"] and got.labels.tolist() == [1, 0]
