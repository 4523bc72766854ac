"""The GLUE task table: where each task's text and label live and how it is scored.

Adding a task is one entry in TASKS. Column numbers refer to the original GLUE TSV layout
(the one `download_glue_data.py` produced and the paper's reference code reads).
"""
import dataclasses
from typing import Optional, Tuple

from jaxstab.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Task:
  name: str                      # lower-case key used in configs
  glue_dir: str                  # folder name inside a GLUE data directory
  text_a: int                    # TSV column of the first sentence
  text_b: Optional[int]          # TSV column of the second sentence (None: single sentence)
  label: int                     # TSV column of the label
  labels: Tuple[str, ...]        # raw label strings; position = class id
  metric: str                    # main metric: 'accuracy' | 'acc_and_f1' | 'mcc'
  header: bool = True            # whether train/dev files start with a header row
  hf_name: str = ""              # config name of nyu-mll/glue on the HF hub
  hf_text: Tuple[str, ...] = ("sentence1", "sentence2")
  tfds_name: str = ""            # tensorflow-datasets builder name

  @property
  def num_labels(self) -> int:
    return len(self.labels)


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
    # The offline demo (jaxstab/demo_task.py): does sentence B mention A's subject?
    "demo": Task("demo", "demo", 0, 1, 2, ("0", "1"), "accuracy"),
}


def get_task(name: str) -> Task:
  key = str(name).lower().replace("-", "")
  if key not in TASKS:
    raise ConfigError(f"unknown task {name!r} (config key 'task'); choose one of: "
                      f"{', '.join(sorted(TASKS))}")
  return TASKS[key]
