"""Instability between seeds (jaxstab.results.agreement, .representations, .instability; issue
#31) against implementations nobody here wrote (statsmodels, scipy) and against plain NumPy
versions written below from the published formulas, on realistic random data and near-degenerate
cases. Each bound is set from the error measured on these data (numpy 2.4.6, scipy 1.17.1,
statsmodels 0.15.0), written beside it. Each comparison also catches a planted bug (a
monkeypatched function or a wrong variant): the planted version must miss by at least
MIN_MARGIN times the bound. Numpy only, no model, a few seconds.
"""
import itertools
import json
import math

import numpy as np
import pytest
from scipy.linalg import orthogonal_procrustes
from scipy.spatial.distance import jensenshannon
from statsmodels.stats.inter_rater import aggregate_raters
from statsmodels.stats.inter_rater import fleiss_kappa as sm_fleiss_kappa

from jaxstab.results import agreement, finite, instability
from jaxstab.results import representations as reps
from jaxstab.results.finite import Undefined

MIN_MARGIN = 10.0


def _caught(bug: str, err: float, bound: float):
  print(f"\nplanted {bug}: error {err:.3g} vs bound {bound:.3g} ({err / bound:.3g}x)")
  assert err >= MIN_MARGIN * bound, f"planted {bug} missed by only {err:.3g} (bound {bound:.3g})"


def _logits(seed=0, seeds=8, examples=277, classes=3, spread=1.5, sharp=None):
  """Logits that share a per-example part (the task) and differ by a per-seed part; `sharp`
  seeds get logits x 40 (near one-hot softmax: the near-degenerate case)."""
  rng = np.random.default_rng(seed)
  base = rng.normal(0, 2.0, (1, examples, classes))
  x = base + rng.normal(0, spread, (seeds, examples, classes))
  if sharp:
    x[:sharp] *= 40.0
  return x


def _failed(x, failed=2, label=0):
  """The last `failed` seeds predict `label` everywhere, with confidence (a failed run)."""
  x = x.copy()
  x[-failed:] = -5.0
  x[-failed:, :, label] = 5.0
  return x


# ============================================================ Fleiss' kappa vs statsmodels

def _sm_kappa(x):
  table, _ = aggregate_raters(np.argmax(x, axis=-1).T)   # rows: examples (subjects)
  return sm_fleiss_kappa(table, method="fleiss")


CASES = {"3 classes": dict(classes=3), "2 classes, 25 seeds": dict(classes=2, seeds=25),
         "5 classes, near one-hot": dict(classes=5, sharp=3),
         "2 seeds": dict(seeds=2), "failed seeds": dict(classes=2, seeds=10)}


@pytest.mark.parametrize("case", CASES)
def test_fleiss_kappa_matches_statsmodels(case):
  x = _logits(7, **CASES[case])
  if case == "failed seeds":
    x = _failed(x, 6)
  ours, ref = agreement.fleiss_kappa(x), _sm_kappa(x)
  assert abs(ours - ref) <= 1e-12, (ours, ref)      # measured 0 (identical) in all five


def test_fleiss_kappa_with_raters_and_subjects_swapped_is_caught():
  x = _logits(7, classes=3)
  ref = _sm_kappa(x)
  planted = agreement.fleiss_kappa(np.swapaxes(x, 0, 1))   # examples as raters, seeds as subjects
  _caught("kappa with raters and subjects swapped", abs(planted - ref), 1e-12)


def test_fleiss_kappa_is_undefined_when_every_seed_predicts_one_class():
  x = _failed(_logits(1, seeds=5), failed=5, label=1)
  k = agreement.fleiss_kappa(x)
  assert isinstance(k, Undefined)
  assert "class 1" in k.reason and "0/0" in k.reason and "5 seeds" in k.reason
  with np.errstate(divide="ignore", invalid="ignore"):
    assert math.isnan(_sm_kappa(x))                # what the division gives instead
  block = instability.predictions_block(x)
  assert block["fleiss_kappa"] is None and "0/0" in finite.reason(block, "fleiss_kappa")
  assert block["disagreement"] == 0.0 and block["consistency_mean"] == 1.0
  assert finite.shown(block, "fleiss_kappa", str).startswith("undefined: every one")


# ============================================================ JSD vs scipy

@pytest.mark.parametrize("case", ["3 classes", "5 classes, near one-hot", "2 seeds"])
def test_jsd_matches_scipy_jensenshannon_squared(case):
  x = _logits(3, **CASES[case])
  p = agreement.probabilities(x)
  ref = np.mean([jensenshannon(p[i], p[j], axis=-1) ** 2
                 for i, j in itertools.combinations(range(len(p)), 2)])
  assert abs(agreement.jsd(x) - ref) <= 1e-12        # measured <= 5.6e-17 (values ~0.12)
  assert abs(agreement.jsd(p, kind="probs") - ref) <= 1e-12


def test_jsd_with_exact_zeros_and_identical_rows():
  p = np.array([[[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]], [[0.0, 1.0, 0.0], [0.5, 0.5, 0.0]]])
  assert agreement.jsd(p, kind="probs") == pytest.approx(math.log(2) / 2, abs=1e-15)
  assert jensenshannon(p[0, 0], p[1, 0]) ** 2 == pytest.approx(math.log(2), abs=1e-15)


def test_jsd_in_bits_is_caught(monkeypatch):
  x = _logits(3)
  p = agreement.probabilities(x)
  ref = np.mean([jensenshannon(p[i], p[j], axis=-1) ** 2
                 for i, j in itertools.combinations(range(len(p)), 2)])
  real = agreement.js_divergence
  monkeypatch.setattr(agreement, "js_divergence", lambda a, b: real(a, b) / math.log(2))
  _caught("JSD in bits", abs(agreement.jsd(x) - ref), 1e-12)


# ============================================================ disagreement, consistency, subsets

def test_disagreement_and_consistency_from_their_definitions():
  x = _logits(5, seeds=6, classes=3)
  pred = np.argmax(x, axis=-1)
  pairs = [(pred[i] != pred[j]).mean() for i in range(6) for j in range(6) if i < j]
  assert agreement.disagreement(x) == pytest.approx(np.mean(pairs), abs=1e-15)
  c = agreement.consistency(x)
  brute = [np.max(np.bincount(pred[:, e], minlength=3)) / 6 for e in range(x.shape[1])]
  assert np.array_equal(c, brute)
  s = agreement.consistency_summary(x)
  assert s["mean"] == pytest.approx(np.mean(brute)) and s["min"] == min(brute)
  assert s["quantiles"]["0.5"] == pytest.approx(np.median(brute))
  assert s["unanimous"] == pytest.approx(np.mean(np.array(brute) == 1.0))


def test_successful_subset_by_mask_and_by_indices():
  x = _failed(_logits(2, seeds=8, classes=2), failed=3)
  ok = np.array([True] * 5 + [False] * 3)
  for f in (agreement.disagreement, agreement.jsd, agreement.fleiss_kappa):
    alone = f(x[:5])
    assert f(x, seeds=ok) == alone and f(x, seeds=[0, 1, 2, 3, 4]) == alone
  # the failed seeds agree perfectly among themselves; all together look more alike than the
  # successful ones alone
  assert agreement.disagreement(x, seeds=~ok) == 0.0
  assert isinstance(agreement.fleiss_kappa(x, seeds=~ok), Undefined)
  block = instability.instability(x, successful=ok)
  assert block["successful"]["seeds"] == 5 and block["seeds"] == 8
  assert block["successful"]["disagreement"] == agreement.disagreement(x[:5])
  assert block["successful"]["consistency_mean"] == pytest.approx(
      agreement.consistency(x[:5]).mean())
  one = instability.predictions_block(x, seeds=[0])
  assert one["disagreement"] is None and "1 seed" in finite.reason(one, "disagreement")


def test_a_diverged_seed_is_dropped_and_counted():
  x = _logits(2, seeds=5)
  x[1, 3, 0] = np.nan
  with pytest.raises(ValueError, match="agreement.disagreement: outputs holds 1 non-finite"):
    agreement.disagreement(x)
  block = instability.predictions_block(x)
  assert block["seeds"] == 4 and block["of"] == 5 and "4 of 5" in block["note"]
  assert block["jsd"] == agreement.jsd(np.delete(x, 1, axis=0))
  json.dumps(block, allow_nan=False)


@pytest.mark.parametrize("call,match", [
    (lambda: agreement.jsd(np.zeros((3, 4))), "outputs must be \\[seeds, examples, classes\\]"),
    (lambda: agreement.jsd(np.zeros((3, 4, 2)), kind="softmax"), "kind: one of"),
    (lambda: agreement.disagreement(np.zeros((3, 4, 2)), seeds=[True, False]), "seeds: a boolean"),
    (lambda: agreement.disagreement(np.zeros((3, 4, 2)), seeds=[0, 3]), "seeds: indices"),
    (lambda: agreement.jsd(np.full((2, 4, 2), 0.7), kind="probs"), "outputs: kind='probs'"),
    (lambda: reps.linear_cka(np.zeros((5, 3)), np.zeros((6, 3))), "X and Y must hold the same"),
    (lambda: reps.svcca(np.zeros(5), np.zeros((5, 2))), "X must be \\[examples, dims\\]"),
    (lambda: reps.linear_cka(np.ones((5, 3)), np.ones((5, 3)), "debiased"), "estimator: one of"),
    (lambda: reps.matrices(np.zeros((2, 5, 3)), "cka"), "reps must be"),
    (lambda: instability.predictions_block(np.zeros((2, 4, 2)), task_type="ranking"), "task_type"),
])
def test_refusals_name_the_argument(call, match):
  with pytest.raises(ValueError, match=match):
    call()


# ============================================================ regression: ICC(2,1)

def test_icc_matches_the_shrout_fleiss_formula_from_statsmodels_anova():
  """The mean squares from statsmodels' two-way ANOVA (long format, examples and seeds as
  factors), put into Shrout & Fleiss' ICC(2,1)."""
  import pandas as pd  # pylint: disable=import-outside-toplevel
  from statsmodels.formula.api import ols  # pylint: disable=import-outside-toplevel
  from statsmodels.stats.anova import anova_lm  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(4)
  k, n = 6, 60
  y = rng.normal(2.5, 1.2, n)[None] + rng.normal(0, 0.3, (k, 1)) + rng.normal(0, 0.5, (k, n))
  df = pd.DataFrame({"y": y.ravel(), "seed": np.repeat(np.arange(k), n),
                     "ex": np.tile(np.arange(n), k)})
  table = anova_lm(ols("y ~ C(ex) + C(seed)", df).fit())
  ms = table["sum_sq"] / table["df"]
  msr, msc, mse = ms["C(ex)"], ms["C(seed)"], ms["Residual"]
  ref = (msr - mse) / (msr + (k - 1) * mse + k * (msc - mse) / n)
  assert abs(agreement.icc(y) - ref) <= 1e-10           # measured 1.1e-15
  pairs = [np.mean((y[i] - y[j]) ** 2) for i in range(k) for j in range(i + 1, k)]
  assert agreement.mean_squared_difference(y[..., None]) == pytest.approx(np.mean(pairs))
  # absolute agreement: a seed that shifts every prediction lowers it (ICC(3,1) would not move)
  shifted = y.copy()
  shifted[0] += 2.0
  assert agreement.icc(shifted) < agreement.icc(y) - 0.1
  assert isinstance(agreement.icc(np.full((3, 5), 2.0)), Undefined)
  block = instability.predictions_block(y, task_type="regression")
  assert block["icc_form"] == "ICC(2,1)" and block["icc"] == agreement.icc(y)


# ============================================================ linear CKA vs the formulas

def _reps(seed=0, n=277, dx=384, dy=384, shared=0.7, offset=3.0):
  """Two seeds' layers: a shared latent seen through different random maps, plus noise, and a
  large common offset (as first-token representations have)."""
  rng = np.random.default_rng(seed)
  z = rng.normal(size=(n, 32))
  x = z @ rng.normal(size=(32, dx)) + rng.normal(0, 1 - shared + 0.1, (n, dx)) + offset
  y = shared * z @ rng.normal(size=(32, dy)) + rng.normal(0, 1.0, (n, dy)) + offset
  return x, y


def _cka_features(x, y):
  """Kornblith et al. (2019), eq. for linear CKA in feature space: ||Y'X||_F^2 / (||X'X||_F
  ||Y'Y||_F), columns centred."""
  x, y = x - x.mean(0), y - y.mean(0)
  return np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))


def _u_centre(k):
  """U-centring (Szekely & Rizzo 2014): <U(K), U(L)> / (n (n-3)) is the unbiased HSIC."""
  n = k.shape[0]
  k = k - np.diag(np.diag(k))
  r = k.sum(0)
  u = k - r[:, None] / (n - 2) - r[None, :] / (n - 2) + r.sum() / ((n - 1) * (n - 2))
  np.fill_diagonal(u, 0.0)
  return u


def _cka_unbiased_ucentred(x, y):
  kx, ky = _u_centre(x @ x.T), _u_centre(y @ y.T)
  return np.sum(kx * ky) / np.sqrt(np.sum(kx * kx) * np.sum(ky * ky))


def _hsic_u_statistic(k, l):
  """The definition: the mean over ordered 4-tuples of distinct examples of
  K_ij L_ij + K_ij L_qr - 2 K_ij L_iq (unbiased for HSIC); n^4 work, so small n only."""
  t = np.array(list(itertools.permutations(range(k.shape[0]), 4)))
  i, j, q, r = t.T
  return np.mean(k[i, j] * l[i, j] + k[i, j] * l[q, r] - 2 * k[i, j] * l[i, q])


CKA_DATA = {"277 x 384": dict(), "277 x 1024 vs 384": dict(dx=1024),
            "unrelated": dict(shared=0.0), "nearly identical": dict(shared=0.999),
            "few examples": dict(n=12, dx=50, dy=40)}


@pytest.mark.parametrize("case", CKA_DATA)
def test_linear_cka_matches_the_formulas(case):
  x, y = _reps(1, **CKA_DATA[case])
  b, u = reps.linear_cka(x, y, "biased"), reps.linear_cka(x, y)
  assert abs(b - _cka_features(x, y)) <= 1e-12             # measured <= 1.8e-15
  assert abs(u - _cka_unbiased_ucentred(x, y)) <= 1e-12    # measured <= 3.9e-16
  assert abs(reps.linear_cka(x, x) - 1.0) <= 1e-12


def test_unbiased_hsic_is_the_u_statistic():
  x, y = _reps(2, n=9, dx=5, dy=7)
  k, l = x @ x.T, y @ y.T
  ref = _hsic_u_statistic(k, l)
  assert abs(reps.hsic_unbiased(k, l) - ref) <= 1e-12 * abs(ref)  # measured 4.4e-15 relative
  assert abs(np.sum(_u_centre(k) * _u_centre(l)) / (9 * 6) - ref) <= 1e-12 * abs(ref)  # 6e-16


def test_unbiased_cka_reads_about_zero_for_unrelated_seeds_where_the_plain_one_reads_high():
  rng = np.random.default_rng(0)
  x, y = rng.normal(size=(277, 1024)), rng.normal(size=(277, 1024))
  assert reps.linear_cka(x, y, "biased") > 0.7           # measured 0.786
  assert abs(reps.linear_cka(x, y)) < 0.01               # measured 1.7e-4


def test_uncentred_cka_is_caught(monkeypatch):
  x, y = _reps(1)
  ref_b, ref_u = _cka_features(x, y), _cka_unbiased_ucentred(x, y)
  monkeypatch.setattr(reps, "_pair", lambda a, b, f: (np.asarray(a, float), np.asarray(b, float)))
  monkeypatch.setattr(reps, "hsic_biased",
                      lambda k, l: float(np.sum(k * l)) / (k.shape[0] - 1) ** 2)
  _caught("uncentred CKA (biased)", abs(reps.linear_cka(x, y, "biased") - ref_b), 1e-12)
  # The unbiased estimator does not centre; its U-statistic is unchanged by a common shift,
  # so the bug that shows there is a biased HSIC in place of the unbiased one.
  monkeypatch.setattr(reps, "hsic_unbiased", reps.hsic_biased)
  _caught("plain HSIC inside the unbiased CKA", abs(reps.linear_cka(x, y) - ref_u), 1e-12)


# ============================================================ Procrustes vs scipy

def _procrustes_scipy(x, y):
  x, y = x - x.mean(0), y - y.mean(0)
  x, y = x / np.linalg.norm(x), y / np.linalg.norm(y)
  r, _ = orthogonal_procrustes(x, y)
  return np.linalg.norm(x @ r - y) ** 2


# 128 dims: the error does not grow with width (measured the same at 384), the time does.
PROC_DATA = {"277 x 128": dict(dx=128, dy=128), "unrelated": dict(dx=128, dy=128, shared=0.0),
             "nearly identical": dict(dx=128, dy=128, shared=0.999),
             "more dims than examples": dict(n=60, dx=128, dy=128)}


@pytest.mark.parametrize("case", PROC_DATA)
def test_procrustes_matches_scipy_orthogonal_procrustes(case):
  x, y = _reps(3, **PROC_DATA[case])
  d = reps.procrustes(x, y)
  assert 0.0 <= d <= 2.0
  assert abs(d - _procrustes_scipy(x, y)) <= 1e-12          # measured <= 1.6e-15 (1.3e-15 at 384)
  # rotation and scale of one side change nothing
  q = np.linalg.qr(np.random.default_rng(0).normal(size=(x.shape[1],) * 2))[0]
  assert abs(reps.procrustes(5.0 * x @ q, y) - d) <= 1e-12


def test_procrustes_of_different_widths_is_that_of_the_zero_padded_one():
  x, y = _reps(3, dx=160, dy=128)
  padded = np.hstack([y, np.full((y.shape[0], 32), 0.0)])
  assert abs(reps.procrustes(x, y) - _procrustes_scipy(x, padded)) <= 1e-12


def test_procrustes_without_centring_is_caught(monkeypatch):
  x, y = _reps(3, dx=128, dy=128)
  ref = _procrustes_scipy(x, y)
  monkeypatch.setattr(reps, "_pair", lambda a, b, f: (np.asarray(a, float), np.asarray(b, float)))
  _caught("Procrustes without centring", abs(reps.procrustes(x, y) - ref), 1e-12)


# ============================================================ SVCCA vs a NumPy CCA

def _svcca_reference(x, y, variance=0.99, cap=None):
  """Principal components from the covariance's eigenvectors, the 99% rule with the cap
  n // 10, then classical CCA: the canonical correlations are the square roots of the
  eigenvalues of Sxx^-1 Sxy Syy^-1 Syx."""
  n = x.shape[0]
  cap = n // 10 if cap is None else cap

  def reduce(a):
    a = a - a.mean(0)
    w, v = np.linalg.eigh(a.T @ a)
    w, v = w[::-1], v[:, ::-1]
    k = min(int(np.argmax(np.cumsum(w) / w.sum() >= variance)) + 1, cap)
    return a @ v[:, :k]
  a, b = reduce(x), reduce(y)
  sxx, syy, sxy = a.T @ a, b.T @ b, a.T @ b
  m = np.linalg.solve(sxx, sxy) @ np.linalg.solve(syy, sxy.T)
  ev = np.sort(np.linalg.eigvals(m).real)[::-1][:min(a.shape[1], b.shape[1])]
  return float(np.mean(np.sqrt(np.clip(ev, 0, 1))))


SVCCA_DATA = {"277 x 256": dict(dx=256, dy=256), "unrelated": dict(dx=256, shared=0.0),
              "nearly identical": dict(dx=256, dy=256, shared=0.999),
              "1000 examples": dict(n=1000, dx=128, dy=64), "low rank": dict(dx=40, dy=40)}


@pytest.mark.parametrize("case", SVCCA_DATA)
def test_svcca_matches_a_numpy_cca(case):
  x, y = _reps(4, **SVCCA_DATA[case])
  assert abs(reps.svcca(x, y) - _svcca_reference(x, y)) <= 1e-11  # measured <= 6.7e-16
  assert reps.svcca_cap(x.shape[0]) == x.shape[0] // 10


def test_svcca_without_the_cap_is_caught(monkeypatch):
  x, y = _reps(4, dx=256, shared=0.0)
  ref = _svcca_reference(x, y)
  monkeypatch.setattr(reps, "svcca_cap", lambda n: 10 ** 6)
  planted = reps.svcca(x, y)
  assert planted > 0.9             # measured 0.926 against 0.263 capped: uncapped reads about 1
  _caught("SVCCA without the cap", abs(planted - ref), 1e-11)


# ============================================================ [layers][seeds][seeds]

def test_matrices_are_symmetric_with_the_pairwise_values():
  rng = np.random.default_rng(6)
  base = rng.normal(size=(1, 2, 40, 24))
  r = base + rng.normal(0, 0.5, (4, 2, 40, 24))
  r[:, 0] = base[:, 0]                   # layer 0 identical in every seed
  r[3, 1] = 1.5                          # seed 3's layer 1 constant
  r = r.astype(np.float16)
  for measure, f in (("cka", reps.linear_cka), ("procrustes", reps.procrustes),
                     ("svcca", reps.svcca)):
    m, why = reps.matrices(r, measure)
    diag = reps.MEASURES[measure]
    assert len(m) == 2 and all(len(row) == 4 for row in m[0])
    assert np.allclose(np.array(m[0], float), diag, atol=1e-9)
    layer = m[1]
    for i in range(4):
      assert layer[i][i] == diag
      for j in range(i + 1, 4):
        if 3 in (i, j):
          assert layer[i][j] is None and "0/0" in why[f"layer 1, seeds {i}-{j}"]
        else:
          v = f(r[i, 1], r[j, 1])
          assert layer[i][j] == layer[j][i] and abs(layer[i][j] - v) <= 1e-12
  block = instability.instability(_logits(0, seeds=4, examples=40), representations=r)
  assert block["cka"] == reps.matrices(r, "cka")[0] and block["svcca_cap"] == 4
  assert "cka: layer 1, seeds 0-3" in block[finite.UNDEFINED]
  json.dumps(block, allow_nan=False)


def test_a_diverged_seeds_representations_leave_the_others_measured():
  """A diverged seed's NaN (or float16 inf) representations make its row and column null with
  the reason, and every other cell equals the measures over the finite seeds alone, at the same
  seeds' places (a planted off-by-one in the renumbering would move them)."""
  rng = np.random.default_rng(5)
  r = rng.normal(size=(4, 2, 30, 8)).astype(np.float16)
  r[1, 1, 3, 2] = np.inf
  logits = rng.normal(size=(4, 30, 2))
  block = instability.instability(logits, representations=r)
  direct, _ = reps.matrices(r[[0, 2, 3]], "cka")
  for layer in range(2):
    m = block["cka"][layer]
    assert all(m[1][j] is None and m[j][1] is None for j in range(4))
    for a, i in enumerate((0, 2, 3)):
      for b, j in enumerate((0, 2, 3)):
        assert m[i][j] == direct[layer][a][b]
  assert "NaN or inf" in block["undefined"]["seed 1"]
  assert block["procrustes"][0][2][3] is not None and block["svcca"][1][0][3] is not None


def test_a_layer_undefined_for_every_pair_is_one_reason():
  """The first token after the embeddings is one vector for every example: that layer's cells
  are all null and the block says so once per measure, while a layer where only one seed is
  constant keeps its reasons per pair (they name which seeds)."""
  rng = np.random.default_rng(6)
  r = rng.normal(size=(4, 3, 20, 6))
  r[:, 0] = 1.5                      # layer 0: constant for every seed
  r[2, 2] = -0.5                     # layer 2: constant for seed 2 only
  block = instability.instability(rng.normal(size=(4, 20, 2)), representations=r)
  why = block["undefined"]
  assert all(v is None for row in block["cka"][0] for i, v in enumerate(row) if v != 1.0)
  assert "same for every example" in why["cka: layer 0, every pair"]
  assert not any(k.startswith("cka: layer 0, seeds") for k in why)
  assert sorted(k for k in why if k.startswith("cka: layer 2")) == [
      "cka: layer 2, seeds 0-2", "cka: layer 2, seeds 1-2", "cka: layer 2, seeds 2-3"]
  assert block["cka"][1][0][3] is not None
