"""The offline demo task: small sentence pairs the project generates itself.

Sentence A says who did what to whom; sentence B mentions two people. The label is 1 when B
mentions A's subject. A tiny transformer learns it in a few hundred steps (attention must match
tokens across the two sentences), so the demo shows a real fine-tuning curve with no download.
"""
import numpy as np

_NAMES = ("anna ben carl dora emil fay gus hana ivan jill karl lena milo nora otto pia quin "
          "rosa sven tara ugo vera walt xena yuri zoe").split()
_VERBS = "saw helped called met thanked followed visited paid".split()
_PLACES = "park market school harbour station library garden bakery".split()


def generate(n: int, seed: int):
  """Returns (text_a, text_b, labels) for n pairs, balanced labels, fully determined by seed."""
  rng = np.random.default_rng(seed)
  text_a, text_b, labels = [], [], []
  for i in range(n):
    subj, obj, x, y = rng.choice(len(_NAMES), size=4, replace=False)
    verb, place = rng.choice(_VERBS), rng.choice(_PLACES)
    label = i % 2
    other = (subj if label else x, y)
    first, second = (other if rng.random() < 0.5 else other[::-1])
    text_a.append(f"{_NAMES[subj]} {verb} {_NAMES[obj]} at the {place} .")
    text_b.append(f"{_NAMES[first]} and {_NAMES[second]} went to the {rng.choice(_PLACES)} .")
    labels.append(label)
  order = rng.permutation(n)
  return ([text_a[i] for i in order], [text_b[i] for i in order],
          np.asarray(labels, np.int32)[order])


SIZES = {"train": 1200, "dev": 300}
SEEDS = {"train": 1234, "dev": 5678}
