"""Make a bf16 copy of the MiniLM-L6 checkpoint small enough to carry to the lent GPU machine.

  python scripts/carry_minilm.py carry/minilm_bf16      # ~45 MB: config, vocab, bf16 safetensors

The copy holds the same tensors rounded to bfloat16; jaxstab.models.load casts every parameter
back to float32 on load, so on the GPU machine use
  --config.model.name_or_path=carry/minilm_bf16
(`carry/` is git-ignored; pass it in the device call's `carry` list).
"""
import os
import shutil
import sys

import numpy as np
from safetensors.numpy import load_file, save_file

from jaxstab import config_lib


def main(dst: str) -> None:
  src = config_lib.minilm_folder()
  os.makedirs(dst, exist_ok=True)
  for name in ("config.json", "vocab.txt", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json"):
    if os.path.exists(os.path.join(src, name)):
      shutil.copy(os.path.join(src, name), dst)
  import ml_dtypes  # pylint: disable=import-outside-toplevel
  tensors = load_file(os.path.join(src, "model.safetensors"))
  small = {k: (v.astype(ml_dtypes.bfloat16) if v.dtype == np.float32 else v)
           for k, v in tensors.items()}
  save_file(small, os.path.join(dst, "model.safetensors"), metadata={"format": "pt"})
  size = sum(os.path.getsize(os.path.join(dst, f)) for f in os.listdir(dst))
  print(f"wrote {dst}: {size / 2**20:.1f} MiB")


if __name__ == "__main__":
  main(sys.argv[1] if len(sys.argv) > 1 else "carry/minilm_bf16")
