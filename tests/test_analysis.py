"""Loss surface and forgetting analyses (jaxstab.analysis) on a real tiny study trained in-process,
checked against direct, independent computations (no vmap, no jit, no lax.map)."""
import csv
import dataclasses
import json
import os
import pathlib
import shutil

import jax
import numpy as np
import optax
import pytest
import transformers as tr

from jaxstab import analysis
from jaxstab.analysis import (connectivity as cn, forgetting as fg, loss_surface as ls,
                              mlm_text)
from jaxstab.data import dataset
from jaxstab.engine import inputs as inputs_lib, probe, train as train_lib
from jaxstab.infra import checkpoint
from jaxstab.infra.errors import ConfigError
from jaxstab.report import build
from jaxstab.results import outputs
from tests import browser
from tests.helpers import kept_params_config, tree_max_abs_diff

SEEDS = [1, 2, 3]
GRID, EXAMPLES, CHUNK = 5, 48, 4      # 5 points in [-0.5, 1.5]: -0.5, 0, 0.5, 1, 1.5


def _cfg():
  return kept_params_config()


@pytest.fixture(scope="module")
def run_dir(kept_params_run):
  """A plain run (one setting) whose three seeds' final params are kept (a copy of the
  session's run: tests/conftest.py kept_params_run)."""
  workdir = str(kept_params_run("analysis_run"))
  assert outputs.kept_seeds(workdir) == SEEDS
  return workdir


@pytest.fixture(scope="module")
def inputs(run_dir):
  (name, directory, summary), = analysis.select_settings(run_dir)
  return analysis.load_setting(name, directory, summary)


@pytest.fixture(scope="module")
def independent(run_dir):
  """Model, tokenizer and training arrays rebuilt here, without jaxstab.analysis."""
  cfg = _cfg()
  loaded = inputs_lib.load(cfg)
  task, model, tok = loaded.task, loaded.model, loaded.tokenizer
  arrays = dataset.tokenize(loaded.train_split, tok, cfg.train.max_seq_length)
  with open(os.path.join(run_dir, "summary.json"), encoding="utf-8") as f:
    failed = {r["seed"]: r["failed"] for r in json.load(f)["runs"]}
  return dict(cfg=cfg, task=task, model=model, tok=tok, arrays=arrays, failed=failed)


def _start_params(model, seed, reinit_layers=0, reinit_pooler=False):
  """The params train.create_train_state gives `seed` (what training started from), compiled
  with the pretrained weights as an argument, as a study's create program runs it."""
  groups = probe.group_names(model.params, model.arch, model.num_layers)

  def create(pretrained, key):
    return train_lib.create_train_state(dataclasses.replace(model, params=pretrained),
                                        optax.identity(), key, 8, 4, groups, reinit_layers,
                                        reinit_pooler).params
  return jax.jit(create)(model.params, train_lib.seed_key(seed))


_JITTED = {}


def _forward(fn, params, *args):
  """fn(params, *args) under a plain jax.jit (no vmap, no lax.map), compiled once per fn."""
  if fn not in _JITTED:
    _JITTED[fn] = jax.jit(fn)
  return _JITTED[fn](params, *args)


def _direct_loss(model, params, arrays, idx):
  """Mean cross-entropy of the whole subset in one forward pass, float64 on the host."""
  batch = {k: arrays[k][idx] for k in ("input_ids", "attention_mask", "token_type_ids")}
  logits = np.asarray(_forward(model.logits, params, batch), np.float64)
  logp = logits - np.log(np.sum(np.exp(logits - logits.max(-1, keepdims=True)), -1,
                                keepdims=True)) - logits.max(-1, keepdims=True)
  return float(-np.mean(logp[np.arange(len(idx)), arrays["labels"][idx]]))


# ------------------------------------------------------------------ loss surface
@pytest.fixture(scope="module")
def surface(run_dir):
  assert ls.main([f"--workdir={run_dir}", f"--grid={GRID}", f"--examples={EXAMPLES}",
                  f"--chunk={CHUNK}", "--batch_size=16"]) == 0
  path = outputs.analysis_path(run_dir, outputs.LOSS_SURFACE)
  assert os.path.isfile(path)
  return outputs.read_npz(path)


def test_initial_params_are_what_training_started_from(inputs):
  for seed in SEEDS:
    assert tree_max_abs_diff(analysis.initial_params(inputs.model, inputs.cfg, seed),
                             _start_params(inputs.model, seed)) == 0.0


def test_initial_params_follow_reinit_stabilisers(inputs):
  import ml_collections  # pylint: disable=import-outside-toplevel
  cfg = ml_collections.ConfigDict(inputs.cfg.to_dict())
  cfg.stabilisers.reinit_layers, cfg.stabilisers.reinit_pooler = 1, True
  model = inputs.model
  want = _start_params(model, 2, reinit_layers=1, reinit_pooler=True)
  got = analysis.initial_params(model, cfg, 2)
  assert tree_max_abs_diff(got, want) == 0.0
  assert tree_max_abs_diff(got, analysis.initial_params(model, inputs.cfg, 2)) > 0


def test_surface_corners_equal_the_direct_losses_of_the_three_models(run_dir, surface,
                                                                     independent):
  z = surface
  assert z["alpha"].tolist() == [-0.5, 0.0, 0.5, 1.0, 1.5] and z["beta"].tolist() == z["alpha"].tolist()
  assert z["loss"].shape == (GRID, GRID) and np.all(np.isfinite(z["loss"]))
  f_seed, s_seed = (int(x) for x in z["seeds"])
  failed = independent["failed"]
  assert f_seed != s_seed
  if any(failed.values()):
    assert failed[f_seed]
  if not all(failed.values()):
    assert not failed[s_seed]
  model, arrays = independent["model"], independent["arrays"]
  idx = np.sort(np.random.default_rng(0).choice(len(arrays["labels"]), EXAMPLES, replace=False))
  assert z["examples"].tolist() == idx.tolist()
  theta_p = _start_params(model, f_seed)
  theta_f = checkpoint.load_params(run_dir, f_seed, model.params)
  theta_s = checkpoint.load_params(run_dir, s_seed, model.params)
  at = lambda a, b: z["loss"][z["alpha"].tolist().index(a), z["beta"].tolist().index(b)]
  direct = {(0.0, 0.0): _direct_loss(model, theta_p, arrays, idx),
            (1.0, 0.0): _direct_loss(model, theta_f, arrays, idx),
            (0.0, 1.0): _direct_loss(model, theta_s, arrays, idx)}
  for (a, b), want in direct.items():
    assert at(a, b) == pytest.approx(want, abs=1e-5, rel=1e-5), (a, b)
  # the three models are distinct points of the surface, so the checks above can tell them apart
  assert abs(direct[(1.0, 0.0)] - direct[(0.0, 1.0)]) > 1e-4
  assert abs(direct[(0.0, 0.0)] - direct[(1.0, 0.0)]) > 1e-4
  # an off-axis point: theta_p + 0.5 (theta_f - theta_p) + 1.5 (theta_s - theta_p), built by hand
  mix = jax.tree_util.tree_map(lambda p, f, s: p + 0.5 * (f - p) + 1.5 * (s - p),
                               theta_p, theta_f, theta_s)
  assert at(0.5, 1.5) == pytest.approx(_direct_loss(model, mix, arrays, idx), abs=1e-5, rel=1e-5)


def test_chunked_vmapped_grid_equals_one_unchunked_call(inputs, surface):
  f_seed, s_seed = (int(x) for x in surface["seeds"])
  theta_p = analysis.initial_params(inputs.model, inputs.cfg, f_seed)
  d_f, d_s = ls.directions(theta_p, analysis.final_params(inputs, f_seed),
                           analysis.final_params(inputs, s_seed))
  idx = ls.fixed_subset(inputs.train_arrays, EXAMPLES)
  points = ls.grid_points(surface["alpha"], surface["beta"])
  fn = ls.make_surface_fn(inputs.model, inputs.cfg.model.matmul_precision)
  # one chunk of all 25 points, one batch of all examples: no lax.map splitting anywhere
  whole = ls.evaluate_points(fn, theta_p, d_f, d_s, points,
                             ls.subset_batches(inputs.train_arrays, idx, EXAMPLES), len(points))
  chunked = ls.evaluate_points(fn, theta_p, d_f, d_s, points,
                               ls.subset_batches(inputs.train_arrays, idx, 16), 7)  # 25 = 3x7+4
  np.testing.assert_allclose(chunked, whole, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(surface["loss"].reshape(-1), whole, rtol=1e-5, atol=1e-6)
  assert points[GRID + 2].tolist() == [surface["alpha"][1], surface["beta"][2]]  # alpha-major


# ------------------------------------------------------------------ forgetting
@pytest.fixture(scope="module")
def text_file(glue_dir, tmp_path_factory):
  """Real RTE sentences as a plain-text file."""
  with open(os.path.join(glue_dir, "RTE", "train.tsv"), encoding="utf-8", newline="") as f:
    rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1:41]
  path = tmp_path_factory.mktemp("text") / "rte.txt"
  path.write_text("\n".join(r[1] + "\n" + r[2] for r in rows) + "\n", encoding="utf-8")
  return str(path)


@pytest.fixture(scope="module")
def forgetting_result(run_dir, text_file):
  assert fg.main([f"--workdir={run_dir}", f"--text={text_file}", "--block_size=64",
                  "--batch_size=8", "--max_tokens=1500"]) == 0
  with open(outputs.analysis_path(run_dir, outputs.FORGETTING), encoding="utf-8") as f:
    return json.load(f)


def _fresh_mlm(independent):
  """FlaxBertForMaskedLM built here from the classifier's config and the tiny init seed."""
  model, cfg = independent["model"], independent["cfg"]
  return tr.FlaxBertForMaskedLM(model.config, seed=int(cfg.model.tiny.init_seed))


_MLM_FN = {}


def _mlm_logits(mlm):
  if id(mlm) not in _MLM_FN:
    _MLM_FN[id(mlm)] = lambda params, ids, mask, types: mlm(
        ids, attention_mask=mask, token_type_ids=types, params=params, train=False).logits
  return _MLM_FN[id(mlm)]


def _direct_perplexity(mlm, params, masked):
  """exp(mean CE over the masked tokens): one forward of all blocks, float64 on the host."""
  logits = np.asarray(_forward(_mlm_logits(mlm), params, masked["input_ids"],
                               masked["attention_mask"], masked["token_type_ids"]), np.float64)
  top = logits.max(-1, keepdims=True)
  logp = logits - top - np.log(np.sum(np.exp(logits - top), -1, keepdims=True))
  picked = np.take_along_axis(logp, masked["labels"][..., None], -1)[..., 0]
  w = masked["weight"].astype(np.float64)
  return float(np.exp(-np.sum(picked * w) / np.sum(w)))


def test_mlm_encoder_is_the_classifier_pretrained_encoder(independent, inputs):
  model = independent["model"]
  mlm_params = _fresh_mlm(independent).params
  assert set(mlm_params) == {"bert", "cls"}
  assert set(model.params["bert"]) == {"embeddings", "encoder", "pooler"}
  assert set(mlm_params["bert"]) == {"embeddings", "encoder"}  # the MLM model has no pooler
  enc = {k: v for k, v in model.params["bert"].items() if k != "pooler"}
  assert (jax.tree_util.tree_structure(mlm_params["bert"]) == jax.tree_util.tree_structure(enc))
  assert tree_max_abs_diff(mlm_params["bert"], enc) == 0.0
  loaded = fg.load_mlm(inputs)
  assert tree_max_abs_diff(loaded.pretrained, enc) == 0.0
  assert tree_max_abs_diff(loaded.head, {"cls": mlm_params["cls"]}) == 0.0


def test_restore_top_k_swaps_exactly_the_named_groups(inputs):
  model = inputs.model
  pre = fg.backbone_of(model.params, "bert")
  ft = fg.backbone_of(analysis.final_params(inputs, 1), "bert")
  L = model.num_layers
  assert L == 2
  layer = lambda t, i: t["encoder"]["layer"][str(i)]
  for k in range(L + 1):
    got = fg.restore_top_k(ft, pre, k, L, "bert")
    for i in range(L):
      want = pre if i >= L - k else ft
      assert tree_max_abs_diff(layer(got, i), layer(want, i)) == 0.0, (k, i)
    emb = pre if k == L else ft
    assert tree_max_abs_diff(got["embeddings"], emb["embeddings"]) == 0.0, k
  kept = fg.restore_top_k(ft, pre, L, L, "bert", embeddings_at_l=False)
  assert tree_max_abs_diff(kept["embeddings"], ft["embeddings"]) == 0.0
  assert tree_max_abs_diff(ft["embeddings"], pre["embeddings"]) > 0  # fine-tuning moved them


def test_forgetting_ends_match_direct_perplexities(run_dir, inputs, independent, text_file,
                                                   forgetting_result):
  r = forgetting_result
  assert r["k"] == [0, 1, 2] and r["num_layers"] == 2
  assert [x["seed"] for x in r["runs"]] == SEEDS
  assert {x["seed"]: x["failed"] for x in r["runs"]} == independent["failed"]
  # the masked text, rebuilt from the same definition
  arrays = mlm_text.blocks(independent["tok"], mlm_text.read_text(text_file), 64, 1500)
  masked = mlm_text.mask_tokens(arrays, independent["tok"], 0.15, 0)
  assert int(masked["weight"].sum()) == r["masked_tokens"] > 0
  chosen = masked["weight"] > 0
  assert 0.10 < chosen.sum() / (arrays["attention_mask"].sum() - 2 * len(chosen)) < 0.20
  mlm = _fresh_mlm(independent)
  pretrained = _direct_perplexity(mlm, mlm.params, masked)
  assert r["pretrained_perplexity"] == pytest.approx(pretrained, rel=1e-5)
  model = independent["model"]
  for run in r["runs"]:
    final = checkpoint.load_params(run_dir, run["seed"], model.params)
    ft = {"bert": {k: v for k, v in final["bert"].items() if k != "pooler"},
          "cls": mlm.params["cls"]}
    direct0 = _direct_perplexity(mlm, ft, masked)
    assert run["perplexity"][0] == pytest.approx(direct0, rel=1e-5), run["seed"]
    assert run["perplexity"][-1] == pytest.approx(pretrained, rel=1e-5), run["seed"]
    # non-vacuous: fine-tuning changed the perplexity, and the embeddings alone matter at k = L
    assert abs(direct0 - pretrained) > 1e-4 * pretrained
    assert abs(run["perplexity_all_layers_finetuned_embeddings"] - pretrained) > 1e-6 * pretrained


def test_a_checkpoint_folder_needs_its_mlm_head(inputs, tmp_path):
  """The hub / folder path: an MLM checkpoint loads with its own head; a classifier checkpoint
  (no MLM head) is refused instead of getting a random head."""
  import ml_collections  # pylint: disable=import-outside-toplevel
  model = inputs.model
  with_head, without = tmp_path / "mlm", tmp_path / "classifier"
  mlm = tr.FlaxBertForMaskedLM(model.config, seed=7)
  mlm_params = dict(mlm.params, bert=fg.backbone_of(model.params, "bert"))
  mlm.save_pretrained(str(with_head), params=mlm_params)
  model.flax_model.save_pretrained(str(without), params=model.params)

  def with_path(folder):
    cfg = ml_collections.ConfigDict(inputs.cfg.to_dict())
    cfg.model.name_or_path = str(folder)
    return analysis.SettingInputs(inputs.name, inputs.directory, cfg, inputs.summary,
                                  inputs.task, model, inputs.tokenizer, {})
  loaded = fg.load_mlm(with_path(with_head))
  assert tree_max_abs_diff(loaded.head, {"cls": mlm.params["cls"]}) == 0.0
  assert tree_max_abs_diff(loaded.pretrained, fg.backbone_of(model.params, "bert")) == 0.0
  with pytest.raises(ConfigError, match="lacks masked-LM weights"):
    fg.load_mlm(with_path(without))


def test_albert_is_refused(inputs):
  fake = analysis.SettingInputs(inputs.name, inputs.directory, inputs.cfg, inputs.summary,
                                inputs.task, type(inputs.model)(None, {}, "albert", 2, None, "x"),
                                inputs.tokenizer, {})
  with pytest.raises(ConfigError, match="ALBERT"):
    fg.load_mlm(fake)


@pytest.mark.parametrize("arch", ["electra", "distilbert"])
def test_families_without_a_masked_lm_here_are_refused(inputs, arch):
  fake = analysis.SettingInputs(inputs.name, inputs.directory, inputs.cfg, inputs.summary,
                                inputs.task, type(inputs.model)(None, {}, arch, 2, None, "x"),
                                inputs.tokenizer, {})
  with pytest.raises(ConfigError, match=f"is a {arch} model"):
    fg.load_mlm(fake)


# ------------------------------------------------------------------ report
@pytest.fixture(scope="module")
def connectivity_result(run_dir):
  """python -m jaxstab.connectivity on the run, as small as it goes (1 interior point, 16
  examples): the report test below needs its file, tests/test_connectivity.py checks it."""
  (_, path), = cn.run(run_dir, points=1, train_examples=16)
  return json.loads(open(path, encoding="utf-8").read())


def test_report_shows_the_three_analyses(run_dir, surface, forgetting_result,
                                         connectivity_result, tmp_path):
  report = build(run_dir, str(tmp_path / "report"))
  name = "demo_devlin"
  kinds = ("loss_surface", "forgetting", "connectivity")
  assert {f"{k}_{name}" for k in kinds} <= set(report.figures)
  for key in (f"{k}_{name}" for k in kinds):
    with open(report.figures[key], "rb") as f:
      png = f.read()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
  page = open(report.index, encoding="utf-8").read()
  assert "4. Loss surface" in page and "5. Forgetting" in page and "6. Linear connectivity" in page
  assert "analysis/loss_surface.npz" in page and "analysis/forgetting.json" in page
  assert "analysis/connectivity.json" in page
  assert f"seed {int(surface['seeds'][0])}" in report.captions[f"loss_surface_{name}"]
  assert (f"{len(connectivity_result['basins'])} basin(s)"
          in report.captions[f"connectivity_{name}"])
  assert "Not computed" not in page
  # in a real browser: every image of the page is drawn, the three analyses' figures among them,
  # and the console stays clean
  counts, console = browser.probe(pathlib.Path(report.index), {
      "loss_surface.npz of": "data-surface", "forgetting.json of": "data-forgetting",
      "connectivity.json of": "data-connectivity"}, tmp_path / "profile")
  drawn, total = counts["data-images"]
  assert total >= 5 and drawn == total, counts
  for kind in ("data-surface", "data-forgetting", "data-connectivity"):
    assert counts[kind] == (1, 1), (kind, counts)
  assert not [l for l in console if "rror" in l], console


def test_report_without_analyses_says_how_to_compute_them(run_dir, tmp_path):
  copy = tmp_path / "run"
  shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("analysis", "report"))
  report = build(str(copy))
  assert not any(k.startswith(("loss_surface", "forgetting", "connectivity"))
                 for k in report.figures)
  page = open(report.index, encoding="utf-8").read()
  assert page.count("Not computed") == 3 and "python -m jaxstab.forgetting" in page
  assert "python -m jaxstab.loss_surface --workdir=" in page
  assert "python -m jaxstab.connectivity --workdir=" in page
