"""The presets: the paper's per-model differences, the recipes users compare, and the two
fidelities (what the reference code ran, or jaxstab's corrections). Plain data, applied by
config_lib.apply_preset in one order: model, then setting (which names its fidelity), then
fidelity; the user's own values come after all of them."""

# Per-model differences the paper applies (../shared/paper/NOTES.md, "Per model").
MODELS = {
    "bert-large-uncased": {},
    "bert-base-uncased": {},
    "roberta-large": {"optim.weight_decay": 0.1, "optim.b2": 0.98, "optim.clip_norm": 0.0},
    "roberta-base": {"optim.weight_decay": 0.1, "optim.b2": 0.98, "optim.clip_norm": 0.0},
    "albert-large-v2": {"model.dropout": 0.0, "optim.weight_decay": 0.0},
    "albert-base-v2": {"model.dropout": 0.0, "optim.weight_decay": 0.0},
    # Beyond the paper (its three families): ELECTRA's own GLUE recipe has no weight decay
    # (Clark et al. 2020, appendix, fine-tuning hyperparameters; its layer-wise lr decay is the
    # `llrd` setting, not a per-model difference). DistilBERT (Sanh et al. 2019) fine-tunes as
    # BERT does; XLM-R's paper names no GLUE fine-tuning values of its own, so it keeps the
    # defaults.
    "google/electra-large-discriminator": {"optim.weight_decay": 0.0},
    "google/electra-base-discriminator": {"optim.weight_decay": 0.0},
    "distilbert-base-uncased": {},
    "xlm-roberta-large": {},
    "xlm-roberta-base": {},
    # DeBERTa-v3 (jaxstab's own Flax module; needs the `deberta` extra for its SentencePiece
    # tokenizer). The short names stand for Microsoft's hub ids. No per-model overrides: the
    # v3 paper's GLUE learning-rate search is advice in docs/configuration.md, not a preset.
    "deberta-v3-large": {"model.name_or_path": "microsoft/deberta-v3-large"},
    "deberta-v3-base": {"model.name_or_path": "microsoft/deberta-v3-base"},
    "deberta-v3-small": {"model.name_or_path": "microsoft/deberta-v3-small"},
    "deberta-v3-xsmall": {"model.name_or_path": "microsoft/deberta-v3-xsmall"},
    # ModernBERT (jaxstab's own Flax module; its tokenizer.json needs nothing beyond the base
    # install). The short names stand for Answer.AI's hub ids; no per-model overrides (the
    # ModernBERT paper's GLUE learning rates are advice in docs/running.md, not a preset).
    "modernbert-large": {"model.name_or_path": "answerdotai/ModernBERT-large"},
    "modernbert-base": {"model.name_or_path": "answerdotai/ModernBERT-base"},
    "tiny-bert": {"model.tokenizer": "wordpiece"},
    "tiny-roberta": {"model.tokenizer": "wordpiece"},
    "tiny-albert": {"model.tokenizer": "wordpiece"},
    "tiny-electra": {"model.tokenizer": "wordpiece"},
    "tiny-distilbert": {"model.tokenizer": "wordpiece"},
    "tiny-xlm-roberta": {"model.tokenizer": "wordpiece"},
    "tiny-deberta-v3": {"model.tokenizer": "wordpiece"},
    "tiny-modernbert": {"model.tokenizer": "wordpiece"},
}

# The recipes users compare (../shared/paper/NOTES.md "Settings"; BUILD_NOTES.md says why each value was chosen).
# Every setting starts from SETTING_BASE, so applying one never inherits another's switches.
# Weight decay and dropout are left to the model preset unless a setting needs its own.
SETTING_BASE = {
    "fidelity": "corrected", "optim.bias_correction": False, "optim.eps_mode": "hf", "train.epochs": 3.0,
    "select": "final", "stabilisers.mixout": 0.0, "stabilisers.reinit_layers": 0,
    "stabilisers.reinit_pooler": False, "stabilisers.llrd": 1.0, "stabilisers.prior_wd": False,
    "stabilisers.noisytune": False, "stabilisers.child_tuning": "off", "stabilisers.r3f": False,
    "stabilisers.r4f": False,
}
SETTINGS = {
    # The paper's own recipes run, by default, exactly what the reference code ran (FIDELITY).
    "devlin": {"fidelity": "reference"},
    # Devlin's recipe with Adam's bias correction switched on, nothing else changed (3 epochs,
    # end-of-training result): the paper's bias-correction ablation (reference configs
    # configs/rte/pooler-*_adamW_bias-correct.yaml, `correct_bias: true`).
    "devlin_bc": {"fidelity": "reference", "optim.bias_correction": True},
    "ours": {"fidelity": "reference", "optim.bias_correction": True, "train.epochs": 20.0,
             "select": "best"},
    "mixout": {"fidelity": "reference", "optim.bias_correction": True, "stabilisers.mixout": 0.9,
               "model.dropout": 0.0},
    "reinit": {"optim.bias_correction": True, "stabilisers.reinit_layers": 5,
               "stabilisers.reinit_pooler": True},
    "llrd": {"optim.bias_correction": True, "stabilisers.llrd": 0.95},
    "prior_wd": {"optim.bias_correction": True, "stabilisers.prior_wd": True,
                 "optim.weight_decay": 1e-3},
}

# The stabilisers that came after Zhang et al. (docs/running.md, "Later stabilisers"): each one's
# switch and its authors' defaults (config_lib.base_config names the source file of each). The
# authors train with bias-corrected Adam; on top of that a comparison with Devlin's recipe would
# measure two changes at once, so each method is a setting on top of Devlin's recipe (`r3f`,
# ...) and again on top of the paper's baseline (`ours_r3f`, ...).
METHODS = {
    "r3f": {"stabilisers.r3f": True, "stabilisers.r3f_lambda": 1.0, "stabilisers.r3f_eps": 1e-5,
            "stabilisers.r3f_noise": "uniform"},
    "r4f": {"stabilisers.r3f": True, "stabilisers.r4f": True, "stabilisers.r3f_lambda": 1.0,
            "stabilisers.r3f_eps": 1e-5, "stabilisers.r3f_noise": "uniform"},
    "child_tuning_d": {"stabilisers.child_tuning": "d", "stabilisers.child_tuning_reserve_p": 0.3},
    "child_tuning_f": {"stabilisers.child_tuning": "f", "stabilisers.child_tuning_reserve_p": 0.3},
    "noisytune": {"stabilisers.noisytune": True, "stabilisers.noisytune_lambda": 0.15},
}
for _name, _switches in METHODS.items():
  SETTINGS[_name] = dict(SETTINGS["devlin"], **_switches)
  SETTINGS["ours_" + _name] = dict(SETTINGS["ours"], **_switches)

# Every known difference between jaxstab and the reference code, switched together (the table of
# docs/reference-mode.md and BUILD_NOTES cite the reference file and line of each). Each key stays
# settable alone; a setting's preset picks its fidelity, `fidelity=` picks another.
FIDELITY = {
    "reference": {"model.pass_segment_ids": False, "model.head": "reference",
                  "model.roberta_prefix_space": True, "stabilisers.mixout_head": True,
                  "train.eval_every_steps": -1, "train.full_steps_count": "reference"},
    "corrected": {"model.pass_segment_ids": True, "model.head": "transformers",
                  "model.roberta_prefix_space": False, "stabilisers.mixout_head": False,
                  "train.eval_every_steps": 0, "train.full_steps_count": "batches"},
}
