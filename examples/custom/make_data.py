"""Writes examples/custom/train.csv and dev.csv: short product reviews labelled positive or
negative, made from the phrases below (written for jaxstab, no outside text), 40 rows each.

    python examples/custom/make_data.py [--out=examples/custom]

The files are committed; tests/test_custom_data.py checks that this script still writes them
byte for byte, and trains on them (README and docs/own-data.md).
"""
import argparse
import csv
import io
import os
import random

SUBJECTS = ["the battery", "the screen", "the delivery", "the customer service", "the soup",
            "the hotel room", "the film", "the keyboard", "this jacket", "the coffee",
            "the charger", "the tent", "the blender", "the manual", "the headphones",
            "the pizza", "the mattress", "the camera", "the backpack", "the kettle"]
POSITIVE = ["works perfectly", "exceeded my expectations", "was a pleasant surprise",
            "is worth every penny", "made my week", "arrived early and intact",
            "feels solid and well made", "is exactly as described"]
NEGATIVE = ["stopped working after two days", "was a complete waste of money",
            "broke the first time I used it", "is far worse than advertised",
            "arrived late and damaged", "left me disappointed", "feels cheap and flimsy",
            "is nothing like the photos"]
OPENERS = {"positive": ["", "", "Honestly, ", "To be fair, ", "Happily, "],
           "negative": ["", "", "Honestly, ", "To be fair, ", "Sadly, "]}
CLOSERS = {"positive": ["", " I would buy it again.", " Highly recommended.",
                        " My whole family loves it."],
           "negative": ["", " I want a refund.", " Avoid it.", " I will not order again."]}
ROWS = {"train": (40, 1), "dev": (40, 2)}   # rows and random seed of each file


def review(rng: random.Random, label: str) -> str:
  phrase = rng.choice(POSITIVE if label == "positive" else NEGATIVE)
  opener = rng.choice(OPENERS[label])
  subject = rng.choice(SUBJECTS)
  text = f"{opener}{subject} {phrase}."
  return text[0].upper() + text[1:] + rng.choice(CLOSERS[label])


def rows(split: str):
  """[(id, review, sentiment)] of one file: balanced, shuffled, no review twice."""
  n, seed = ROWS[split]
  rng = random.Random(seed)
  labels = ["positive", "negative"] * (n // 2)
  rng.shuffle(labels)
  out, seen = [], set()
  for label in labels:
    text = review(rng, label)
    while text in seen:
      text = review(rng, label)
    seen.add(text)
    out.append((f"{split}-{len(out) + 1}", text, label))
  return out


def csv_text(split: str) -> str:
  buf = io.StringIO()
  writer = csv.writer(buf, lineterminator="\n")
  writer.writerow(["id", "review", "sentiment"])
  writer.writerows(rows(split))
  return buf.getvalue()


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
  args = parser.parse_args()
  for split in ROWS:
    path = os.path.join(args.out, f"{split}.csv")
    with open(path, "w", encoding="utf-8", newline="") as f:
      f.write(csv_text(split))
    print(f"wrote {path}")


if __name__ == "__main__":
  main()
