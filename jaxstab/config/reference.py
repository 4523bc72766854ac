"""What the paper's code did, as data and pure functions: when it evaluated dev, and how many
steps its small-data "full steps" runs took.

The reference is github uds-lsv/bert-stable-fine-tuning (a fork of transformers 2.5.1), folder
examples/bert_stable_fine_tuning/; file and line numbers below are of that folder. Steps are
counted as jaxstab counts them: the number of optimizer updates already applied.
"""
import dataclasses
from typing import Dict, List, Optional

BATCH_SIZE = 16        # per_gpu_train_batch_size in every config (line 48), one GPU


@dataclasses.dataclass(frozen=True)
class TaskFacts:
  """One task's numbers in the reference configs (batch 16)."""
  train_examples: int    # rows of GLUE's train.tsv
  steps_per_epoch: int   # len(DataLoader): ceil(train_examples / 16), the last partial batch kept
  eval_every: int        # training.eval_logging_steps of configs/<task>/*.yaml (line 51)
  full_steps: int        # training.max_steps of configs/<task>-sampled/*_full-steps.yaml (line 46)
  full_epoch_steps: int  # the per-epoch count behind full_steps (full_steps / 3)


TASKS: Dict[str, TaskFacts] = {
    # "with batch_size 16 we have 156 iterations per epoch, we evaluate 3x per epoch";
    # rte-sampled/..._full-steps.yaml: "max_steps: 468 # ... 156 steps per epoch"
    "rte": TaskFacts(2490, 156, 52, 468, 156),
    # "230 iterations per epoch, we evaluate 3x per epoch"; mrpc-sampled: "max_steps: 690"
    "mrpc": TaskFacts(3668, 230, 76, 690, 230),
    # "534 iterations per epoch, we evaluate 3x per epoch"; cola-sampled: "max_steps: 1602 #
    # ... 534 steps per epoch on full CoLA". CoLA's 8551 examples make ceil(8551/16) = 535
    # batches, which is what the reference's own full-data CoLA runs take per epoch; 534 is
    # floor(8551/16), a miscount in the configs (RTE and MRPC use the true count).
    "cola": TaskFacts(8551, 535, 178, 1602, 534),
}


def reference_eval_every(task: str, steps_per_epoch: int) -> int:
  """The N of "evaluate dev every N global steps".

  The configs' values are "3x per epoch" rounded down: 52 = 156 // 3, 76 = 230 // 3,
  178 = 535 // 3 (= 534 // 3), and 21 = 63 // 3 for the 1,000-example subsets
  (configs/*-sampled/*_adamW.yaml, line 51). For a task and epoch length the configs cover, the
  config's value; otherwise the same rule, steps_per_epoch // 3.
  (Two subset configs say 52 and 156 instead, configs/cola-sampled/..._bias-correct*.yaml and
  mrpc-sampled/..._bias-correct.yaml: copied from RTE. They report the final model, so their
  evaluation points choose nothing.)
  """
  facts = TASKS.get(task)
  if facts is not None and steps_per_epoch == facts.steps_per_epoch:
    return facts.eval_every
  return max(steps_per_epoch // 3, 1)


def reference_eval_steps(task: str, steps_per_epoch: int, total_steps: int,
                         every: Optional[int] = None) -> List[int]:
  """The steps (updates applied) at which the reference evaluates dev, sorted, each once.

  run_finetuning.py, train():
  - step 0, before any update (lines 250-261; evaluate_during_training is true in every
    config);
  - every `every` global steps (default `reference_eval_every`): the check at lines 513-514
    runs for each batch *before* that batch's update (optimizer.step() is line 556,
    global_step += 1 line 578), so it sees g = updates applied, and it requires g > 0 and
    `step < steps_per_epoch - 1`: g is never the last batch of an epoch (g % spe != spe - 1);
  - at the end of every epoch, g = (e + 1) * spe (lines 601-605), and the end of training.
  When g % N == 0 falls on the first batch of an epoch the same parameters are evaluated twice
  (end of the previous epoch and before the next batch); they count once here. The best
  checkpoint is the first of the highest scores (strict `>`, lines 522 and 608).

  For max_steps runs (the small-data "full steps" configs) the reference compares `step` with
  t_total / num_train_epochs (lines 118-119) instead of the real epoch length; those configs
  report the final model, so this function applies the rule with the real epoch length.
  """
  spe, total = int(steps_per_epoch), int(total_steps)
  if spe <= 0 or total < 0:
    raise ValueError(f"steps_per_epoch={spe} and total_steps={total} must be positive")
  n = int(every) if every else reference_eval_every(task, spe)
  if n <= 0:
    raise ValueError(f"the evaluation interval must be positive, not {n}")
  steps = {0, total}
  steps.update(g for g in range(n, total, n) if g % spe != spe - 1)
  steps.update(range(spe, total, spe))
  return sorted(steps)


def reference_full_steps(task: str, epochs: float, full_steps_per_epoch: int) -> int:
  """Updates of the small-data ablation's "as many steps as `epochs` epochs of the full set".

  The reference's configs hard-code three full epochs as max_steps
  (configs/<task>-sampled/*_full-steps.yaml, line 46): RTE 468 = 3 x 156 and MRPC 690 = 3 x 230,
  the batches of a full epoch (ceil(n / 16)), but CoLA 1602 = 3 x 534 = 3 x floor(8551 / 16),
  where a full CoLA epoch is 535 batches (3 x 535 = 1605, what jaxstab counts otherwise).
  With max_steps the reference's loop stops once global_step > max_steps
  (run_finetuning.py, line 596), i.e. after one more update, but that update has lr 0
  (linear schedule over t_total = max_steps, line 163) and mAdamW scales both the step and the
  decay by lr (adamw.py, lines 82-99), so the parameters are those after max_steps updates.

  For a task the configs cover, when `full_steps_per_epoch` is that task's full epoch at batch
  16 (so the data and batch are the reference's), the configs' per-epoch count times `epochs`;
  otherwise round(epochs * full_steps_per_epoch), jaxstab's own count.
  """
  facts = TASKS.get(task)
  per_epoch = (facts.full_epoch_steps
               if facts is not None and full_steps_per_epoch == facts.steps_per_epoch
               else full_steps_per_epoch)
  return int(round(epochs * per_epoch))
