"""scripts/carry_minilm.py: the half-precision copy carried to the GPU machine loads as float32
parameters that match the real MiniLM weights to within the 16-bit rounding."""
import importlib.util
import logging
import os
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxstab.config import config_lib
from jaxstab.engine import models

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "carry_minilm.py"


def _script():
  spec = importlib.util.spec_from_file_location("carry_minilm", SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _load(folder):
  cfg = config_lib.base_config().model
  cfg.update(dict(name_or_path=folder, dtype="float32", dropout=-1.0, attention="reference"))
  return models.load(cfg, num_labels=2)


@pytest.mark.parametrize("dtype,bound", [("float16", 1e-3), ("bfloat16", 8e-3)])
def test_the_carried_copy_restores_float32_weights_close_to_the_originals(tmp_path, capfd, dtype,
                                                                          bound):
  dst = str(tmp_path / "minilm")
  _script().main(dst, dtype)
  size = sum(os.path.getsize(os.path.join(dst, f)) for f in os.listdir(dst))
  assert size < 48 * 2**20  # leaves room for the wheels and data under the 64 MiB carry limit
  original = _load(config_lib.minilm_folder()).params["bert"]
  capfd.readouterr()
  carried = _load(dst).params["bert"]
  # transformers' warning that lists every half-precision tensor is dropped: they are cast back
  assert "precision from the model checkpoint" not in "".join(capfd.readouterr())
  pairs = zip(jax.tree_util.tree_leaves(original), jax.tree_util.tree_leaves(carried))
  for a, b in pairs:
    a, b = np.asarray(a), np.asarray(b)
    assert b.dtype == np.float32 and a.shape == b.shape
    assert np.linalg.norm(a - b) <= bound * np.linalg.norm(a) + 1e-12


def test_an_unknown_dtype_is_refused(tmp_path):
  with pytest.raises(SystemExit, match="float16 or bfloat16"):
    _script().main(str(tmp_path / "x"), "int8")


def test_loading_a_checkpoint_without_a_head_says_nothing_misleading(capfd, caplog):
  """transformers' 'newly initialized ... You should probably TRAIN' is dropped when only the
  classifier is missing (jaxstab draws it per seed); any other missing weight is still said."""
  capfd.readouterr()
  _load(config_lib.minilm_folder())
  said = "".join(capfd.readouterr()) + caplog.text
  assert "newly initialized" not in said and "You should probably TRAIN" not in said
  record = logging.LogRecord("transformers.modeling_flax_utils", logging.WARNING, "", 0,
                             "Some weights of M were not initialized from the model checkpoint at "
                             "x and are newly initialized: {('classifier', 'bias'), "
                             "('bert', 'pooler', 'dense', 'kernel')}\nYou should probably TRAIN", (),
                             None)
  assert models._not_load_noise(record)  # pylint: disable=protected-access
  record.msg = record.msg.replace("('bert', 'pooler', 'dense', 'kernel')", "('classifier', 'kernel')")
  assert not models._not_load_noise(record)  # pylint: disable=protected-access
