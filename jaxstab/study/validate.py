"""Every check of a config that can be made before a file is written, in one place.

`check_config` reads nothing but the config and changes nothing; `check_model` adds what depends
on the model's architecture (layer-wise lr decay and re-initialisation are undefined for
ALBERT's shared layers; re-init needs a layer count); `check_data` what depends on the size of
the training set. A setting runs all three before it touches its workdir, and a study runs them
for every setting before its first setting trains, so a bad value never leaves a half-made
workdir that a corrected rerun would refuse as "a different config".
"""
import jax

from jaxstab.config import config_lib, runs as runs_lib
from jaxstab.data import custom_data, dataset, metrics, tasks
from jaxstab.engine import (attention, child_tuning, families, models, noisytune, optim, peft,
                            precision, rxf, stabilisers, train)
from jaxstab.infra.errors import ConfigError
from jaxstab.study import early_stop

ENUMS = {"data.source": dataset.SOURCES, "model.dtype": tuple(models.DTYPES),
         "model.matmul_precision": precision.MATMUL_PRECISIONS,
         "optim.eps_mode": optim.EPS_MODES, "select": ("final", "best"),
         "optim.moments_dtype": ("float32", "bfloat16"),
         "train.seed_axis": train.SEED_AXES,
         "train.remat": models.REMAT, "fidelity": tuple(config_lib.FIDELITY),
         "model.head": models.HEADS, "train.full_steps_count": ("batches", "reference"),
         "train.early_stop.by": early_stop.CRITERIA, "stabilisers.child_tuning": child_tuning.MODES,
         "stabilisers.r3f_noise": rxf.NOISE_TYPES}


def check_config(cfg) -> None:
  """Raises ConfigError naming the first bad key; never modifies `cfg`."""
  if cfg.data.source in dataset.CUSTOM_SOURCES:  # own files: task names them; reads no file
    custom_data.check_config(cfg)
  else:
    custom_data.check_unused(cfg)
    tasks.get_task(cfg.task)
  for key, allowed in ENUMS.items():
    value = config_lib.get_path(cfg, key)
    if value not in allowed:
      raise ConfigError(f"{key}={value!r} is not allowed; choose one of: {', '.join(allowed)}")
  positive = ("train.batch_size", "train.eval_batch_size", "train.max_seq_length",
              "probe.every", "train.evals_per_epoch")
  for key in positive:
    if config_lib.get_path(cfg, key) <= 0:
      raise ConfigError(f"{key}={config_lib.get_path(cfg, key)} must be positive")
  if cfg.train.eval_every_steps < -1:
    raise ConfigError(f"train.eval_every_steps={cfg.train.eval_every_steps}: use N > 0 (every N "
                      "steps), 0 (train.evals_per_epoch) or -1 (the reference's own N)")
  if cfg.train.max_steps <= 0 and cfg.train.epochs <= 0:
    raise ConfigError("set train.epochs > 0 or train.max_steps > 0")
  if not cfg.optim.lr > 0:
    raise ConfigError(f"optim.lr={cfg.optim.lr} must be positive")
  optim.check_warmup(cfg.optim.warmup_ratio)
  if cfg.optim.eps < 0 or not 0 <= cfg.optim.b1 < 1 or not 0 <= cfg.optim.b2 < 1:
    raise ConfigError("optim.eps must be >= 0 and optim.b1, optim.b2 in [0, 1)")
  n_dev = jax.device_count()
  if cfg.train.batch_size % n_dev:
    raise ConfigError(f"train.batch_size={cfg.train.batch_size} is not divisible by the "
                      f"{n_dev} devices; choose a multiple of {n_dev}")
  seeds = runs_lib.parse(cfg)
  if cfg.train.seeds_per_step > len(seeds):
    raise ConfigError(f"train.seeds_per_step={cfg.train.seeds_per_step} is larger than the "
                      f"{len(seeds)} runs of this setting; use at most {len(seeds)} (or 0 = auto)")
  early_stop.check(cfg, len(seeds))
  attention.check(cfg.model.attention, cfg.model.dtype)
  stabilisers.check(cfg.stabilisers.mixout, cfg.stabilisers.llrd)
  noisytune.check(cfg.stabilisers)
  child_tuning.check(cfg.stabilisers)
  rxf.check(cfg.stabilisers, metrics.is_regression(cfg.data.metric)
            if cfg.data.source in dataset.CUSTOM_SOURCES else tasks.get_task(cfg.task).regression)
  if cfg.stabilisers.reinit_layers < 0:
    raise ConfigError(f"stabilisers.reinit_layers={cfg.stabilisers.reinit_layers} must be >= 0")
  peft.check_stabilisers(peft.spec_of(cfg.peft), cfg.stabilisers)  # peft.* values too
  reps = cfg.analysis.rep_examples
  if isinstance(reps, bool) or not isinstance(reps, int) or reps < 0:
    raise ConfigError(f"analysis.rep_examples={reps!r} must be a whole number >= 0 (dev examples "
                      "whose representations are kept; 0 = off)")


def check_model(cfg, arch: str, num_layers: int) -> None:
  """The checks that need the model's architecture and depth (from models.shape_of or a loaded
  model). Re-initialisation and layer-wise decay work for every family whose layers are
  separate (BERT, RoBERTa/XLM-R, ELECTRA, DistilBERT); ALBERT shares one layer."""
  st, name = cfg.stabilisers, cfg.model.name_or_path
  if arch not in families.FAMILIES:
    raise ConfigError(f"model {name!r} is a {arch!r} model; jaxstab handles "
                      f"{', '.join(families.FAMILIES)} (model.name_or_path)")
  fam = families.FAMILIES[arch]
  if not fam.fused_attention and cfg.model.attention != "reference":
    raise ConfigError(f"model.attention={cfg.model.attention!r} is not available for {fam.title} "
                      f"({name}): its attention module is not BERT's; use "
                      "model.attention='reference'")
  if not fam.mixout_head and st.mixout > 0 and st.mixout_head:
    raise ConfigError(f"stabilisers.mixout_head=True is not supported for {fam.title} "
                      f"({name}): its head is {len(fam.head_keys)} layers "
                      f"({', '.join(fam.head_keys)}) and only the classifier's initial "
                      "value is kept as Mixout's target; use stabilisers.mixout_head=False (or "
                      "fidelity=corrected)")
  models.check_remat(cfg.train.remat, fam, name)
  peft.check_family(peft.spec_of(cfg.peft), fam, name)
  if fam.shared_layer and st.llrd != 1.0:
    raise ConfigError(f"stabilisers.llrd={st.llrd} is undefined for {fam.title} ({name}): all its "
                      "depths share one layer; use stabilisers.llrd=1.0")
  if fam.shared_layer and st.reinit_layers > 0:
    raise ConfigError(f"stabilisers.reinit_layers > 0 is undefined for {fam.title}: its layers "
                      "share one set of weights; use reinit_layers=0 (pooler only)")
  if st.reinit_layers > num_layers:
    raise ConfigError(f"stabilisers.reinit_layers={st.reinit_layers} must be in [0, {num_layers}] "
                      f"({cfg.model.name_or_path} has {num_layers} layers)")


def check_data(cfg, n_train: int, setting: str = "") -> None:
  """The checks that need the number of training examples (engine.inputs.train_size). A batch
  larger than the training set would be padded with weightless copies up to its size at every
  step: the same full-batch step at the cost of the padding, which for a mistyped batch size
  (100000 on RTE's 2,490 examples) means running out of memory after the workdir was made.
  `setting`: the study setting the config belongs to, for the message."""
  if cfg.train.batch_size > n_train:
    where = f"setting {setting!r}: " if setting else ""
    subset = (f" (data.train_examples={cfg.data.train_examples})"
              if cfg.data.train_examples > 0 else "")
    raise ConfigError(f"{where}train.batch_size={cfg.train.batch_size} is larger than the "
                      f"{n_train} training examples of {cfg.task}{subset}; use at most {n_train}")
