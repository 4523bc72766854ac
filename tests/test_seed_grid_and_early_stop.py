"""Init seed vs data-order seed (data_seeds) and start-many-stop-early (train.early_stop)."""
import json
import os
import types

import jax
import numpy as np
import pytest
from scipy import stats as sps

from jaxstab.config import config_lib
from jaxstab.engine import train as train_lib
from jaxstab.infra.errors import ConfigError
from jaxstab.results import forecast, stats
from jaxstab.config import runs
from jaxstab.study import early_stop, experiment, workdir as workdir_lib
from tests.cli_runs import assert_ok, run_cli
from tests.helpers import demo_config


def _summary(workdir):
  with open(os.path.join(workdir, "summary.json")) as f:
    return json.load(f)


def _probe(workdir, name="probe.npz"):
  with np.load(os.path.join(workdir, name)) as z:
    return {k: z[k] for k in z.files}


def _row(probe, number):
  return list(probe["seeds"]).index(number)


# ------------------------------------------------------------------------------ runs.parse
def test_runs_grid_numbers_and_errors():
  cfg = demo_config("1-3")
  assert [(r.number, r.init_seed, r.data_seed) for r in runs.parse(cfg)] == [
      (1, 1, None), (2, 2, None), (3, 3, None)]
  cfg.data_seeds = "4,7"
  assert [(r.number, r.init_seed, r.data_seed) for r in runs.parse(cfg)] == [
      (1004, 1, 4), (1007, 1, 7), (2004, 2, 4), (2007, 2, 7), (3004, 3, 4), (3007, 3, 7)]
  assert runs.parse(cfg)[0].record() == {"init_seed": 1, "data_seed": 4}
  for bad, key in (("1000", "data_seeds"), ("2,2", "data_seeds"), ("x", "data_seeds")):
    cfg.data_seeds = bad
    with pytest.raises(ConfigError, match=key):
      runs.parse(cfg)


def test_data_seed_orders_examples_as_the_plain_seed_does():
  """Data seed d draws the order a plain run of seed d draws; the init seed does not enter."""
  assert np.array_equal(np.asarray(train_lib.data_key_of(train_lib.seed_key(3))),
                        np.asarray(__import__("jax").random.fold_in(train_lib.seed_key(3),
                                                                    train_lib.DATA)))


# ------------------------------------------------------------------------------ decomposition
def test_decomposition_of_an_additive_grid_is_exact():
  """No noise: y = a_i + b_j. MS_res = 0, so each component is its effects' sample variance."""
  a, b = np.array([0.1, 0.4, 0.2, 0.7]), np.array([0.0, 0.3, 0.1])
  inits, datas = np.repeat(np.arange(4), 3), np.tile(np.arange(3), 4)
  y = a[inits] + b[datas]
  d = stats.decomposition(list(y), list(inits), list(datas))
  # float64 sums of 12 terms: measured |d| < 3e-17; bound 1e-14
  assert d["components"]["init"] == pytest.approx(np.var(a, ddof=1), abs=1e-14)
  assert d["components"]["data"] == pytest.approx(np.var(b, ddof=1), abs=1e-14)
  assert d["components"]["residual"] == pytest.approx(0.0, abs=1e-14)
  total = np.var(a, ddof=1) + np.var(b, ddof=1)
  assert d["init"] == pytest.approx(np.var(a, ddof=1) / total, abs=1e-12)
  assert d["init"] + d["data"] + d["residual"] == pytest.approx(1.0, abs=1e-12)
  assert d["grid"] == [4, 3]


def test_decomposition_sums_of_squares_and_f_tests_against_least_squares():
  """SS from fitting nested linear models by least squares (an independent route): the
  additive model's residual, and the increase when a factor is dropped; F p-values by scipy."""
  rng = np.random.default_rng(0)
  n_i, n_d = 5, 4
  inits, datas = np.repeat(np.arange(n_i), n_d), np.tile(np.arange(n_d), n_i)
  y = rng.normal(size=n_i)[inits] * 0.5 + rng.normal(size=n_d)[datas] + rng.normal(size=n_i * n_d)
  dummies = lambda f, n: (f[:, None] == np.arange(1, n)[None, :]).astype(float)
  ones = np.ones((len(y), 1))

  def rss(*blocks):
    x = np.hstack([ones, *blocks])
    r = y - x @ np.linalg.lstsq(x, y, rcond=None)[0]
    return float(r @ r)
  full = rss(dummies(inits, n_i), dummies(datas, n_d))
  ss_init = rss(dummies(datas, n_d)) - full
  ss_data = rss(dummies(inits, n_i)) - full
  d = stats.decomposition(list(y), list(inits), list(datas))
  total = full + ss_init + ss_data
  # lstsq vs closed form: measured relative differences < 1e-14; bound 1e-10
  assert d["ss_shares"]["residual"] == pytest.approx(full / total, rel=1e-10)
  assert d["ss_shares"]["init"] == pytest.approx(ss_init / total, rel=1e-10)
  df_res = (n_i - 1) * (n_d - 1)
  p_init = sps.f.sf((ss_init / (n_i - 1)) / (full / df_res), n_i - 1, df_res)
  p_data = sps.f.sf((ss_data / (n_d - 1)) / (full / df_res), n_d - 1, df_res)
  assert d["p"]["init"] == pytest.approx(p_init, rel=1e-9)
  assert d["p"]["data"] == pytest.approx(p_data, rel=1e-9)


def test_decomposition_components_are_unbiased():
  """Monte Carlo on 6 x 6 grids with var_init = 4, var_data = 1, var_res = 1: the mean
  estimate of each component lies within 5 standard errors of the truth (clipping at 0 is
  rare at these sizes: the init and residual means are unaffected, data's slightly)."""
  rng = np.random.default_rng(1)
  n_i = n_d = 6
  inits, datas = np.repeat(np.arange(n_i), n_d), np.tile(np.arange(n_d), n_i)
  est = []
  for _ in range(2000):
    y = 2 * rng.normal(size=n_i)[inits] + rng.normal(size=n_d)[datas] + rng.normal(size=36)
    c = stats.decomposition(list(y), list(inits), list(datas))["components"]
    est.append([c["init"], c["data"], c["residual"]])
  est = np.asarray(est)
  mean, se = est.mean(0), est.std(0) / np.sqrt(len(est))
  for got, s, truth in zip(mean, se, (4.0, 1.0, 1.0)):
    assert abs(got - truth) < 5 * s + 0.02, (got, s, truth)  # 0.02: clipping's bias on data


def test_decomposition_needs_a_full_grid():
  assert stats.decomposition([0.1, 0.2], [1, 1], [1, 2]) is None           # 1 x 2
  assert stats.decomposition([0.1, 0.2, 0.3], [1, 1, 2], [1, 2, 1]) is None  # a hole
  # a NaN is refused (the non-finite policy; it used to give None): decomposition_of, which
  # merge.py calls, drops it and says why there is no decomposition
  with pytest.raises(ValueError, match="stats.decomposition"):
    stats.decomposition([0.1, 0.2, 0.3, float("nan")], [1, 1, 2, 2], [1, 2, 1, 2])
  d = stats.decomposition_of([0.1, 0.2, 0.3, float("nan")], [1, 1, 2, 2], [1, 2, 1, 2])
  assert d["grid"] == [2, 2] and d["init"] is None and d["p"]["data"] is None
  assert d["undefined"]["init"] == d["p"]["undefined"]["data"] == (
      "1 of the 4 grid runs have no finite value, and the decomposition needs every cell")


@pytest.fixture(scope="module")
def rte_grid(glue_dir, tmp_path_factory):
  """Seeds 1-2 on real RTE with a tiny BERT, plain and as a grid with data seeds 1-2 (whose final
  params are kept, for the analyses): (plain workdir, grid workdir)."""
  def cfg_of(**over):
    cfg = config_lib.task_config("rte", "model=tiny-bert,fidelity=corrected")
    cfg.data.dir = str(glue_dir)
    cfg.data.train_examples = 48
    cfg.model.tiny.vocab_size = 400
    cfg.train.max_seq_length = 32
    cfg.train.batch_size = 8
    cfg.train.max_steps = 8
    cfg.train.evals_per_epoch = 1
    cfg.train.seed_axis = "map"
    cfg.probe.every = 1
    cfg.optim.lr = 1e-3
    for k, v in over.items():
      config_lib.set_path(cfg, k, v)
    return cfg
  root = tmp_path_factory.mktemp("rte_grid")
  experiment.run_setting(cfg_of(seeds="1-2"), str(root / "plain"))
  experiment.run_setting(cfg_of(seeds="1-2", data_seeds="1-2",
                                **{"checkpoint.keep_final_params": True}), str(root / "grid"))
  return str(root / "plain"), str(root / "grid")


def test_grid_study_on_real_rte(rte_grid):
  """seeds x data_seeds on real RTE with a tiny BERT: the diagonal run (init d, data d) is the
  plain run of seed d exactly; a run with another data seed differs; the summary carries the
  decomposition and each run its seeds."""
  plain_dir, grid_dir = rte_grid
  plain, grid = _probe(plain_dir), _probe(grid_dir)
  assert list(grid["seeds"]) == [1001, 1002, 2001, 2002]
  for d in (1, 2):  # map over seeds runs each seed's own program: equal bit for bit
    np.testing.assert_array_equal(grid["grad_norm"][_row(grid, 1000 * d + d)],
                                  plain["grad_norm"][_row(plain, d)])
  # same init seed, another data order: other batches from step 0 on
  assert not np.array_equal(grid["loss"][_row(grid, 1001)], grid["loss"][_row(grid, 1002)])
  s = _summary(grid_dir)
  assert [(r["seed"], r["init_seed"], r["data_seed"]) for r in s["runs"]] == [
      (1001, 1, 1), (1002, 1, 2), (2001, 2, 1), (2002, 2, 2)]
  values = [r["final"]["accuracy"] for r in s["runs"]]
  assert s["decomposition"] == json.loads(json.dumps(stats.decomposition(values, [1, 1, 2, 2],
                                                                         [1, 2, 1, 2])))
  assert "decomposition" not in _summary(plain_dir)


def test_the_analyses_start_a_grid_run_from_its_init_seed(rte_grid):
  """The 2 x 2 grid (init seeds 1-2 x data seeds 1-2) above: the start the analyses rebuild for
  each run (theta_p of the loss surface) is bit for bit the state the study's compiled create
  program made for that run, from the init seed its record carries. The run number is no seed:
  run 1002 started from init seed 1's head, not from a head drawn from 1002."""
  from jaxstab import analysis  # pylint: disable=import-outside-toplevel
  from jaxstab.analysis import loss_surface  # pylint: disable=import-outside-toplevel
  from jaxstab.results import outputs  # pylint: disable=import-outside-toplevel
  from jaxstab.study import groups  # pylint: disable=import-outside-toplevel
  from tests.helpers import tree_max_abs_diff  # pylint: disable=import-outside-toplevel
  (name, directory, summary), = analysis.select_settings(rte_grid[1])
  inputs = analysis.load_setting(name, directory, summary)
  numbers = outputs.kept_seeds(directory)
  assert numbers == [1001, 1002, 2001, 2002]
  # The study's own start: the keys groups.keys draws for the runs as their records name them,
  # through the compiled create program of the setting's config (seed_axis=map, as trained).
  recorded = {r.seed: runs.Run(r.seed, r.init_seed, r.data_seed) for r in summary.runs}
  seed_keys, data_keys = groups.keys(types.SimpleNamespace(runs=recorded), numbers)
  programs = train_lib.build_programs(inputs.cfg, inputs.model, n_train=48, total=8,
                                      seeds_per_group=len(numbers))
  state = programs.create(seed_keys, data_keys)
  started = {n: jax.tree_util.tree_map(lambda x, i=i: np.asarray(x[i]), state.params)
             for i, n in enumerate(numbers)}
  for n in numbers:
    assert analysis.init_seed(inputs.cfg, n) == n // 1000
    assert tree_max_abs_diff(loss_surface.initial_params(inputs, n), started[n]) == 0.0, n
  # the same init seed starts from the same head whatever the data seed; another init, another
  assert tree_max_abs_diff(started[1001], started[1002]) == 0.0
  assert tree_max_abs_diff(started[1001], started[2001]) > 0.0
  with pytest.raises(ConfigError, match="not a run of this setting"):
    analysis.init_seed(inputs.cfg, 3)


# ------------------------------------------------------------------------------ early stop
def test_early_stop_config_errors(tmp_path):
  for over, key in (({"train.early_stop.at": 1.5}, "early_stop.at"),
                    ({"train.early_stop.at": 0.5, "train.early_stop.keep": 4}, "early_stop.keep"),
                    ({"train.early_stop.at": 0.5, "train.early_stop.keep": 0}, "early_stop.keep"),
                    ({"train.early_stop.at": 0.5, "train.early_stop.keep": 2,
                      "train.early_stop.by": "probe", "probe.every": 0}, "probe.every"),
                    ({"train.early_stop.at": 0.5, "train.early_stop.keep": 2,
                      "train.early_stop.by": "loss"}, "early_stop.by")):
    cfg = demo_config("1-4", **{k.replace(".", "__"): v for k, v in over.items()})
    with pytest.raises(ConfigError, match=key):
      experiment.run_setting(cfg, str(tmp_path / "w"))
    assert not os.path.exists(tmp_path / "w")


def test_choose_keeps_lowest_scores_ties_to_smaller_runs():
  assert early_stop.choose({5: 0.1, 2: 0.1, 3: float("inf"), 4: -1.0}, 2) == ([2, 4], [3, 5])


ES = dict(seeds_per_step=2, max_steps=12, at=0.5, keep=2)


def _es_config(seeds="1-4", **over):
  """Demo runs of 12 steps, one seed at a time (map: bit-for-bit comparable), groups of 2."""
  return demo_config(seeds, train__max_steps=ES["max_steps"], train__seed_axis="map",
                     train__seeds_per_step=ES["seeds_per_step"], probe__every=1, **over)


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory):
  """Seeds 1-4 trained to the end without stopping: what the survivors must reproduce."""
  workdir = str(tmp_path_factory.mktemp("plain") / "w")
  experiment.run_setting(_es_config("1-4"), workdir)
  return workdir


def test_survivors_regrouped_across_groups_train_as_if_never_stopped(plain_run, tmp_path,
                                                                     monkeypatch):
  """Groups [1, 2] and [3, 4] to step 6; runs 2 and 3 (one from each group) go on together in
  one new group of 2. Their probe records and final dev results equal the uninterrupted runs'
  exactly (map over seeds); the stopped runs end at step 6 and leave the statistics."""
  monkeypatch.setattr(early_stop, "choose", lambda scores, keep: ([2, 3], [1, 4]))
  workdir = str(tmp_path / "es")
  s = experiment.run_setting(_es_config("1-4", train__early_stop__at=ES["at"],
                                        train__early_stop__keep=ES["keep"]), workdir)
  plain, got, ref = _probe(plain_run), _probe(workdir), _summary(plain_run)
  for n in (2, 3):
    np.testing.assert_array_equal(got["grad_norm"][_row(got, n)], plain["grad_norm"][_row(plain, n)])
    final = next(r for r in s["runs"] if r["seed"] == n)["final"]
    assert final == next(r for r in ref["runs"] if r["seed"] == n)["final"]
  assert [r["seed"] for r in s["runs"]] == [2, 3]
  # their final dev logits too, and only theirs: a stopped run has none
  got_pred, ref_pred = _probe(workdir, "predictions.npz"), _probe(plain_run, "predictions.npz")
  assert got_pred["seeds"].tolist() == [2, 3] and ref_pred["seeds"].tolist() == [1, 2, 3, 4]
  np.testing.assert_array_equal(got_pred["logits"], ref_pred["logits"][[1, 2]])
  assert s["instability"]["of"] == 2
  assert not [n for n in os.listdir(os.path.join(workdir, "runs"))
              if n in ("logits_seed_1.npz", "logits_seed_4.npz")]
  assert [(r["seed"], r["stopped_at"], r["final"]["step"], r["failed"])
          for r in s["stopped_runs"]] == [(1, 6, 6, None), (4, 6, 6, None)]
  for n in (1, 4):  # the stopped runs' probe: written up to step 6, nothing after
    row = got["step"][_row(got, n)] if got["step"].ndim == 2 else got["step"]
    assert np.all(got["grad_norm"][_row(got, n)][np.asarray(row) > 6] == 0)
  es = s["early_stop"]
  assert (es["started"], es["continued"], es["step"]) == (4, 2, 6)
  assert es["seed_steps"] == 4 * 6 + 2 * 6 and es["seed_steps_without"] == 4 * 12
  assert s["reported_spread"]["n"] == 2
  assert not os.path.exists(os.path.join(workdir, "checkpoints", "early_stop"))
  with open(os.path.join(workdir, "early_stop.json")) as f:
    assert json.load(f)["groups"] == {"seeds_1-2_of_2": [1, 2], "seeds_3-4_of_2": [3, 4]}
  # With the first phase gone, a damaged record cannot be trained again alone: the one line
  # says to overwrite, and overwrite clears the ranking that would otherwise be resumed.
  cfg = _es_config("1-4", train__early_stop__at=ES["at"], train__early_stop__keep=ES["keep"])
  record = workdir_lib.run_path(workdir, 4, "json")
  with open(record, "w") as f:
    f.write('{"seed": 4, "fin')
  with pytest.raises(ConfigError, match=r"seed_4\.json is not a run record .* or rerun with "
                                        r"--config\.overwrite=True to train the setting again"):
    workdir_lib.check_finished(cfg, workdir)
  cfg.overwrite = True
  workdir_lib.prepare(cfg, workdir)
  assert not os.path.exists(os.path.join(workdir, "early_stop.json"))
  assert os.listdir(os.path.join(workdir, "runs")) == []


def test_early_stop_by_probe_ranks_by_the_forecast(tmp_path):
  """by=probe: each run's score is forecast.failure_scores of its own probe records up to the
  stop step (recomputed here from the merged probe.npz), and the lowest `keep` went on."""
  workdir = str(tmp_path / "es")
  s = experiment.run_setting(_es_config("1-4", train__early_stop__at=ES["at"],
                                        train__early_stop__keep=ES["keep"],
                                        train__early_stop__by="probe"), workdir)
  p = _probe(workdir)
  want = forecast.failure_scores(p["grad_norm"], p["step"], list(p["groups"]), 6, loss=p["loss"])
  got = [s["early_stop"]["scores"][str(n)] for n in p["seeds"]]
  np.testing.assert_allclose(got, want, rtol=1e-6)  # float32 buffers read twice: measured 0
  kept = sorted(sorted(p["seeds"], key=lambda n: (want[list(p["seeds"]).index(n)], n))[:2])
  assert [r["seed"] for r in s["runs"]] == kept


def test_early_stop_resumes_after_a_kill_in_the_second_phase(plain_run, tmp_path):
  """SIGKILL at step 9 (after the ranking at 6); the rerun reads early_stop.json, rebuilds the
  survivors' group from the saved first phase and ends exactly where an unkilled run ends."""
  workdir = str(tmp_path / "es")
  args = ["--config=configs/demo.py", "--config.model.tiny.vocab_size=200",
          "--config.train.max_seq_length=24", "--config.seeds=1-4", "--config.optim.lr=1e-3",
          f"--config.train.max_steps={ES['max_steps']}", "--config.train.seed_axis=map",
          "--config.train.seeds_per_step=2", "--config.probe.every=1",
          "--config.train.evals_per_epoch=1", "--config.model.dropout=0.0",
          "--config.train.early_stop.at=0.5", "--config.train.early_stop.keep=2",
          "--config.checkpoint.every_steps=0"]
  first = run_cli(args, workdir, env={"JAXSTAB_FAULT": "kill_at_step:9"})  # a real SIGKILL
  assert first.returncode != 0
  assert os.path.exists(os.path.join(workdir, "early_stop.json"))
  assert not os.path.exists(os.path.join(workdir, "summary.json"))
  second = run_cli(args, workdir)  # in-process: the resume
  assert second.returncode == 0, second.stderr[-3000:]
  clean = str(tmp_path / "clean")
  assert_ok(run_cli(args, clean))
  a, b = _summary(workdir), _summary(clean)
  assert [r["final"] for r in a["runs"]] == [r["final"] for r in b["runs"]]
  np.testing.assert_array_equal(_probe(workdir)["grad_norm"], _probe(clean)["grad_norm"])
  np.testing.assert_array_equal(_probe(workdir, "predictions.npz")["logits"],
                                _probe(clean, "predictions.npz")["logits"])
