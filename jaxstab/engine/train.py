"""The train state, the jitted train step (with the probe) and evaluation.

Pure functions of explicit state: nothing here reads files, flags or seed lists. One seed's
state is a pytree; a group of seeds is the same pytree with a leading axis, and the step is
mapped over it (`over_seeds`), so K seeds share one compiled program.
"""
import contextlib
import dataclasses
import functools
from typing import Any, Callable, List, Optional, Sequence, Tuple

import flax
import jax
import jax.numpy as jnp
import optax

from jaxstab.config import reference
from jaxstab.data import dataset as data_lib
from jaxstab.engine import (child_tuning, memory, models, noisytune, optim, parallel, peft,
                            precision, probe, rxf, stabilisers)
# Re-exported: the losses live in engine/losses.py (the Fisher pass and R3F use them too).
from jaxstab.engine.losses import task_loss, weighted_mse, weighted_xent  # noqa: F401
from jaxstab.engine.optim import bias_correction_factor
from jaxstab.engine.seed_axes import SEED_AXES, over_seeds, seed_axis_for  # noqa: F401

# Streams derived from a run's seed key with fold_in: the seed decides all three, independently.
# (peft.LORA_STREAM = 8 draws LoRA's A.)
HEAD, DATA, DROPOUT, REINIT, MIXOUT, NOISYTUNE, R3F, CHILD = 0, 1, 2, 3, 4, 5, 6, 7


@flax.struct.dataclass
class TrainState:
  step: jax.Array          # updates applied so far (int32)
  params: Any
  opt_state: Any
  key: jax.Array           # the run's seed key (raw uint32[2], checkpoint-friendly)
  data_key: jax.Array      # the key of its data order (fold_in(key, DATA), or a data seed's)
  order: jax.Array         # the examples of epoch `order_epoch` in their order (epoch_order)
  order_epoch: jax.Array   # the epoch `order` was drawn for; -1: none yet (the step draws it)
  probe: dict              # fixed-size record buffers, see probe.init_buffers
  loss_sum: jax.Array      # running sums of the weighted training loss since the last read
  loss_count: jax.Array
  diverged_at: jax.Array   # first step with a non-finite loss or gradient; -1 while healthy


def older_layouts(like: TrainState):
  """The (layout, convert) pairs by which GroupCheckpointer.restore_latest reads a checkpoint of
  an earlier TrainState: one saved before the state kept its epoch's order reads as a dict of
  the other fields, and goes on with an empty order and order_epoch = -1, so that its next step
  draws the order again: the same order, a pure function of data_key and the step. `like` may
  be abstract (shapes, dtypes, shardings) or a state."""
  kept = {f.name: getattr(like, f.name) for f in dataclasses.fields(like)
          if f.name not in ("order", "order_epoch")}

  def filled(x, value):
    sharding = getattr(x, "sharding", None)
    return jax.device_put(jnp.full(x.shape, value, x.dtype), sharding)

  return [(kept, lambda saved: like.replace(**saved, order=filled(like.order, 0),
                                            order_epoch=filled(like.order_epoch, -1)))]


def seed_key(seed: int):
  return jax.random.PRNGKey(seed)


def initial_params(model: models.Model, key, reinit_layers: int = 0, reinit_pooler: bool = False,
                   noisytune_lambda: float = 0.0):
  """The parameters a seed starts from: the pretrained backbone, a head drawn from the seed and,
  when asked, the pooler and top layers re-drawn from the seed too, then NoisyTune's noise on
  every tensor (noisytune_lambda > 0; jittable). The analyses call this to rebuild a run's
  starting point. For a peft.PeftModel: only the part the seed trains, its adapters drawn from
  the seed (peft.start; PEFT refuses NoisyTune)."""
  init_range = model.config.initializer_range
  params = models.init_head(model.params, jax.random.fold_in(key, HEAD), init_range,
                            head=model.head)
  if reinit_layers or reinit_pooler:
    params = stabilisers.reinit_top_layers(params, jax.random.fold_in(key, REINIT), model.arch,
                                           model.num_layers, reinit_layers, reinit_pooler,
                                           init_range)
  params = noisytune.perturb(params, jax.random.fold_in(key, NOISYTUNE), noisytune_lambda)
  return peft.start(model, params, key)


def data_key_of(seed_key):
  """The data-order key a seed draws (jittable): a data seed d orders the examples exactly as
  a plain run of seed d does (jaxstab/config/runs.py)."""
  return jax.random.fold_in(seed_key, DATA)


def create_train_state(model: models.Model, tx: optax.GradientTransformation, key,
                       total_steps: int, probe_every: int, group_names: Sequence[str],
                       reinit_layers: int = 0, reinit_pooler: bool = False, data_key=None,
                       order_length: int = 0, noisytune_lambda: float = 0.0):
  """A fresh state for one seed (jittable): initial_params, Adam's zero moments, empty probe.
  `data_key` orders the training examples; default: the seed's own (data_key_of(key)).
  `order_length` is the padded epoch order's length (StepSpec.order_length; 0 only for a state
  that is never stepped). No order is drawn here: the first step draws epoch 0's."""
  params = initial_params(model, key, reinit_layers, reinit_pooler, noisytune_lambda)
  data_key = data_key_of(key) if data_key is None else data_key
  opt_state = child_tuning.seeded(tx.init(params), jax.random.fold_in(key, CHILD))
  return TrainState(step=jnp.zeros([], jnp.int32), params=params, opt_state=opt_state,
                    key=key, data_key=data_key, order=jnp.zeros((order_length,), jnp.int32),
                    order_epoch=jnp.full([], -1, jnp.int32),
                    probe=probe.init_buffers(total_steps, probe_every, len(group_names)),
                    loss_sum=jnp.zeros([], jnp.float32), loss_count=jnp.zeros([], jnp.float32),
                    diverged_at=jnp.full([], -1, jnp.int32))


@dataclasses.dataclass(frozen=True)
class StepSpec:
  """Everything one seed's train step is compiled from besides the model, the optimizer and its
  schedule: plain values, resolved once from the config by `step_spec`, so the step (and a test
  or benchmark that builds one) never reads a ConfigDict, and with the same model, optimizer and
  schedule two equal specs make the same program."""
  n_train: int                  # training examples on the device: fixes each seed's data order
  batch_size: int
  probe_every: int              # record the probe at step 0 and every N steps; 0 = off
  group_names: Tuple[str, ...]  # the probe's parameter groups (probe.group_names)
  b1: float                     # Adam's betas, for the probe's bias-correction record
  b2: float
  pass_segment_ids: bool = True  # False: all-zero segment ids (the reference code's quirk)
  mixout: float = 0.0           # Mixout probability toward the pretrained weights; 0 = off
  mixout_head: bool = False     # Mixout also mixes the head, toward the seed's initial head
  prior_wd: bool = False        # weight decay toward the pretrained weights
  remat: str = "none"           # 'layers': encoder layers recomputed in the backward pass
  r3f: bool = False             # R3F's noised second pass and symmetric KL (engine/rxf.py)
  r3f_lambda: float = 1.0
  r3f_eps: float = 1e-5
  r3f_noise: str = "uniform"

  @property
  def steps_per_epoch(self) -> int:
    return data_lib.num_batches(self.n_train, self.batch_size)

  @property
  def order_length(self) -> int:
    """Length of an epoch's padded order (data.epoch_order), kept in TrainState.order."""
    return self.steps_per_epoch * self.batch_size

  def draw_order(self, data_key, epoch):
    return data_lib.epoch_order(data_key, epoch, self.n_train, self.batch_size)


def with_order(state: TrainState, spec: StepSpec) -> TrainState:
  """One seed's state holding the order of its step's epoch: drawn only when the epoch changed
  (a lax.cond; a seed alone or in a lax.map group skips the draw on the other steps)."""
  epoch = state.step // spec.steps_per_epoch
  order = jax.lax.cond(state.order_epoch == epoch, lambda: state.order,
                       lambda: spec.draw_order(state.data_key, epoch))
  return state.replace(order=order, order_epoch=epoch)


def with_group_order(state: TrainState, spec: StepSpec, how: str) -> TrainState:
  """with_order for a group of seeds (leading axis), decided once for the group. Under vmap a
  per-seed lax.cond becomes a select that draws every step; here the condition is a scalar
  (any seed's order stale: the seeds of a group share their step), so the group draws its K
  orders only when an epoch begins."""
  epoch = state.step // spec.steps_per_epoch
  order = jax.lax.cond(jnp.any(state.order_epoch != epoch), lambda: over_seeds(
      spec.draw_order, (0, 0), how)(state.data_key, epoch), lambda: state.order)
  return state.replace(order=order, order_epoch=epoch)


def make_train_step(model: models.Model, tx, schedule: Callable, spec: StepSpec):
  """Returns train_step(state, train_arrays, anchor=None) -> state for one seed (vmap it for
  many; make_group_step is the group's program). `anchor` (stabilisers.anchor_of(pretrained))
  is needed by Mixout and prior_wd."""
  update = make_update(model, tx, schedule, spec)
  return lambda state, train_arrays, anchor=None: update(with_order(state, spec), train_arrays,
                                                         anchor)


def make_group_step(model: models.Model, tx, schedule: Callable, spec: StepSpec, how: str):
  """Returns group_step(state, train_arrays, anchor) -> state for a group of seeds (leading axis,
  over_seeds `how`): the group's orders brought to the step's epoch (with_group_order), then
  each seed's update. Same result as over_seeds(make_train_step(...)), bit for bit."""
  update = over_seeds(make_update(model, tx, schedule, spec), (0, None, None), how)
  return lambda state, train_arrays, anchor: update(with_group_order(state, spec, how),
                                                    train_arrays, anchor)


def make_update(model: models.Model, tx, schedule: Callable, spec: StepSpec):
  """Returns update(state, train_arrays, anchor) -> state for one seed whose `order` already
  holds its step's epoch: the batch, the gradient, the optimizer update and the probe.
  With spec.mixout_head, Mixout's head target is re-drawn each step from the seed key and the
  anchor's head shapes: the same draw as initial_params. With spec.remat='layers' the training
  forward pass runs the rematerialised model (evaluation needs no backward pass: it keeps the
  plain one)."""
  model = models.with_remat(model, spec.remat)
  shared_layer = model.family.shared_layer  # per-depth norms of a shared layer need interception
  # The spec's values as the closures below read them (static: compiled into the step).
  n_train, batch_size, probe_every = spec.n_train, spec.batch_size, spec.probe_every
  group_names, b1, b2 = list(spec.group_names), spec.b1, spec.b2
  pass_segment_ids, mixout, mixout_head = spec.pass_segment_ids, spec.mixout, spec.mixout_head
  prior_wd, r3f = spec.prior_wd, spec.r3f

  def loss_fn(params, deltas, batch, weight, dropout_key, mixout_key, anchor, head0, r3f_key):
    if mixout > 0:
      params = stabilisers.mixout(params, anchor, mixout_key, mixout, head_anchor=head0)

    def forward(key, noised=contextlib.nullcontext()):
      # a PEFT model reads the shared backbone from the anchor's place (peft.inputs)
      with (probe.albert_depth_deltas(deltas, peft.depth_adapters(model, params, key))
            if deltas is not None else contextlib.nullcontext()), noised:
        return model.logits(peft.inputs(model, params, anchor), batch, train=True,
                            dropout_key=key, pass_segment_ids=pass_segment_ids)
    logits = forward(dropout_key)
    loss = task_loss(logits, batch["labels"], weight)
    if r3f:  # a second pass on noised token embeddings, its own dropout draw
      noise_key, key = jax.random.split(r3f_key)
      noised = forward(key, rxf.noised_token_embeddings(model.family.token_embeddings, noise_key,
                                                        spec.r3f_eps, spec.r3f_noise))
      loss = loss + spec.r3f_lambda * rxf.symmetric_kl(noised, logits, weight)
    return loss

  def update(state: TrainState, train_arrays: dict, anchor=None) -> TrainState:
    step = state.step
    idx, weight = data_lib.batch_of_order(state.order, step, n_train, batch_size)
    batch = data_lib.gather(train_arrays, idx)
    dropout_key = jax.random.fold_in(jax.random.fold_in(state.key, DROPOUT), step)
    deltas = None
    if shared_layer and probe_every > 0:
      zeros = jax.tree_util.tree_map(jnp.zeros_like, probe.albert_shared(state.params))
      deltas = [zeros] * model.num_layers
    head0 = (models.init_head(anchor, jax.random.fold_in(state.key, HEAD),
                              model.config.initializer_range, head=model.head)["classifier"]
             if mixout > 0 and mixout_head else None)
    loss, (grads, depth_grads) = jax.value_and_grad(loss_fn, argnums=(0, 1))(
        state.params, deltas, batch, weight, dropout_key,
        jax.random.fold_in(jax.random.fold_in(state.key, MIXOUT), step), anchor, head0,
        jax.random.fold_in(jax.random.fold_in(state.key, R3F), step))
    # Decoupled decay reads only the parameters: decay toward theta_p is decay of theta - theta_p.
    decay_params = (jax.tree_util.tree_map(jnp.subtract, state.params, anchor) if prior_wd
                    else state.params)
    updates, opt_state = tx.update(grads, state.opt_state, decay_params)
    params = optax.apply_updates(state.params, updates)
    # A seed whose loss or gradient is not finite stops updating from that step on (its slot in
    # a vmapped group is frozen, the other seeds go on); the step counter still advances.
    grad_norm = optax.global_norm(grads)
    healthy = (state.diverged_at < 0) & jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    keep = lambda new, old: jax.tree_util.tree_map(lambda a, b: jnp.where(healthy, a, b), new, old)
    params, opt_state = keep(params, state.params), keep(opt_state, state.opt_state)
    diverged_at = jnp.where((state.diverged_at < 0) & ~healthy, step, state.diverged_at)
    common = dict(step=step + 1, params=params, opt_state=opt_state, diverged_at=diverged_at,
                  loss_sum=state.loss_sum + jnp.where(healthy, loss, 0.0),
                  loss_count=state.loss_count + healthy.astype(jnp.float32))
    if probe_every <= 0:  # probe off (benchmarks): no norms, no records
      return state.replace(**common)
    values = {
        "grad_norm": probe.group_norms(grads, model.arch, group_names, depth_grads),
        "total_grad_norm": grad_norm,
        "param_norm": optax.global_norm(state.params),
        "update_norm": optax.global_norm(updates),
        "loss": loss,
        "lr": schedule(step),
        "bias_correction": bias_correction_factor(step + 1, b1, b2),
    }
    return state.replace(probe=probe.record(state.probe, step, probe_every, values), **common)

  return update


def make_eval_logits(model: models.Model, pass_segment_ids: bool = True):
  """Returns eval_logits(params, dev_batches, shared=None) -> [num_batches, B, C]
  (deterministic); `shared`: a PEFT model's backbone (peft.inputs)."""

  def eval_logits(params, dev_batches, shared=None):
    def one(batch):
      return model.logits(peft.inputs(model, params, shared), batch, train=False,
                          pass_segment_ids=pass_segment_ids)
    inputs = {k: dev_batches[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    return jax.lax.map(one, inputs)

  return eval_logits


def make_eval_reps(model: models.Model, pass_segment_ids: bool = True):
  """Returns eval_reps(params, batches, shared=None) -> [L+1, num_batches * B, hidden] float32: each
  example's first-token vector after the embeddings and after every layer
  (Model.first_token_states), in the batches' order, padding rows included (the caller drops
  them). Deterministic: the same forward pass as eval_logits, read one stage earlier."""

  def eval_reps(params, batches, shared=None):
    def one(batch):
      return model.first_token_states(peft.inputs(model, params, shared), batch,
                                       pass_segment_ids=pass_segment_ids)
    inputs = {k: batches[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    states = jax.lax.map(one, inputs)  # [num_batches, L+1, B, hidden]
    return jnp.moveaxis(states, 1, 0).reshape(states.shape[1], -1, states.shape[-1])

  return eval_reps


def total_steps(train_cfg, n_train: int, full_steps_per_epoch: int, task: str = "") -> int:
  """Optimizer updates of a setting: train.max_steps, else epochs x batches of the training set
  (or x batches of the *full* set for the small-data ablation's steps_of_full_epochs; with
  train.full_steps_count='reference' the reference configs' counts, see reference.py)."""
  if train_cfg.steps_of_full_epochs > 0:
    if train_cfg.full_steps_count == "reference":
      return reference.reference_full_steps(task, train_cfg.steps_of_full_epochs,
                                            full_steps_per_epoch)
    return int(round(train_cfg.steps_of_full_epochs * full_steps_per_epoch))
  return optim.total_train_steps(train_cfg, data_lib.num_batches(n_train, train_cfg.batch_size))


@dataclasses.dataclass
class Programs:
  """Everything compiled for one setting: built once by `build_programs`, used by a study, the
  benchmarks, the analyses and the tests alike, so each of them runs the same program.
  Under PEFT (jaxstab/engine/peft.py) the state's params are a seed's trainable part and
  `anchor` is the frozen backbone the group shares.

  The `*_one` functions are one seed's pure, unjitted functions (tests jit them directly; the
  analyses call them); `create`, `step`, `eval_logits` and `eval_reps` are those mapped over a
  group of `seeds_per_group` seeds (`seed_axis`) and jitted. The pretrained weights (bound into
  `create`) and the anchor (`step`'s third argument) are device arguments: as jit constants they
  would be compiled into every executable and the persistent cache.

  Every one of these functions, the `*_one` ones too, traces its body at `matmul_precision`
  (precision.at_precision), so whoever jits, vmaps or exports them compiles that precision.
  """
  create: Callable         # create(seed_keys[K, 2], data_keys[K, 2] = each seed's own)
                           # -> TrainState with a leading seed axis
  prepare: Callable        # prepare(state, train_arrays) -> state, once after `create` (jitted):
                           # Child-Tuning-D's Fisher mask; the state itself otherwise
  step: Callable           # step(state, train_arrays, anchor) -> state (jitted; the state is
                           # donated; pass `anchor` below)
  eval_logits: Callable    # eval_logits(params, dev_batches) -> [K, batches, B, C]
  eval_reps: Callable      # eval_reps(params, dev_batches) -> [K, L+1, batches * B, hidden]
  create_one: Callable     # create_one(seed_key, data_key=None) -> TrainState
  step_one: Callable       # step_one(state, train_arrays, anchor=None) -> TrainState
  eval_one: Callable       # eval_one(params, dev_batches) -> [batches, B, C]
  reps_one: Callable       # reps_one(params, dev_batches) -> [L+1, batches * B, hidden]
  tx: optax.GradientTransformation
  schedule: Callable
  spec: StepSpec           # what the step was compiled from (step_spec)
  group_names: List[str]
  total_steps: int
  seeds_per_group: int
  seed_axis: str
  anchor: Optional[Any]
  matmul_precision: str    # model.matmul_precision, traced into every function above
  peft: dict               # peft.Spec.to_json(): what summary.json records as `peft`
  trainable_params: int    # parameters each seed trains (all of them without PEFT)


def step_spec(cfg, model: models.Model, *, n_train: int) -> StepSpec:
  """The one place a config becomes a StepSpec: the probe's groups from the model, the rest from
  cfg (probe.every < 0 counts as off)."""
  st = cfg.stabilisers
  return StepSpec(
      n_train=n_train, batch_size=cfg.train.batch_size, probe_every=max(int(cfg.probe.every), 0),
      group_names=tuple(probe.group_names(peft.trained_shapes(model), model.arch,
                                          model.num_layers)),
      b1=cfg.optim.b1, b2=cfg.optim.b2, pass_segment_ids=cfg.model.pass_segment_ids,
      mixout=st.mixout, mixout_head=st.mixout_head, prior_wd=st.prior_wd,
      remat=cfg.train.remat, r3f=st.r3f, r3f_lambda=st.r3f_lambda, r3f_eps=st.r3f_eps,
      r3f_noise=st.r3f_noise)


def build_programs(cfg, model: models.Model, *, n_train: int, total: int,
                   layout: Optional[parallel.Layout] = None, seeds_per_group: int = 1,
                   seed_axis: Optional[str] = None) -> Programs:
  """The one place that turns a resolved config and a loaded model into the train programs.

  `n_train` (training examples on the device) and `total` (optimizer updates) fix the data
  order and the schedule; `layout` places seed groups on the devices (default: all local
  devices); `seed_axis` defaults to cfg.train.seed_axis resolved for this backend. Every
  function is traced at cfg.model.matmul_precision (engine/precision.py): applied here, it
  reaches the study, the benchmarks and the tests alike.
  """
  layout = layout or parallel.Layout.create()
  st = cfg.stabilisers
  model = dataclasses.replace(model, spectral_head=bool(st.r4f))  # R4F (as inputs.load sets it)
  model = peft.adapt(model, peft.spec_of(cfg.peft))  # `model` itself under peft.method='none'
  peft.check_stabilisers(model.peft if peft.is_adapted(model) else peft.Spec(), st)
  lr_scales = (stabilisers.layerwise_scales(peft.trained_shapes(model), model.arch,
                                            model.num_layers, st.llrd)
               if st.llrd != 1.0 else None)
  tx, schedule = optim.from_config(cfg.optim, total, lr_scales, child_tuning.from_config(st))
  spec = step_spec(cfg, model, n_train=n_train)
  groups, every = list(spec.group_names), spec.probe_every
  axis = seed_axis or seed_axis_for(cfg.train.seed_axis, jax.default_backend(),
                                    layout.num_devices)
  pretrained = jax.device_put(model.params, layout.replicated)
  # The step's replicated argument: a PEFT model's frozen backbone, else the stabilisers' anchor.
  shared = pretrained if peft.is_adapted(model) else None
  anchor = shared if shared is not None else (
      jax.device_put(stabilisers.anchor_of(model.params), layout.replicated)
      if stabilisers.uses_anchor(spec.mixout, spec.prior_wd) else None)

  matmul = cfg.model.matmul_precision

  def create_from(params, key, data_key=None):
    return create_train_state(dataclasses.replace(model, params=params), tx, key, total, every,
                              groups, st.reinit_layers, st.reinit_pooler, data_key,
                              spec.order_length, noisytune.scale_of(st))

  create_from = precision.at_precision(create_from, matmul)
  step_one = precision.at_precision(make_train_step(model, tx, schedule, spec), matmul)
  eval_one = precision.at_precision(make_eval_logits(model, spec.pass_segment_ids), matmul)
  reps_one = precision.at_precision(make_eval_reps(model, spec.pass_segment_ids), matmul)
  create_fn = jax.jit(over_seeds(create_from, (None, 0, 0), axis),
                      out_shardings=layout.seed_sharding(seeds_per_group))
  axes = (0, None) if shared is None else (0, None, None)  # (params, batches[, backbone])
  eval_logits = jax.jit(over_seeds(eval_one, axes, axis))
  eval_reps = jax.jit(over_seeds(reps_one, axes, axis))
  if shared is not None:  # the backbone goes in as an argument; the *_one functions bind it
    eval_logits = _bound_shared(eval_logits, shared)
    eval_reps = _bound_shared(eval_reps, shared)
    eval_one, reps_one = _bound_shared(eval_one, shared), _bound_shared(reps_one, shared)

  def create(seed_keys, data_keys=None):
    if data_keys is None:
      data_keys = jax.vmap(data_key_of)(jnp.asarray(seed_keys))
    return create_fn(pretrained, seed_keys, data_keys)

  step = jax.jit(precision.at_precision(make_group_step(model, tx, schedule, spec, axis), matmul),
                 donate_argnums=0, compiler_options=memory.step_compiler_options(
                     spec.remat, layout.mesh.devices.flat[0].platform))
  prepare = (jax.jit(precision.at_precision(over_seeds(child_tuning.make_prepare(
      models.with_remat(model, spec.remat), spec, cfg.optim.clip_norm,
      st.child_tuning_reserve_p, CHILD), (0, None), axis), matmul), donate_argnums=0)
             if st.child_tuning == "d" else lambda state, _: state)
  return Programs(
      create=create, prepare=prepare,
      step=step,
      eval_logits=eval_logits, eval_reps=eval_reps,
      create_one=functools.partial(create_from, model.params), step_one=step_one,
      eval_one=eval_one, reps_one=reps_one, tx=tx, schedule=schedule, spec=spec, group_names=groups,
      total_steps=total,
      seeds_per_group=seeds_per_group, seed_axis=axis, anchor=anchor, matmul_precision=matmul,
      peft=peft.record(model),
      trainable_params=peft.trainable_count(model))


def _bound_shared(fn: Callable, shared) -> Callable:
  """fn(params, batches, shared) as fn(params, batches): the PEFT backbone passed each call."""
  return lambda params, batches: fn(params, batches, shared)

