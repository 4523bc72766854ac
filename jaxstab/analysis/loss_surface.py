"""The training-loss surface on the plane through the pretrained, a failed and a successful model
(the paper's Fig. 7):

    f(alpha, beta) = L(theta_p + alpha (theta_f - theta_p) + beta (theta_s - theta_p))

on a grid (default 21 x 21, alpha and beta in [-0.5, 1.5]), so theta_p sits at (0, 0), theta_f
at (1, 0) and theta_s at (0, 1). L is the training loss (train.task_loss: the mean
cross-entropy, or the mean squared error of a regression task such as STS-B) of the
deterministic forward pass (no dropout) on a fixed subset of the training set (default 256
examples drawn without replacement by `subset_seed`, in their original order).

All grid points are evaluated by ONE jitted function: grid points are cut into chunks of
`chunk` (alpha, beta) pairs, each chunk is `jax.vmap`ped over its points, and `jax.lax.map` runs
the chunks one after another, so memory is bounded by `chunk` parameter copies plus `chunk` x
`batch_size` activations (the subset is itself evaluated `batch_size` examples at a time).

Which theta_p. The backbone is the pretrained model, rebuilt from the setting's config.json exactly
as training built it (a tiny-* model's random "pretrained" weights are a function of
model.tiny.init_seed). A classification head has no pretrained value; the paper's theta_p holds the
*initial* head. We use the failed run's initial parameters, exactly what train.create_train_state
gave that run (its head from fold_in(seed_key(init seed), HEAD), and its re-drawn pooler / top
layers when the setting re-initialises them). The init seed is the run's own number for a plain
run; a data_seeds grid run 3002 started from init seed 3 (analysis.init_seed, by the study's
numbering), so its number must not be used as a seed. Then the segment alpha in [0, 1],
beta = 0 is precisely the failed run's start-to-end line, f(0, 0) is the loss that run started
from, and the successful run started from a point that differs from theta_p only in its own head
draw (small: N(0, 0.02)). A zero head would be a point no run started from.

Command line (the report only reads the file this writes, and draws it: jaxstab.report.analyses):

    python -m jaxstab.loss_surface --workdir=DIR [--setting=NAME] [--grid=21]
        [--examples=256] [--chunk=16] [--batch_size=64]
"""
import dataclasses
import os
import sys
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxstab import analysis
from jaxstab.data import dataset
from jaxstab.engine import precision, train as train_lib
from jaxstab.infra import cli, fs
from jaxstab.infra.errors import ConfigError
from jaxstab.results import outputs, picks, records

DEFAULT_GRID = 21
DEFAULT_RANGE = (-0.5, 1.5)
DEFAULT_EXAMPLES = 256
DEFAULT_CHUNK = 16
DEFAULT_BATCH = 64


# ------------------------------------------------------------------ pure pieces
def fixed_subset(arrays: dict, examples: int, seed: int = 0) -> np.ndarray:
  """Indices of `examples` training examples (all when the set is smaller), drawn without
  replacement by `seed` and sorted: the same subset every time."""
  n = len(arrays["labels"])
  if examples <= 0 or examples >= n:
    return np.arange(n)
  return np.sort(np.random.default_rng(seed).choice(n, size=examples, replace=False))


def subset_batches(arrays: dict, idx: np.ndarray, batch_size: int) -> dict:
  """The subset as [num_batches, batch_size, ...] arrays plus a weight (0 for padding rows)."""
  sub = {k: arrays[k][idx] for k in ("input_ids", "attention_mask", "token_type_ids", "labels")}
  return dataset.eval_batches(sub, min(batch_size, len(idx)))


def make_loss(model, pass_segment_ids: bool = True):
  """loss(params, batches) -> mean weighted training loss (train.task_loss: cross-entropy, or
  MSE for a one-output regression head) over all real examples of `batches` (deterministic
  forward, one batch at a time with lax.map)."""

  def loss(params, batches):
    def one(batch):
      logits = model.logits(params, batch, train=False, pass_segment_ids=pass_segment_ids)
      total = jnp.sum(batch["weight"])
      return train_lib.task_loss(logits, batch["labels"], batch["weight"]) * total, total
    sums, counts = jax.lax.map(one, batches)
    return jnp.sum(sums) / jnp.maximum(jnp.sum(counts), 1.0)
  return loss


def make_surface_fn(model, matmul_precision: str, pass_segment_ids: bool = True):
  """surface(theta_p, d_f, d_s, coords, batches) -> loss [C, K] for coords [C, K, 2] (C chunks of
  K (alpha, beta) pairs): one jitted program, vmapped over a chunk's points, lax.map over
  chunks, traced at the setting's model.matmul_precision (the precision its runs trained at)."""
  loss = make_loss(model, pass_segment_ids)

  def point(theta_p, d_f, d_s, ab, batches):
    params = jax.tree_util.tree_map(lambda p, f, s: p + ab[0] * f + ab[1] * s, theta_p, d_f, d_s)
    return loss(params, batches)

  def surface(theta_p, d_f, d_s, coords, batches):
    per_chunk = jax.vmap(point, in_axes=(None, None, None, 0, None))
    return jax.lax.map(lambda c: per_chunk(theta_p, d_f, d_s, c, batches), coords)
  return jax.jit(precision.at_precision(surface, matmul_precision))


def directions(theta_p, theta_f, theta_s):
  sub = lambda a, b: jax.tree_util.tree_map(lambda x, y: x - y, a, b)
  return sub(theta_f, theta_p), sub(theta_s, theta_p)


def evaluate_points(surface_fn, theta_p, d_f, d_s, points, batches, chunk: int) -> np.ndarray:
  """f at each (alpha, beta) of `points` [N, 2]: padded to whole chunks with (0, 0), evaluated
  by `surface_fn`, padding dropped."""
  pts = np.asarray(points, np.float32).reshape(-1, 2)
  n = len(pts)
  chunk = max(1, min(int(chunk), n))
  pad = -n % chunk
  coords = np.concatenate([pts, np.zeros((pad, 2), np.float32)]).reshape(-1, chunk, 2)
  out = np.asarray(surface_fn(theta_p, d_f, d_s, coords, batches), np.float64)
  return out.reshape(-1)[:n]


def grid_axis(n: int, lo: float, hi: float) -> np.ndarray:
  """n evenly spaced values in [lo, hi], rounded to 10 decimals so that 0 and 1 are exact
  grid values when they lie on the grid (they do for the default 21 points in [-0.5, 1.5])."""
  return np.round(np.linspace(lo, hi, n), 10)


def grid_points(alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
  """[A*B, 2] pairs, alpha-major: row i*B + j is (alpha[i], beta[j])."""
  a, b = np.meshgrid(alpha, beta, indexing="ij")
  return np.stack([a.reshape(-1), b.reshape(-1)], axis=1)


# ------------------------------------------------------------------ a setting's surface
@dataclasses.dataclass
class Surface:
  alpha: np.ndarray          # [A]
  beta: np.ndarray           # [B]
  loss: np.ndarray           # [A, B], loss[i, j] = f(alpha[i], beta[j])
  failed_seed: int          # run numbers (1000 x init + data for a grid run)
  success_seed: int
  head_seed: int             # the init seed theta_p's head was drawn from (the failed run's)
  failed_label: str
  success_label: str
  reason: str
  examples: np.ndarray       # indices into the (subsampled) training set
  seconds: float


def choose_seeds(inputs: analysis.SettingInputs, failed_seed: Optional[int] = None,
                 success_seed: Optional[int] = None):
  """(failed seed, successful seed, failed label, success label, reason): as the report's
  gradient-norm figure picks them (jaxstab.results.picks), among the seeds whose params are kept,
  unless given."""
  kept = outputs.kept_seeds(inputs.directory)
  if len(kept) < 2:
    raise ConfigError(f"{inputs.directory} keeps the final params of {len(kept)} seed(s) "
                      f"({kept}); the loss surface needs two. Train with "
                      "--config.checkpoint.keep_final_params=True")
  summary = dataclasses.replace(inputs.summary,
                                runs=tuple(r for r in inputs.summary.runs if r.seed in kept))
  setting = records.Setting(inputs.name, inputs.directory, summary, None, None, [], [])
  p = picks.pick(setting)
  f = p.failed_seed if failed_seed is None else int(failed_seed)
  s = p.success_seed if success_seed is None else int(success_seed)
  for seed in (f, s):
    if seed not in kept:
      raise ConfigError(f"no kept params for seed {seed} in {inputs.directory}/params "
                        f"(kept: {kept})")
  if f == s:
    raise ConfigError(f"the failed and the successful seed are both {f}: the plane needs two "
                      "different runs (pass --failed_seed / --success_seed)")
  flags = analysis.run_failed(inputs.summary)
  if failed_seed is None and success_seed is None:
    return f, s, p.failed_label, p.success_label, p.reason
  word = lambda seed: "failed" if flags.get(seed) else "successful"
  return (f, s, f"{word(f)} seed {f}", f"{word(s)} seed {s}",
          f"Seeds {f} and {s} chosen by hand ({word(f)} and {word(s)}).")


def compute(inputs: analysis.SettingInputs, grid: int = DEFAULT_GRID,
            lo: float = DEFAULT_RANGE[0], hi: float = DEFAULT_RANGE[1],
            examples: int = DEFAULT_EXAMPLES, chunk: int = DEFAULT_CHUNK,
            batch_size: int = DEFAULT_BATCH, subset_seed: int = 0,
            failed_seed: Optional[int] = None, success_seed: Optional[int] = None) -> Surface:
  """The loss surface of one setting (see the module docstring)."""
  if grid < 2 or not hi > lo:
    raise ConfigError(f"the grid needs at least 2 points and hi > lo (got {grid}, [{lo}, {hi}])")
  f, s, f_label, s_label, reason = choose_seeds(inputs, failed_seed, success_seed)
  model = inputs.model
  theta_p = initial_params(inputs, f)
  theta_f, theta_s = analysis.final_params(inputs, f), analysis.final_params(inputs, s)
  d_f, d_s = directions(theta_p, theta_f, theta_s)
  idx = fixed_subset(inputs.train_arrays, examples, subset_seed)
  batches = jax.device_put(subset_batches(inputs.train_arrays, idx, batch_size))
  fn = make_surface_fn(model, inputs.cfg.model.matmul_precision,
                       bool(inputs.cfg.model.pass_segment_ids))
  alpha, beta = grid_axis(grid, lo, hi), grid_axis(grid, lo, hi)
  t0 = time.time()
  loss = evaluate_points(fn, theta_p, d_f, d_s, grid_points(alpha, beta), batches, chunk)
  return Surface(alpha, beta, loss.reshape(len(alpha), len(beta)), f, s,
                 analysis.init_seed(inputs.cfg, f), f_label, s_label, reason, idx,
                 time.time() - t0)


def initial_params(inputs: analysis.SettingInputs, run: int):
  """theta_p: the initial parameters of run `run` (see the module docstring for why)."""
  return analysis.initial_params(inputs.model, inputs.cfg, run)


def save(surface: Surface, path: str) -> str:
  """Writes the surface as npz atomically (temp file + rename); outputs.read_npz reads it."""
  fs.makedirs(os.path.dirname(path))
  outputs.write_npz(path, alpha=surface.alpha, beta=surface.beta, loss=surface.loss,
                    seeds=np.asarray([surface.failed_seed, surface.success_seed]),
                    failed_seed=np.asarray(surface.failed_seed),
                    success_seed=np.asarray(surface.success_seed),
                    theta_p_head_seed=np.asarray(surface.head_seed),
                    failed_label=np.asarray(surface.failed_label),
                    success_label=np.asarray(surface.success_label),
                    reason=np.asarray(surface.reason), examples=surface.examples)
  return path


# ------------------------------------------------------------------ command line
def run(workdir: str, setting: Optional[str] = None, **kwargs):
  """Computes and saves the surface of each chosen setting that keeps params; [(name, path)]."""
  chosen = analysis.select_settings(workdir, setting)
  if not setting:
    chosen = [c for c in chosen if len(outputs.kept_seeds(c[1])) >= 2]
    if not chosen:
      raise ConfigError(f"no setting in {workdir} keeps the final params of two seeds; train "
                        "with --config.checkpoint.keep_final_params=True")
  done = []
  for name, directory, summary in chosen:
    inputs = analysis.load_setting(name, directory, summary)
    surface = compute(inputs, **kwargs)
    path = save(surface, outputs.analysis_path(directory, outputs.LOSS_SURFACE))
    print(f"{name}: {path} ({surface.loss.shape[0]}x{surface.loss.shape[1]} grid, seeds "
          f"{surface.failed_seed} (θf) and {surface.success_seed} (θs), {len(surface.examples)} "
          f"examples, {surface.seconds:.1f}s; loss {np.nanmin(surface.loss):.4g} to "
          f"{np.nanmax(surface.loss):.4g})")
    done.append((name, path))
  return done


def main(argv=None) -> int:
  parser = cli.parser(
      "jaxstab.loss_surface",
      "Training loss on the plane through the pretrained, a failed and a successful model; "
      "writes <setting dir>/analysis/loss_surface.npz for the report.")
  analysis.add_workdir_flags(parser)
  parser.add_argument("--grid", type=int, default=DEFAULT_GRID, help="points per axis")
  parser.add_argument("--lo", type=float, default=DEFAULT_RANGE[0], help="smallest α and β")
  parser.add_argument("--hi", type=float, default=DEFAULT_RANGE[1], help="largest α and β")
  parser.add_argument("--examples", type=int, default=DEFAULT_EXAMPLES,
                      help="training examples in the fixed subset (0 = all)")
  parser.add_argument("--chunk", type=int, default=DEFAULT_CHUNK,
                      help="grid points evaluated together (vmapped); bounds memory")
  parser.add_argument("--batch_size", type=int, default=DEFAULT_BATCH,
                      help="examples per forward pass inside each grid point")
  parser.add_argument("--subset_seed", type=int, default=0, help="which fixed subset")
  parser.add_argument("--failed_seed", type=int, default=None, help="θf (default: picked)")
  parser.add_argument("--success_seed", type=int, default=None, help="θs (default: picked)")

  def body(args):
    fs.require_local(args.workdir, parser.prog)
    run(args.workdir, args.setting, grid=args.grid, lo=args.lo, hi=args.hi,
        examples=args.examples, chunk=args.chunk, batch_size=args.batch_size,
        subset_seed=args.subset_seed, failed_seed=args.failed_seed,
        success_seed=args.success_seed)
  return cli.run(parser, body, argv)


if __name__ == "__main__":  # the same as python -m jaxstab.loss_surface
  sys.exit(main())
