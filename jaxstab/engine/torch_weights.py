"""Reading a PyTorch checkpoint folder onto a jaxstab Flax tree by one table of names.

Families whose Flax module is jaxstab's own (families.Family.classes names a jaxstab class) have
no transformers Flax loader to lean on, so this module is that loader, shared by all of them:
- `resolve`: a hub id becomes a local folder (huggingface_hub's cache), a folder stays itself;
- `read_state`: `model.safetensors`, else `pytorch_model.bin`, as {name: float32 array}. A `.bin`
  is a pickle and a pickle can run code, so it is read only with torch's weights-only unpickler
  (`torch.load(..., weights_only=True)`), which admits tensors and plain containers and refuses
  any other global before anything is called. Without torch a `.bin` is refused with a message
  (safetensors needs no torch);
- `to_flax`: every checkpoint name is either mapped by the family's table (a regex on the module
  prefix -> a Flax path template, with the leaf's kind: a Linear's weight is transposed into a
  kernel, a LayerNorm's weight is its scale, an Embedding's weight its table), or matched by the
  family's list of ignored names (other heads, buffers; named in the log), or an error. Every
  Flax leaf of the model must be filled, or the error names the missing one.
"""
import os
import re
from typing import Dict, Iterable, Sequence, Tuple

import jax
import numpy as np
from absl import logging

from jaxstab.infra import treepath
from jaxstab.infra.errors import ConfigError

SAFETENSORS, PICKLE = "model.safetensors", "pytorch_model.bin"
DENSE, NORM, EMBED = "dense", "norm", "embed"
# PyTorch leaf name -> Flax leaf name, per kind of module.
LEAVES = {DENSE: {"weight": "kernel", "bias": "bias"}, NORM: {"weight": "scale", "bias": "bias"},
          EMBED: {"weight": "embedding"}}
# Older checkpoints name a LayerNorm's parameters as TF did; transformers renames them on loading.
_OLD_NORM_NAMES = {"gamma": "weight", "beta": "bias"}


def resolve(name: str) -> str:
  """The local folder of `name`: itself if it is a folder, else the hub snapshot holding its
  config and weights (downloaded into huggingface_hub's cache if not there yet)."""
  if os.path.isdir(name):
    return name
  try:
    from huggingface_hub import snapshot_download  # pylint: disable=import-outside-toplevel
    return snapshot_download(name, allow_patterns=["config.json", SAFETENSORS, PICKLE])
  except Exception as e:  # pylint: disable=broad-except  # offline, unknown id, no access
    raise ConfigError(f"cannot fetch the weights of {name!r} (model.name_or_path): "
                      f"{str(e).splitlines()[0] if str(e) else type(e).__name__}. Offline, pass a "
                      "local folder holding config.json and model.safetensors or "
                      "pytorch_model.bin") from e


def read_state(folder: str) -> Tuple[Dict[str, np.ndarray], str]:
  """({checkpoint name: float32 array}, the file read) of a model folder."""
  path = os.path.join(folder, SAFETENSORS)
  if os.path.isfile(path):
    from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
    try:
      state = load_file(path)
    except Exception as e:  # pylint: disable=broad-except  # damaged file, bf16 without numpy type
      state = _safetensors_via_torch(path, e)
    return {k: np.asarray(v, np.float32) for k, v in state.items()}, path
  path = os.path.join(folder, PICKLE)
  if os.path.isfile(path):
    return read_pickle(path), path
  raise ConfigError(f"model folder {folder} has neither {SAFETENSORS} nor {PICKLE} "
                    "(model.name_or_path)")


def checkpoint_names(folder: str):
  """The weight names of a model folder's checkpoint (safetensors: from its header alone)."""
  path = os.path.join(folder, SAFETENSORS)
  if os.path.isfile(path):
    from safetensors import safe_open  # pylint: disable=import-outside-toplevel
    try:
      with safe_open(path, framework="numpy") as f:
        return list(f.keys())
    except Exception as e:  # pylint: disable=broad-except  # a damaged header
      raise ConfigError(f"cannot read {path}: {e}") from e
  return list(read_state(folder)[0])


def _safetensors_via_torch(path, first_error):
  try:
    from safetensors.torch import load_file  # pylint: disable=import-outside-toplevel
    return {k: v.float().numpy() for k, v in load_file(path).items()}
  except Exception as e:  # pylint: disable=broad-except
    raise ConfigError(f"cannot read {path}: {first_error}") from e


def read_pickle(path: str) -> Dict[str, np.ndarray]:
  """A PyTorch `.bin` state dict read with torch's weights-only unpickler: nothing in the file
  is executed; a file that asks for any other object is refused with a ConfigError."""
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ConfigError(f"{path} is a PyTorch pickle; reading it safely needs torch (pip install "
                      "torch), or convert the folder to model.safetensors") from e
  try:
    state = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # pylint: disable=broad-except  # UnpicklingError and kin
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise ConfigError(f"refused to read {path}: it is not a plain PyTorch state dict (torch's "
                      f"weights-only loader said: {first})") from e
  if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
    raise ConfigError(f"{path} holds no flat dict of tensors (a PyTorch state dict)")
  return {k: v.detach().to(torch.float32).numpy() for k, v in state.items()}


def normalise_names(state: Dict[str, np.ndarray], prefix: str,
                    bare_roots: Sequence[str] = ("embeddings", "encoder")) -> Dict[str, np.ndarray]:
  """Names as the family's table spells them: LayerNorm gamma/beta as weight/bias, and the
  backbone's prefix added when the checkpoint was saved from the bare encoder (no `prefix.`):
  to the names whose first part is one of the encoder's own (`bare_roots`)."""
  out = {}
  bare = not any(k.startswith(prefix + ".") for k in state)
  for k, v in state.items():
    head, _, leaf = k.rpartition(".")
    if "LayerNorm" in head and leaf in _OLD_NORM_NAMES:
      k = f"{head}.{_OLD_NORM_NAMES[leaf]}"
    if bare and k.split(".")[0] in bare_roots:
      k = f"{prefix}.{k}"
    out[k] = v
  return out


def to_flax(state: Dict[str, np.ndarray], table: Sequence[Tuple[str, str, str]],
            ignored: Iterable[Tuple[str, str]], shapes, name: str):
  """(Flax params shaped like `shapes`, {ignored name: why}) from a checkpoint's `state`.

  `table`: (regex on a module prefix, Flax path template with \\1.. groups, kind); `ignored`:
  (regex on a full name, why). Raises ConfigError naming the first unexpected, missing or
  misshapen weight."""
  ignored = list(ignored)
  want = {"/".join(treepath.names(p)): leaf for p, leaf in
          jax.tree_util.tree_flatten_with_path(shapes)[0]}
  got, skipped = {}, {}
  for key, value in state.items():
    why = next((w for pattern, w in ignored if re.fullmatch(pattern, key)), None)
    if why is not None:
      skipped[key] = why
      continue
    module, _, leaf = key.rpartition(".")
    dest = _destination(module, leaf, table)
    if dest is None or dest[0] not in want:
      raise ConfigError(f"{name}: the checkpoint holds {key} {tuple(value.shape)}, which this "
                        "model has no place for (an unexpected weight: another architecture or "
                        "a config that does not match the weights)")
    path, kind = dest
    if kind == DENSE and leaf == "weight":
      value = value.T  # PyTorch Linear is [out, in]; a Flax kernel is [in, out]
    if tuple(value.shape) != tuple(want[path].shape):
      raise ConfigError(f"{name}: {key} has shape {tuple(value.shape)} but the model's {path} "
                        f"needs {tuple(want[path].shape)}")
    got[path] = np.ascontiguousarray(value, np.float32)
  missing = [p for p in want if p not in got]
  if missing:
    raise ConfigError(f"{name}: the checkpoint lacks {len(missing)} weight(s) of the model, "
                      f"e.g. {', '.join(missing[:3])}")
  if skipped:
    logging.info("%s: checkpoint weights not used: %s", name,
                 "; ".join(f"{k} ({w})" for k, w in sorted(skipped.items())))
  return _unflatten(got), skipped


def _destination(module: str, leaf: str, table):
  for pattern, template, kind in table:
    m = re.fullmatch(pattern, module)
    if m and leaf in LEAVES[kind]:
      return f"{m.expand(template)}/{LEAVES[kind][leaf]}", kind
  return None


def _unflatten(flat: Dict[str, np.ndarray]) -> dict:
  out: dict = {}
  for path, value in flat.items():
    node = out
    *parents, last = path.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[last] = value
  return out
