"""NoisyTune (Wu et al. 2022, ACL, "NoisyTune: A Little Noise Can Help You Finetune Pretrained
Language Models Better"): before fine-tuning, every parameter tensor W gets uniform noise scaled
by its own spread, W + (U(0, 1) - 0.5) * lambda * std(W).

The paper's code (its one-loop listing, section 3) runs over `model.named_parameters()` of the
classification model, so every tensor is perturbed: kernels, biases, LayerNorm scales and
biases, embeddings and the freshly drawn head alike. std is torch.std's default, the unbiased
(ddof = 1) estimate. A tensor whose spread is zero (a zero-initialised bias) gets no noise; a
one-element tensor (a regression head's bias) has no unbiased std (torch gives NaN): it is left
as it is rather than made NaN.

The noise is drawn from the seed's key, so each seed starts from its own perturbed copy of the
pretrained weights (docs/running.md, "NoisyTune").
"""
import jax
import jax.numpy as jnp

from jaxstab.infra.errors import ConfigError


def perturb(params, key, lam: float):
  """params with NoisyTune's noise of scale `lam` (jittable). One uniform draw covers every
  tensor (each takes its own slice): one random-number program instead of one per tensor, which
  on CPU cut the compile of a tiny BERT's create from 15 s to 4 s (1.4 s without NoisyTune)."""
  if lam == 0.0:
    return params
  leaves, treedef = jax.tree_util.tree_flatten(params)
  u = jax.random.uniform(key, (sum(w.size for w in leaves),), jnp.float32)
  out, start = [], 0
  for w in leaves:
    noise, start = u[start:start + w.size].reshape(w.shape), start + w.size
    if w.size < 2:
      out.append(w)
      continue
    std = jnp.std(w.astype(jnp.float32), ddof=1)
    out.append((w + (noise - 0.5) * lam * std).astype(w.dtype))
  return jax.tree_util.tree_unflatten(treedef, out)


def scale_of(stabilisers_cfg) -> float:
  """The noise scale a config's `stabilisers` group asks for: noisytune_lambda when NoisyTune is
  on, else 0 (no noise)."""
  return float(stabilisers_cfg.noisytune_lambda) if stabilisers_cfg.noisytune else 0.0


def check(stabilisers_cfg) -> None:
  """stabilisers.noisytune_lambda: a finite scale >= 0 (0 with noisytune=True perturbs nothing)."""
  lam = stabilisers_cfg.noisytune_lambda
  if not 0.0 <= lam < float("inf"):
    raise ConfigError(f"stabilisers.noisytune_lambda={lam} must be a finite number >= 0 "
                      "(the paper's default: 0.15)")
