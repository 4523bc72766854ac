"""Make a half-precision copy of the MiniLM-L6 checkpoint small enough to copy to a GPU machine
without internet access, where the files copied beside the working tree must stay within 64 MiB
in all (the fp32 weights are 87 MiB).

  python scripts/carry_minilm.py carry/minilm_fp16 [--dtype=float16|bfloat16]   # ~44 MiB

The copy holds the same tensors rounded to 16 bits; jaxstab.engine.models.load casts every parameter
back to float32 on load, so on the GPU machine use
  --config.model.name_or_path=carry/minilm_fp16
(`carry/` is git-ignored; copy it to the GPU machine with the working tree). float16 is the
default: MiniLM's weights lie within +-8, well inside fp16's range, and its 10 mantissa bits round
them about 8x more finely than bfloat16's 7 (relative RMS error 2e-4 against 1.7e-3).
"""
import os
import shutil
import sys

import numpy as np
from safetensors.numpy import load_file, save_file

from jaxstab.config import config_lib


def main(dst: str, dtype: str = "float16") -> None:
  if dtype not in ("float16", "bfloat16"):
    raise SystemExit(f"carry_minilm.py: --dtype={dtype!r}; choose float16 or bfloat16")
  src = config_lib.minilm_folder()
  os.makedirs(dst, exist_ok=True)
  for name in ("config.json", "vocab.txt", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json"):
    if os.path.exists(os.path.join(src, name)):
      shutil.copy(os.path.join(src, name), dst)
  import ml_dtypes  # pylint: disable=import-outside-toplevel
  tensors = load_file(os.path.join(src, "model.safetensors"))
  half = np.float16 if dtype == "float16" else ml_dtypes.bfloat16
  small = {k: (v.astype(half) if v.dtype == np.float32 else v)
           for k, v in tensors.items()}
  save_file(small, os.path.join(dst, "model.safetensors"), metadata={"format": "pt"})
  size = sum(os.path.getsize(os.path.join(dst, f)) for f in os.listdir(dst))
  print(f"wrote {dst}: {size / 2**20:.1f} MiB ({dtype})")


if __name__ == "__main__":
  args = [a for a in sys.argv[1:] if not a.startswith("--dtype=")]
  dtypes = [a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--dtype=")]
  main(args[0] if args else "carry/minilm_fp16", *dtypes[-1:])
