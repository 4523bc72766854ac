"""How alike two seeds' representations of the dev set are, layer by layer (issue #31, part 2):
linear CKA, orthogonal Procrustes distance and SVCCA, and the [layers][seeds][seeds] matrices
that answer "in which layer do seeds part?". numpy only.

X, Y: [examples, dims] (one layer, two seeds, the same examples in the same order; the dims may
differ). Every measure centres each column over the examples first: a representation shifted by
a constant vector carries the same information. Computed in float64 (stored float16 is widened).
A NaN or inf is refused (ValueError); a measure the data do not define (a representation that
is the same for every example) is `finite.Undefined(reason)` (jaxstab.results.finite).
"""
import numpy as np

from jaxstab.infra import blas
from jaxstab.results import finite
from jaxstab.results.finite import Undefined

CKA_ESTIMATORS = ("unbiased", "biased")
VARIANCE = 0.99          # SVCCA keeps the directions that hold this share of the variance ...
EXAMPLES_PER_DIM = 10    # ... at most examples // 10 of them (see svcca)


def _pair(x, y, function: str):
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  for name, a in (("X", x), ("Y", y)):
    if a.ndim != 2:
      raise ValueError(f"{function}: {name} must be [examples, dims], got shape {a.shape}")
    finite.check(a, function, name)
  if x.shape[0] != y.shape[0]:
    raise ValueError(f"{function}: X and Y must hold the same examples, got {x.shape[0]} and "
                     f"{y.shape[0]} rows")
  return x - x.mean(axis=0), y - y.mean(axis=0)


def _constant(function: str) -> Undefined:
  return Undefined(f"{function}: a representation is the same for every example (0/0)")


# ---------------------------------------------------------------- linear CKA
def hsic_biased(k: np.ndarray, l: np.ndarray) -> float:
  """tr(K H L H) / (n-1)^2 for Gram matrices K, L (Gretton et al. 2005), H the centring matrix."""
  n = k.shape[0]
  h = np.eye(n) - 1.0 / n
  return float(np.sum((h @ k @ h) * l)) / (n - 1) ** 2


def hsic_unbiased(k: np.ndarray, l: np.ndarray) -> float:
  """The unbiased HSIC estimator of Song et al. (2012, JMLR, eq. 5), as Nguyen, Raghu & Kornblith
  (2021) use it for CKA: with K~, L~ the Gram matrices with their diagonals set to 0,
      [tr(K~ L~) + 1'K~1 1'L~1 / ((n-1)(n-2)) - 2/(n-2) 1'K~L~1] / (n (n-3)),   n >= 4."""
  n = k.shape[0]
  kt, lt = k - np.diag(np.diag(k)), l - np.diag(np.diag(l))
  one_k, one_l = kt.sum(axis=0), lt.sum(axis=0)
  return float(np.sum(kt * lt) + one_k.sum() * one_l.sum() / ((n - 1) * (n - 2))
               - 2.0 / (n - 2) * (one_k @ one_l)) / (n * (n - 3))


@blas.one_thread
def linear_cka(x, y, estimator: str = "unbiased"):
  """Linear CKA (Kornblith et al. 2019): HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) with the linear
  kernels K = X X', L = Y Y'. 1: the same representation up to rotation and isotropic scale;
  invariant to both, not to other linear maps.

  `estimator="unbiased"` (the default) uses Song et al.'s unbiased HSIC (`hsic_unbiased`, as
  Nguyen et al. 2021); "biased" the plain one of Kornblith et al. The default is unbiased
  because here the examples are few against the dims (277 RTE dev examples, 384-1,024 dims): the
  plain estimator then reads high for representations that share nothing (two independent
  Gaussian 277 x 1,024 matrices read about 0.8), so a seed pair would look alike for want of
  data; the unbiased one reads about 0 there. It can be slightly negative, and needs 4 examples."""
  if estimator not in CKA_ESTIMATORS:
    raise ValueError(f"estimator: one of {CKA_ESTIMATORS}, got {estimator!r}")
  x, y = _pair(x, y, "representations.linear_cka")
  if estimator == "unbiased" and x.shape[0] < 4:
    return Undefined(f"the unbiased HSIC needs 4 examples, got {x.shape[0]}")
  if not np.any(x) or not np.any(y):
    return _constant("linear CKA")
  k, l = x @ x.T, y @ y.T
  hsic = _hsic(estimator)
  return _cka(k, l, hsic(k, k), hsic(l, l), estimator)


def _hsic(estimator: str):
  return hsic_unbiased if estimator == "unbiased" else hsic_biased


def _cka(k, l, kk: float, ll: float, estimator: str):
  if kk <= 0.0 or ll <= 0.0:   # the unbiased self-HSIC of a near-constant representation
    return Undefined(f"linear CKA: a self-HSIC is {min(kk, ll):.3g} <= 0 ({estimator} estimator)")
  return _hsic(estimator)(k, l) / float(np.sqrt(kk * ll))


# ---------------------------------------------------------------- orthogonal Procrustes
def _unit(x: np.ndarray):
  """Centred x scaled to unit Frobenius norm, or None when it is constant."""
  norm = np.linalg.norm(x)
  return None if norm == 0.0 else x / norm


def scores(x: np.ndarray) -> np.ndarray:
  """U S of the thin SVD of x [n, d] ([n, min(n, d)]): x's coordinates in its principal
  directions. x' y and (U S)_x' (U S)_y differ by orthonormal factors only, so they share their
  singular values; with few examples this turns a d x d problem into an n x n one."""
  u, s, _ = np.linalg.svd(x, full_matrices=False)
  return u * s


def _procrustes(px: np.ndarray, py: np.ndarray) -> float:
  return max(0.0, 2.0 - 2.0 * float(np.linalg.svd(px.T @ py, compute_uv=False).sum()))


@blas.one_thread
def procrustes(x, y):
  """The orthogonal Procrustes distance in its squared form (Ding, Denain & Steinhardt 2021):
  centre each column, scale X and Y to unit Frobenius norm, then
      d = min over orthogonal R of ||X R - Y||_F^2 = 2 - 2 ||X'Y||_*   (nuclear norm), in [0, 2].
  0: the same up to rotation and scale; 2: orthogonal. This squared form, not 1 - ||X'Y||_*
  (its half), because it is the residual that orthogonal Procrustes minimises, checked against
  scipy.linalg.orthogonal_procrustes, and the form under which Ding et al. compare it with CKA.
  X and Y must have the same dims (R is square) unless one is padded with zero columns, which
  does not change d: that is what happens here when they differ."""
  x, y = _pair(x, y, "representations.procrustes")
  x, y = _unit(x), _unit(y)
  if x is None or y is None:
    return _constant("Procrustes")
  return _procrustes(scores(x), scores(y))


# ---------------------------------------------------------------- SVCCA
def svcca_cap(examples: int) -> int:
  """The most directions SVCCA keeps per side: examples // 10 (at least 1). Why: the canonical
  correlations of two k-dimensional subspaces drawn at random in n examples average about 0.27
  at k = n / 10 (measured, n = 277 and 1,000), but 0.53 at k = 100 of 277, and two subspaces
  with k_x + k_y > n - 1 share directions, so correlations of exactly 1 appear. Keeping 99% of
  the variance of a 1,024-dim layer on 277 examples keeps most of the 276 directions, and SVCCA
  then reads about 1 for any two seeds. A cap proportional to n keeps the chance level the same
  for a 277-example and a 1,000-example dev slice."""
  return max(1, int(examples) // EXAMPLES_PER_DIM)


def _directions(x: np.ndarray, variance: float, cap: int):
  """The left singular vectors of centred x that hold `variance` of its variance, at most cap."""
  u, s, _ = np.linalg.svd(x, full_matrices=False)
  var = s * s
  if var.sum() <= 0.0:
    return None
  keep = int(np.searchsorted(np.cumsum(var) / var.sum(), variance - 1e-12) + 1)
  return u[:, :min(keep, cap, u.shape[1])]


@blas.one_thread
def svcca(x, y, variance: float = VARIANCE, cap=None):
  """SVCCA (Raghu et al. 2017): centre, keep each side's top singular directions that hold
  `variance` (0.99) of its variance, at most `cap` of them (default `svcca_cap(examples)`), then
  the mean of the canonical correlations between the two reduced representations (the singular
  values of Ux' Uy, Ux and Uy the kept directions, orthonormal). 1: one reduced space contains
  the other; about 0.27 at the cap for unrelated spaces (see svcca_cap)."""
  if not 0.0 < variance <= 1.0:
    raise ValueError(f"variance: a share in (0, 1], got {variance}")
  x, y = _pair(x, y, "representations.svcca")
  cap = svcca_cap(x.shape[0]) if cap is None else int(cap)
  if cap < 1:
    raise ValueError(f"cap: at least 1 direction, got {cap}")
  ux, uy = _directions(x, variance, cap), _directions(y, variance, cap)
  if ux is None or uy is None:
    return _constant("SVCCA")
  rho = np.clip(np.linalg.svd(ux.T @ uy, compute_uv=False), 0.0, 1.0)
  return float(rho.mean())


# ---------------------------------------------------------------- every pair of seeds, per layer
MEASURES = {"cka": 1.0, "procrustes": 0.0, "svcca": 1.0}   # measure -> its value on the diagonal


@blas.one_thread
def matrices(reps, measure: str, estimator: str = "unbiased"):
  """[layers][seeds][seeds] of `measure` ("cka", "procrustes" or "svcca") between every two
  seeds, from reps [seeds, layers, examples, dims] (float16 is widened): symmetric, the diagonal
  1 for CKA and SVCCA, 0 for Procrustes. Returns (matrix as nested lists with None where
  undefined, {"layer l, seeds i-j": reason} for those cells). Each seed's layer is centred and
  factored once, then the pairs cost an examples x examples product each."""
  if measure not in MEASURES:
    raise ValueError(f"measure: one of {tuple(MEASURES)}, got {measure!r}")
  r = np.asarray(reps)
  if r.ndim != 4:
    raise ValueError(f"reps must be [seeds, layers, examples, dims], got shape {r.shape}")
  seeds, layers = r.shape[:2]
  out, why = [], {}
  for layer in range(layers):  # one layer widened at a time: BERT-large on MNLI is 1.3 GB float16
    cells = [[MEASURES[measure] if i == j else None for j in range(seeds)] for i in range(seeds)]
    finite.check(r[:, layer], "representations.matrices", f"reps of layer {layer}")
    prepared = [_prepare(r[s, layer], measure, estimator) for s in range(seeds)]
    for i in range(seeds):
      for j in range(i + 1, seeds):
        v = _between(prepared[i], prepared[j], measure, estimator)
        if isinstance(v, Undefined):
          why[f"layer {layer}, seeds {i}-{j}"] = v.reason
          v = None
        cells[i][j] = cells[j][i] = v
    out.append(cells)
  return out, why


def _prepare(x, measure: str, estimator: str):
  """What one seed's layer contributes to every pair: its Gram matrix and self-HSIC (CKA), its
  principal scores after unit scaling (Procrustes), its kept directions (SVCCA); None if
  constant."""
  x = np.asarray(x, np.float64)
  x = x - x.mean(axis=0)
  if not np.any(x):
    return None
  if measure == "cka":
    if estimator == "unbiased" and x.shape[0] < 4:
      return Undefined(f"the unbiased HSIC needs 4 examples, got {x.shape[0]}")
    k = x @ x.T
    return k, _hsic(estimator)(k, k)
  if measure == "procrustes":
    return scores(_unit(x))
  return _directions(x, VARIANCE, svcca_cap(x.shape[0]))


def _between(a, b, measure: str, estimator: str):
  for side in (a, b):
    if isinstance(side, Undefined):
      return side
  if a is None or b is None:
    return _constant({"cka": "linear CKA", "procrustes": "Procrustes", "svcca": "SVCCA"}[measure])
  if measure == "cka":
    return _cka(a[0], b[0], a[1], b[1], estimator)
  if measure == "procrustes":
    return _procrustes(a, b)
  return float(np.clip(np.linalg.svd(a.T @ b, compute_uv=False), 0.0, 1.0).mean())
