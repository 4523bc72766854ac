"""The GLUE task table: where each task's text and label live and how it is scored.

Adding a task is one entry in TASKS. Column numbers refer to the original GLUE TSV layout
(the one `download_glue_data.py` produced and the paper's reference code reads); a negative
column counts from the end of the row (MNLI's gold label is the last column of train, 12
columns, and of dev, 16 columns).
"""
import dataclasses
from typing import Optional, Tuple

from jaxstab.infra.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Task:
  name: str                      # lower-case key used in configs
  glue_dir: str                  # folder name inside a GLUE data directory
  text_a: int                    # TSV column of the first sentence
  text_b: Optional[int]          # TSV column of the second sentence (None: single sentence)
  label: int                     # TSV column of the label (negative: from the row's end)
  labels: Tuple[str, ...]        # raw label strings; position = class id; () for regression
  metric: str                    # main metric: 'accuracy' | 'acc_and_f1' | 'mcc' | 'f1' |
                                 # 'pearson_spearman' (regression)
  header: bool = True            # whether train/dev files start with a header row
  hf_name: str = ""              # config name of nyu-mll/glue on the HF hub
  hf_text: Tuple[str, ...] = ("sentence1", "sentence2")
  tfds_name: str = ""            # tensorflow-datasets builder name
  regression: bool = False       # one output, float labels, MSE loss (STS-B)
  dev_name: str = "dev"          # the main dev set's file name (dev_matched for MNLI)
  extra_dev: Tuple[str, ...] = ()  # further dev sets, scored besides the main one
  skip_malformed: bool = False   # rows too short or with a bad label are skipped (and counted)

  @property
  def num_labels(self) -> int:
    """Outputs of the model's head: one per class, or 1 for regression."""
    return 1 if self.regression else len(self.labels)

  def file_name(self, split: str) -> str:
    """The TSV file (without .tsv) of 'train', 'dev' or an extra dev set."""
    return self.dev_name if split == "dev" else split

  def hub_split(self, split: str) -> str:
    """The split's name in nyu-mll/glue and tfds: dev -> validation, dev_x -> validation_x."""
    name = self.file_name(split)
    return "validation" + name[3:] if name.startswith("dev") else name


TASKS = {
    "rte": Task("rte", "RTE", 1, 2, 3, ("entailment", "not_entailment"), "accuracy",
                hf_name="rte", tfds_name="glue/rte"),
    "mrpc": Task("mrpc", "MRPC", 3, 4, 0, ("0", "1"), "acc_and_f1",
                 hf_name="mrpc", tfds_name="glue/mrpc"),
    "cola": Task("cola", "CoLA", 3, None, 1, ("0", "1"), "mcc", header=False,
                 hf_name="cola", hf_text=("sentence",), tfds_name="glue/cola"),
    "sst2": Task("sst2", "SST-2", 0, None, 1, ("0", "1"), "accuracy",
                 hf_name="sst2", hf_text=("sentence",), tfds_name="glue/sst2"),
    "qnli": Task("qnli", "QNLI", 1, 2, 3, ("entailment", "not_entailment"), "accuracy",
                 hf_name="qnli", hf_text=("question", "sentence"), tfds_name="glue/qnli"),
    # id qid1 qid2 question1 question2 is_duplicate. The real train.tsv has rows cut short or
    # run together (a question holding a newline); they are skipped and counted, as
    # transformers' QqpProcessor skips them (its IndexError branch).
    "qqp": Task("qqp", "QQP", 3, 4, 5, ("0", "1"), "acc_and_f1", hf_name="qqp",
                hf_text=("question1", "question2"), tfds_name="glue/qqp", skip_malformed=True),
    # index promptID pairID genre s1_binary_parse s2_binary_parse s1_parse s2_parse sentence1
    # sentence2 label1 [label2..label5] gold_label. Class order = nyu-mll/glue's and tfds' ids.
    "mnli": Task("mnli", "MNLI", 8, 9, -1, ("entailment", "neutral", "contradiction"),
                 "accuracy", hf_name="mnli", hf_text=("premise", "hypothesis"),
                 tfds_name="glue/mnli", dev_name="dev_matched", extra_dev=("dev_mismatched",)),
    # index genre filename year old_index source1 source2 sentence1 sentence2 score (0..5)
    "stsb": Task("stsb", "STS-B", 7, 8, 9, (), "pearson_spearman", hf_name="stsb",
                 tfds_name="glue/stsb", regression=True),
    # index sentence1 sentence2 label (1 = entailment); nyu-mll/glue: 0 not_entailment, 1 ent.
    "wnli": Task("wnli", "WNLI", 1, 2, 3, ("0", "1"), "accuracy", hf_name="wnli",
                 tfds_name="glue/wnli"),
    # The offline demo (jaxstab/data/demo_task.py): does sentence B mention A's subject?
    "demo": Task("demo", "demo", 0, 1, 2, ("0", "1"), "accuracy"),
}


def get_task(name: str) -> Task:
  key = str(name).lower().replace("-", "")
  if key not in TASKS:
    raise ConfigError(f"unknown task {name!r} (config key 'task'); choose one of: "
                      f"{', '.join(sorted(TASKS))}")
  return TASKS[key]
