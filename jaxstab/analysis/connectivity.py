"""Linear connectivity between the seeds of a setting (Frankle et al. 2020; Juneja et al. 2023):
is the loss low on the straight line between two fine-tuned models?

For pairs of seeds (a, b) with kept final parameters, the model theta(alpha) = (1 - alpha)
theta_a + alpha theta_b is evaluated at `points` interior alphas evenly spaced in (0, 1) and at
both endpoints (default 8 + 2, as Juneja et al.): the loss (train.task_loss, deterministic forward,
no dropout) and the task's main metric, on a fixed subset of the training set (default 512
examples, drawn as the loss surface draws its subset: analysis.loss_surface.fixed_subset) and on
the dev set. The same is done on the line from each seed's starting point theta_p (the pretrained
model with that run's own initial head, as the loss surface's theta_p: analysis.initial_params) to
its final parameters. Barriers, basins and the summary block are computed from these curves by
jaxstab.results.connectivity, which says what they mean and how the threshold is chosen.

Which pairs: every pair when there are at most `max_pairs` (default 300: every pair of 25 seeds),
else a sample drawn by `pair_seed` (recorded). Both endpoints come from the kept final parameters
(params/seed_N), so seeds trained in different seed groups pair as easily as seeds of one group.

All points are evaluated by ONE jitted program: a line's alphas are cut into chunks of `chunk`
points, `jax.vmap` evaluates a chunk's points together and `jax.lax.map` runs the chunks one after
another, so memory holds the two endpoint parameter sets plus `chunk` interpolated copies and
`chunk` x `batch_size` activations. The training subset and the dev set are padded separately to
whole batches and stacked, so one program scores both.

A seed whose kept parameters hold NaN or inf (a diverged run) is not evaluated: its pairs' curves
and barriers are null, with the reason under the block's `undefined`.

Writes <setting dir>/analysis/connectivity.json (every curve) and the `connectivity` block of the
setting's summary.json (and of the study's summary.json and table.md): analysis.connectivity_io.

Command line: python -m jaxstab.connectivity --workdir=DIR [--setting=NAME] [--points=8]
    [--train_examples=512] [--dev_examples=0] [--max_pairs=300] [--pair_seed=0] [--threshold=T]
    [--chunk=5] [--batch_size=64]
"""
import dataclasses
import sys
import time
from typing import Dict, List, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxstab import analysis
from jaxstab.analysis import connectivity_io, loss_surface
from jaxstab.data import dataset, metrics
from jaxstab.engine import precision, train as train_lib
from jaxstab.infra import cli, fs
from jaxstab.infra.errors import ConfigError
from jaxstab.results import connectivity as conn, outputs

DEFAULT_POINTS = 8
DEFAULT_TRAIN_EXAMPLES = 512
DEFAULT_CHUNK = 5
DEFAULT_BATCH = 64
SETS = ("train", "dev")


# ------------------------------------------------------------------ the program
def make_line_fn(model, matmul_precision: str, pass_segment_ids: bool = True):
  """line(theta_a, theta_b, coords [C, K], batches) -> (loss sums [C, K, nb], logits
  [C, K, nb, B, outputs]) at theta = (1 - alpha) theta_a + alpha theta_b for each alpha of coords:
  one jitted program, vmapped over a chunk's K alphas, lax.map over the C chunks, traced at the
  setting's model.matmul_precision. A loss sum is train.task_loss x the batch's real examples."""

  def point(theta_a, theta_b, alpha, batches):
    params = jax.tree_util.tree_map(lambda a, b: (1.0 - alpha) * a + alpha * b, theta_a, theta_b)

    def one(batch):
      logits = model.logits(params, batch, train=False, pass_segment_ids=pass_segment_ids)
      total = jnp.sum(batch["weight"])
      return train_lib.task_loss(logits, batch["labels"], batch["weight"]) * total, logits
    return jax.lax.map(one, batches)

  def line(theta_a, theta_b, coords, batches):
    per_chunk = jax.vmap(point, in_axes=(None, None, 0, None))
    return jax.lax.map(lambda c: per_chunk(theta_a, theta_b, c, batches), coords)
  return jax.jit(precision.at_precision(line, matmul_precision))


@dataclasses.dataclass
class Batches:
  """The training subset and the dev set as one stack of batches; `parts` says which is which."""
  arrays: dict                 # [nb, B, ...] plus weight
  parts: Dict[str, slice]      # "train" / "dev" -> the batch rows of that set
  labels: Dict[str, np.ndarray]
  examples: np.ndarray         # the training subset's indices
  dev_examples: np.ndarray     # the dev examples' indices (all by default)


def stack_batches(train_arrays: dict, dev_arrays: dict, idx: np.ndarray, batch_size: int,
                  dev_idx: Optional[np.ndarray] = None) -> Batches:
  """`dev_idx`: the dev examples to score (default all)."""
  keys = ("input_ids", "attention_mask", "token_type_ids", "labels")
  dev_idx = np.arange(len(dev_arrays["labels"])) if dev_idx is None else dev_idx
  sets = {"train": {k: train_arrays[k][idx] for k in keys},
          "dev": {k: dev_arrays[k][dev_idx] for k in keys}}
  padded = {name: dataset.eval_batches(a, batch_size) for name, a in sets.items()}
  parts, start = {}, 0
  for name in SETS:
    nb = padded[name]["weight"].shape[0]
    parts[name], start = slice(start, start + nb), start + nb
  arrays = {k: np.concatenate([padded[n][k] for n in SETS]) for k in padded["train"]}
  return Batches(arrays, parts, {n: np.asarray(sets[n]["labels"]) for n in SETS}, idx, dev_idx)


def evaluate_line(fn, theta_a, theta_b, alpha: np.ndarray, batches: Batches, device_batches,
                  metric: str, chunk: int) -> Dict[str, np.ndarray]:
  """{train_loss, dev_loss, train_metric, dev_metric}: one value per alpha of the line."""
  n = len(alpha)
  chunk = max(1, min(int(chunk), n))
  pad = -n % chunk
  coords = np.concatenate([alpha, np.zeros(pad)]).astype(np.float32).reshape(-1, chunk)
  sums, logits = fn(theta_a, theta_b, coords, device_batches)
  sums = np.asarray(sums, np.float64).reshape(-1, sums.shape[-1])[:n]
  logits = np.asarray(logits, np.float32)
  logits = logits.reshape((-1,) + logits.shape[2:])[:n]
  weight = batches.arrays["weight"]
  out = {}
  for name in SETS:
    rows = batches.parts[name]
    real = weight[rows].reshape(-1) > 0
    out[f"{name}_loss"] = sums[:, rows].sum(axis=1) / real.sum()
    flat = logits[:, rows].reshape(n, -1, logits.shape[-1])[:, real]
    out[f"{name}_metric"] = np.asarray(
        [metrics.score(metric, flat[i], batches.labels[name])[metric] for i in range(n)])
  return out


# ------------------------------------------------------------------ a setting's lines
@dataclasses.dataclass
class Result:
  seeds: List[int]
  pairs: list
  sampled: bool
  alpha: np.ndarray
  curves: Dict[str, np.ndarray]      # "{set}_{loss|metric}" -> [pairs, alphas]
  pretrained: Dict[str, np.ndarray]  # the same, [seeds, alphas], from theta_p to each seed
  not_finite: Dict[int, str]
  failed: Dict[int, bool]
  threshold: float
  rule: str
  examples: np.ndarray
  dev_examples: np.ndarray
  seconds: float


def is_finite_tree(params) -> bool:
  return all(bool(np.all(np.isfinite(np.asarray(x)))) for x in jax.tree_util.tree_leaves(params))


def check_args(points: int, train_examples: int, max_pairs: int, chunk: int, batch_size: int,
               threshold: Optional[float], dev_examples: int = 0) -> None:
  """The flags' values, before anything is read or written (one-line ConfigError)."""
  for flag, value, low in (("--points", points, 1), ("--max_pairs", max_pairs, 1),
                           ("--chunk", chunk, 1), ("--batch_size", batch_size, 1),
                           ("--train_examples", train_examples, 0),
                           ("--dev_examples", dev_examples, 0)):
    if value < low:
      raise ConfigError(f"{flag}={value}: must be >= {low}")
  if threshold is not None and not threshold > 0:
    raise ConfigError(f"--threshold={threshold}: must be a positive loss difference")


def compute(inputs: analysis.SettingInputs, dev_arrays: dict, points: int = DEFAULT_POINTS,
            train_examples: int = DEFAULT_TRAIN_EXAMPLES, max_pairs: int = conn.DEFAULT_MAX_PAIRS,
            pair_seed: int = 0, threshold: Optional[float] = None, chunk: int = DEFAULT_CHUNK,
            batch_size: int = DEFAULT_BATCH, subset_seed: int = 0, dev_examples: int = 0) -> Result:
  """Every line of one setting (see the module docstring)."""
  kept = outputs.kept_seeds(inputs.directory)
  if len(kept) < 2:
    raise ConfigError(f"{inputs.directory}/params keeps the final params of {len(kept)} seed(s) "
                      f"({kept}); connectivity needs two. Train with "
                      "--config.checkpoint.keep_final_params=True")
  alpha = conn.alphas(points)
  pairs, sampled = conn.choose_pairs(kept, max_pairs, pair_seed)
  idx = loss_surface.fixed_subset(inputs.train_arrays, train_examples, subset_seed)
  dev_idx = loss_surface.fixed_subset(dev_arrays, dev_examples, subset_seed)
  batches = stack_batches(inputs.train_arrays, dev_arrays, idx, batch_size, dev_idx)
  on_device = jax.device_put(batches.arrays)
  metric = inputs.task.metric
  if threshold is None:
    threshold, rule = conn.default_threshold(inputs.task.num_labels, inputs.task.regression,
                                             batches.labels["train"])
  else:
    rule = "given (--threshold)"
  fn = make_line_fn(inputs.model, inputs.cfg.model.matmul_precision,
                    bool(inputs.cfg.model.pass_segment_ids))
  t0 = time.time()
  final = {s: analysis.final_params(inputs, s) for s in kept}
  not_finite = {s: "its kept final parameters hold NaN or inf (a diverged run): its lines are "
                   "not evaluated" for s, p in final.items() if not is_finite_tree(p)}
  count = [0]
  total = len(pairs) + len(kept)

  def line(a, b):
    out = evaluate_line(fn, a, b, alpha, batches, on_device, metric, chunk)
    count[0] += 1
    if count[0] % max(1, total // 10) == 0 or count[0] == total:
      print(f"{inputs.name}: {count[0]}/{total} lines, {time.time() - t0:.0f}s", flush=True)
    return out
  nan = {f"{n}_{q}": np.full(len(alpha), np.nan) for n in SETS for q in ("loss", "metric")}
  rows = [nan if a in not_finite or b in not_finite else line(final[a], final[b])
          for a, b in pairs]
  start = [nan if s in not_finite else
           line(analysis.initial_params(inputs.model, inputs.cfg, s), final[s]) for s in kept]
  stack = lambda found: {k: np.stack([r[k] for r in found]) for k in nan}
  return Result(kept, pairs, sampled, alpha, stack(rows), stack(start), not_finite,
                analysis.run_failed(inputs.summary), float(threshold), rule, idx, dev_idx,
                time.time() - t0)


def barriers(result: Result, on: str = "train_loss") -> List[float]:
  return [conn.barrier(y, result.alpha) for y in result.curves[on]]


def summary_block(result: Result, pair_seed: int, summary, metric: str) -> dict:
  """The `connectivity` block of summary.json (results.connectivity.block); a basin's dev
  metric is the mean of its seeds' final dev metric as the summary records it (the whole dev
  set, whatever subset this analysis scored)."""
  dev_metric = {int(r.seed): r.value("final", metric) for r in summary.runs if r.seed is not None}
  return conn.block(result.seeds, result.pairs, result.alpha, barriers(result),
                    result.threshold, result.rule, result.failed, result.not_finite,
                    "training subset loss (train_loss)", result.sampled, pair_seed, dev_metric)


def full_record(result: Result, block: dict, metric: str) -> dict:
  """connectivity.json: the block plus every curve (lists of floats, null where not finite)."""
  clean = lambda a: [[None if not np.isfinite(v) else float(v) for v in row] for row in a]
  return dict(block, metric=metric, train_examples=int(len(result.examples)),
              dev_examples=int(len(result.dev_examples)),
              barrier_dev=[None if not np.isfinite(h) else h for h in barriers(result, "dev_loss")],
              curves={k: clean(v) for k, v in result.curves.items()},
              pretrained_path={"seeds": result.seeds,
                               "barrier": [None if not np.isfinite(h) else h for h in
                                           (conn.barrier(y, result.alpha)
                                            for y in result.pretrained["train_loss"])],
                               **{k: clean(v) for k, v in result.pretrained.items()}},
              examples=[int(i) for i in result.examples], seconds=round(result.seconds, 2))


# ------------------------------------------------------------------ command line
def run(workdir: str, setting: Optional[str] = None, *, points: int = DEFAULT_POINTS,
        train_examples: int = DEFAULT_TRAIN_EXAMPLES, max_pairs: int = conn.DEFAULT_MAX_PAIRS,
        pair_seed: int = 0, threshold: Optional[float] = None, chunk: int = DEFAULT_CHUNK,
        batch_size: int = DEFAULT_BATCH, subset_seed: int = 0, dev_examples: int = 0):
  """Computes each chosen setting's connectivity and writes it; [(name, path)]."""
  check_args(points, train_examples, max_pairs, chunk, batch_size, threshold, dev_examples)
  kwargs = dict(points=points, train_examples=train_examples, max_pairs=max_pairs,
                pair_seed=pair_seed, threshold=threshold, chunk=chunk, batch_size=batch_size,
                subset_seed=subset_seed, dev_examples=dev_examples)
  chosen = analysis.select_settings(workdir, setting)
  if not setting:
    chosen = [c for c in chosen if len(outputs.kept_seeds(c[1])) >= 2]
    if not chosen:
      raise ConfigError(f"no setting in {workdir} keeps the final params of two seeds; train "
                        "with --config.checkpoint.keep_final_params=True")
  done = []
  for name, directory, summary in chosen:
    inputs = analysis.load_setting(name, directory, summary)
    result = compute(inputs, inputs.dev_arrays, **kwargs)
    block = summary_block(result, pair_seed, inputs.summary,
                          inputs.task.metric)
    record = full_record(result, block, inputs.task.metric)
    path = connectivity_io.write(workdir, name, directory, block, record)
    print(f"{name}: {path} ({len(result.pairs)} pairs{' (sampled)' if result.sampled else ''}, "
          f"{len(result.alpha)} points a line, {len(result.examples)} training examples, "
          f"{result.seconds:.1f}s); basins {block['basins']}, threshold {block['threshold']:.3g}, "
          f"failed seeds apart: {block['failed_seeds_apart']}")
    done.append((name, path))
  return done


def main(argv=None) -> int:
  parser = cli.parser(
      "jaxstab.connectivity",
      "Loss and metric on the straight lines between seeds (barriers, basins); writes "
      "<setting dir>/analysis/connectivity.json and the summary's `connectivity` block.")
  analysis.add_workdir_flags(parser)
  parser.add_argument("--points", type=int, default=DEFAULT_POINTS,
                      help="interior interpolation points per line (both endpoints are added)")
  parser.add_argument("--train_examples", type=int, default=DEFAULT_TRAIN_EXAMPLES,
                      help="training examples in the fixed subset (0 = all)")
  parser.add_argument("--dev_examples", type=int, default=0,
                      help="dev examples scored (0 = the whole dev set; else a fixed subset, "
                           "drawn as the training subset is: to make a CPU run affordable)")
  parser.add_argument("--max_pairs", type=int, default=conn.DEFAULT_MAX_PAIRS,
                      help="every pair up to this many, else a sample of this many")
  parser.add_argument("--pair_seed", type=int, default=0, help="which sample of pairs")
  parser.add_argument("--threshold", type=float, default=None,
                      help="barrier below which two seeds share a basin, in loss units "
                           "(default: 0.1 x the loss of a guess; see docs/analyses.md)")
  parser.add_argument("--chunk", type=int, default=DEFAULT_CHUNK,
                      help="points evaluated together (vmapped); bounds memory")
  parser.add_argument("--batch_size", type=int, default=DEFAULT_BATCH,
                      help="examples per forward pass inside each point")

  def body(args):
    fs.require_local(args.workdir, parser.prog)
    run(args.workdir, args.setting, points=args.points, train_examples=args.train_examples,
        max_pairs=args.max_pairs, pair_seed=args.pair_seed, threshold=args.threshold,
        chunk=args.chunk, batch_size=args.batch_size, dev_examples=args.dev_examples)
  return cli.run(parser, body, argv)


if __name__ == "__main__":  # the same as python -m jaxstab.connectivity
  sys.exit(main())
