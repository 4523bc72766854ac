"""Reference mode, model and data side: each switch reproduces what the paper's code
(uds-lsv/bert-stable-fine-tuning, transformers 2.5.1) did, and its default keeps jaxstab's own
behaviour. jaxstab/config/reference.py and the docstrings it points to cite the reference's lines."""
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxstab.config import config_lib, reference
from jaxstab.data import dataset, tasks, vocab
from jaxstab.engine import models, stabilisers, train as train_lib
from jaxstab.infra.errors import ConfigError

TEXTS = ["the cat sat on the mat", "a dog barked at the cat", "no weapons were found in iraq",
         "the treaty was signed in paris"]


def _tiny(arch, head="transformers", dropout=0.0):
  cfg = config_lib.task_config("rte", f"model=tiny-{arch}")
  cfg.model.dropout = dropout
  cfg.model.head = head
  tok = vocab.train_wordpiece(TEXTS, 200)
  model = models.load(cfg.model, 2, tok)
  enc = tok(TEXTS[:2], TEXTS[2:], padding="max_length", max_length=16, truncation=True,
            return_tensors="np")
  batch = {k: jnp.asarray(enc[k], jnp.int32)
           for k in ("input_ids", "attention_mask", "token_type_ids")}
  return model, batch


def _head_calls(model, params, batch, key):
  """Train-mode logits and every module call inside the classification head, in order."""
  calls = []

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    path = context.module.path
    if context.method_name == "__call__" and path and path[0] == "classifier":
      calls.append(dict(kind=type(context.module).__name__, path=path, args=args,
                        kwargs=kwargs, out=out))
    return out

  with nn.intercept_methods(record):
    logits = model.logits(params, batch, train=True, dropout_key=key)
  return logits, calls


def _active_dropouts(calls):
  return [c for c in calls if c["kind"] == "Dropout" and not c["kwargs"].get("deterministic")]


# ------------------------------------------------------------------- a) RoBERTa's head


@pytest.fixture(scope="module")
def roberta_heads():
  """tiny-roberta with both heads; only the head drops (p=0.5), so the backbone is exact."""
  out = {}
  for head in models.HEADS:
    model, batch = _tiny("roberta", head)
    model.config.classifier_dropout = 0.5  # the head's rate; the backbone's dropout is 0
    out[head] = model
  return out, batch


def test_reference_roberta_head_draws_one_dropout_mask_after_tanh(roberta_heads):
  heads, batch = roberta_heads
  model = heads["reference"]
  params = models.init_head(model.params, jax.random.PRNGKey(3), 0.02, head="reference")
  logits, calls = _head_calls(model, params, batch, jax.random.PRNGKey(4))
  head_in = [c for c in calls if c["path"] == ("classifier",)][0]["args"][0]
  dense = [c for c in calls if c["path"] == ("classifier", "dense")]
  out_proj = [c for c in calls if c["path"] == ("classifier", "out_proj")]
  drops = _active_dropouts(calls)
  assert len(drops) == 1 and len(dense) == 1 and len(out_proj) == 1
  # dense reads the un-dropped <s> vector; the one mask is applied to tanh(dense(.)) ...
  np.testing.assert_array_equal(dense[0]["args"][0], head_in[:, 0, :])
  np.testing.assert_allclose(drops[0]["args"][0], jnp.tanh(dense[0]["out"]), rtol=0, atol=0)
  dropped = np.asarray(drops[0]["out"]) == 0
  assert 0.2 < dropped.mean() < 0.8  # p = 0.5 really draws a mask
  # ... and the logits are out_proj of that dropped vector.
  np.testing.assert_array_equal(out_proj[0]["args"][0], drops[0]["out"])
  np.testing.assert_array_equal(logits, np.asarray(out_proj[0]["out"], np.float32))


def test_transformers_roberta_head_drops_twice_by_default(roberta_heads):
  heads, batch = roberta_heads
  model = heads["transformers"]
  assert model.head == "transformers"
  _, calls = _head_calls(model, model.params, batch, jax.random.PRNGKey(4))
  head_in = [c for c in calls if c["path"] == ("classifier",)][0]["args"][0]
  drops = _active_dropouts(calls)
  assert len(drops) == 2
  np.testing.assert_array_equal(drops[0]["args"][0], head_in[:, 0, :])  # the <s> vector


def test_heads_agree_without_dropout(roberta_heads):
  heads, batch = roberta_heads
  params = heads["reference"].params
  ref = heads["reference"].logits(params, batch, train=False)
  hf = heads["transformers"].logits(params, batch, train=False)
  np.testing.assert_allclose(ref, hf, rtol=1e-6, atol=1e-6)
  # in training they differ: the default head drops the <s> vector as well
  key = jax.random.PRNGKey(5)
  assert not np.allclose(heads["reference"].logits(params, batch, train=True, dropout_key=key),
                         heads["transformers"].logits(params, batch, train=True, dropout_key=key))


def test_reference_roberta_dense_init_is_pytorch_linear_default(roberta_heads):
  """Weight and bias of the head's dense ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)), per seed;
  out_proj stays N(0, 0.02) with a zero bias (the reference's manually_init_weights)."""
  model = roberta_heads[0]["reference"]
  draws = 60
  heads = [models.init_head(model.params, jax.random.PRNGKey(s), 0.02, head="reference")
           ["classifier"] for s in range(draws)]
  fan_in = heads[0]["dense"]["kernel"].shape[0]
  bound = 1.0 / np.sqrt(fan_in)
  for name in ("kernel", "bias"):
    x = np.concatenate([np.ravel(h["dense"][name]) for h in heads]).astype(np.float64)
    n = x.size
    assert np.max(np.abs(x)) <= bound and np.max(np.abs(x)) > 0.98 * bound
    # U(-b, b): mean 0, var b^2/3; Var(x^2) = b^4/5 - b^4/9 = 4 b^4 / 45
    assert abs(x.mean()) <= 5 * np.sqrt(bound ** 2 / 3 / n)
    assert abs(np.mean(x ** 2) - bound ** 2 / 3) <= 5 * np.sqrt(4 * bound ** 4 / 45 / n)
  # per seed: different seeds draw different heads, the same seed the same head
  assert not np.allclose(heads[0]["dense"]["kernel"], heads[1]["dense"]["kernel"])
  again = models.init_head(model.params, jax.random.PRNGKey(0), 0.02, head="reference")
  np.testing.assert_array_equal(again["classifier"]["dense"]["kernel"], heads[0]["dense"]["kernel"])
  # out_proj: the same draw as in the default mode
  default = models.init_head(model.params, jax.random.PRNGKey(0), 0.02)["classifier"]
  np.testing.assert_array_equal(heads[0]["out_proj"]["kernel"], default["out_proj"]["kernel"])
  assert not np.any(heads[0]["out_proj"]["bias"])
  w = np.concatenate([np.ravel(h["out_proj"]["kernel"]) for h in heads])
  assert abs(w.std() - 0.02) < 0.002
  # the default dense is N(0, 0.02): far from the reference's variance b^2/3
  assert abs(np.var(default["dense"]["kernel"]) - 0.02 ** 2) < 1e-4


@pytest.mark.parametrize("arch", ["bert", "albert"])
def test_reference_head_leaves_bert_and_albert_alone(arch):
  ref, batch = _tiny(arch, "reference", dropout=0.3)
  hf, _ = _tiny(arch, "transformers", dropout=0.3)
  key = jax.random.PRNGKey(7)
  p_ref = models.init_head(ref.params, key, 0.02, head="reference")
  p_hf = models.init_head(hf.params, key, 0.02)
  for a, b in zip(jax.tree_util.tree_leaves(p_ref), jax.tree_util.tree_leaves(p_hf)):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(ref.logits(p_ref, batch, train=True, dropout_key=key),
                                hf.logits(p_hf, batch, train=True, dropout_key=key))


def test_unknown_head_is_a_config_error():
  cfg = config_lib.task_config("rte", "model=tiny-roberta")
  cfg.model.head = "mine"
  with pytest.raises(ConfigError, match="model.head"):
    models.load(cfg.model, 2, vocab.train_wordpiece(TEXTS, 200))


# ------------------------------------------------------------ b) RoBERTa's tokenization


@pytest.fixture(scope="module")
def bpe_folder(tmp_path_factory, glue_dir):
  """A small byte-level BPE (RoBERTa's kind) trained on RTE text, saved as a RoBERTa tokenizer
  folder: roberta-base's own files are not downloadable here, and the prefix-space logic does
  not depend on the merges."""
  from tokenizers import ByteLevelBPETokenizer
  from transformers import RobertaTokenizerFast
  rte = dataset.load_split(tasks.get_task("rte"), "train", "tsv", glue_dir)
  bpe = ByteLevelBPETokenizer()
  bpe.train_from_iterator(rte.text_a[:300] + rte.text_b[:300], vocab_size=600, min_frequency=2,
                          special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
                          show_progress=False)
  folder = str(tmp_path_factory.mktemp("bpe"))
  bpe.save_model(folder)
  RobertaTokenizerFast(vocab_file=os.path.join(folder, "vocab.json"),
                       merges_file=os.path.join(folder, "merges.txt")).save_pretrained(folder)
  return folder


def _reference_pair_ids(folder, text_a, text_b, max_len):
  """transformers 2.5.1's encode_plus(a, b, add_special_tokens=True, max_length) as the
  reference called it (glue.py, line 96), written out: each segment gets " " in front unless it
  starts with whitespace (tokenization_roberta.py, lines 234-241) and loses trailing whitespace
  (tokenization_utils.py, line 774), is byte-level BPE'd by the slow GPT-2 code (the same
  _tokenize as 2.5.1's tokenization_gpt2.py, lines 221-229), truncated longest-first
  (tokenization_utils.py, lines 1498-1505), framed <s> A </s></s> B </s> and padded."""
  from transformers import RobertaTokenizer
  slow = RobertaTokenizer(os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt"))

  def ids(text):
    text = text if text[0].isspace() else " " + text
    return slow.convert_tokens_to_ids(slow._tokenize(text.rstrip()))  # pylint: disable=protected-access

  a, b = ids(text_a), ids(text_b)
  for _ in range(len(a) + len(b) + 4 - max_len):
    if len(a) > len(b):
      a = a[:-1]
    else:
      b = b[:-1]
  out = [slow.cls_token_id] + a + [slow.sep_token_id] * 2 + b + [slow.sep_token_id]
  return out + [slow.pad_token_id] * (max_len - len(out))


def _bpe_tokenizer(folder, prefix_space):
  cfg = config_lib.task_config("rte", "model=tiny-roberta")
  cfg.model.tokenizer = folder
  cfg.model.roberta_prefix_space = prefix_space
  return vocab.load(cfg.model, None)


def test_roberta_token_ids_of_real_rte_pairs_match_the_reference(bpe_folder, glue_dir):
  rte = dataset.load_split(tasks.get_task("rte"), "train", "tsv", glue_dir)
  idx = list(range(40))
  split = dataset.Split([rte.text_a[i] for i in idx], [rte.text_b[i] for i in idx], rte.labels[idx])
  max_len = 128
  arrays = dataset.tokenize(split, _bpe_tokenizer(bpe_folder, True), max_len)
  expected = np.asarray([_reference_pair_ids(bpe_folder, a, b, max_len)
                         for a, b in zip(split.text_a, split.text_b)])
  assert (expected[:, -1] != 1).any(), "some pairs should be truncated at 128 tokens"
  np.testing.assert_array_equal(arrays["input_ids"], expected)
  # without the switch the first word of each segment is tokenized without its space
  plain = dataset.tokenize(split, _bpe_tokenizer(bpe_folder, False), max_len)
  assert not np.array_equal(plain["input_ids"], expected)


def test_prefix_space_handles_leading_and_trailing_whitespace(bpe_folder):
  tok = _bpe_tokenizer(bpe_folder, True)
  for a, b in [("x  ", "y\t"), (" starts with a space", "ends with spaces   ")]:
    got = tok(a, b, max_length=32, padding="max_length", truncation=True)["input_ids"]
    assert got == _reference_pair_ids(bpe_folder, a, b, 32), (a, b)


def test_prefix_space_leaves_wordpiece_alone_and_changes_the_cache_key(bpe_folder, tmp_path):
  word = vocab.train_wordpiece(TEXTS, 200)
  folder = str(tmp_path / "wordpiece")
  word.save_pretrained(folder)
  cfg = config_lib.task_config("rte", "model=tiny-bert")
  cfg.model.tokenizer = folder
  plain = vocab.load(cfg.model, None)
  cfg.model.roberta_prefix_space = True
  switched = vocab.load(cfg.model, None)
  assert plain(TEXTS[0], TEXTS[1])["input_ids"] == switched(TEXTS[0], TEXTS[1])["input_ids"]
  # a byte-level tokenizer with and without the switch: two cache entries, not one
  split = dataset.Split(TEXTS[:2], TEXTS[2:], np.zeros(2, np.int32))
  cache = tmp_path / "cache"
  for prefix_space in (False, True):
    dataset.tokenize_cached(split, _bpe_tokenizer(bpe_folder, prefix_space), 16, str(cache), "rte")
  assert len(list(cache.glob("*.npz"))) == 2


# -------------------------------------------------------------------- c) Mixout's scope


def test_mixout_mask_reaches_the_head_only_when_asked():
  model, _ = _tiny("bert")
  seed_key = jax.random.PRNGKey(11)
  params = train_lib.initial_params(model, seed_key)
  anchor = stabilisers.anchor_of(model.params)
  # the head's target: the seed's initial head, drawn again from the anchor's head shapes
  head0 = models.init_head(anchor, jax.random.fold_in(seed_key, train_lib.HEAD),
                           model.config.initializer_range, head=model.head)["classifier"]
  for a, b in zip(jax.tree_util.tree_leaves(head0),
                  jax.tree_util.tree_leaves(params["classifier"])):
    np.testing.assert_array_equal(a, b)
  # a head that has moved away from its initial value
  trained = dict(params, classifier=jax.tree_util.tree_map(lambda x: x + 1.0,
                                                           params["classifier"]))
  p, key = 0.5, jax.random.PRNGKey(12)
  off = stabilisers.mixout(trained, anchor, key, p)
  on = stabilisers.mixout(trained, anchor, key, p, head_anchor=head0)
  # off: the head is untouched; on: each input row of the kernel is either swapped for the
  # initial head's row or rescaled (w - p u) / (1 - p), and both happen
  np.testing.assert_array_equal(off["classifier"]["kernel"], trained["classifier"]["kernel"])
  w, u = np.asarray(trained["classifier"]["kernel"]), np.asarray(head0["kernel"])
  mixed = np.asarray(on["classifier"]["kernel"])
  swapped = np.all(np.isclose(mixed, u, atol=1e-6), axis=1)
  kept = np.all(np.isclose(mixed, (w - p * u) / (1 - p), atol=1e-6), axis=1)
  assert np.all(swapped | kept) and swapped.any() and kept.any()
  np.testing.assert_array_equal(on["classifier"]["bias"], trained["classifier"]["bias"])
  # the backbone's masks do not depend on the head switch
  for a, b in zip(jax.tree_util.tree_leaves({k: v for k, v in on.items() if k != "classifier"}),
                  jax.tree_util.tree_leaves({k: v for k, v in off.items() if k != "classifier"})):
    np.testing.assert_array_equal(a, b)
  # the mask reaches the head's gradient: swapped rows get none
  def loss(params):
    mixed = stabilisers.mixout(params, anchor, key, p, head_anchor=head0)
    return jnp.sum(mixed["classifier"]["kernel"] ** 2)
  g = np.asarray(jax.grad(loss)(trained)["classifier"]["kernel"])
  assert not g[swapped].any() and np.all(np.abs(g[kept]) > 0)


# -------------------------------------------------- d) evaluation points and "full steps"


def _simulate_reference_evals(spe, epochs, every):
  """run_finetuning.py's control flow (lines 250-261, 292-296, 513-514, 578, 601-605) with
  one update per batch: the steps at which it calls evaluate()."""
  evals, global_step = [0], 0
  steps_per_epoch = spe * epochs / epochs  # t_total / num_train_epochs (lines 121-122)
  for _ in range(epochs):
    for step in range(spe):
      if every > 0 and global_step % every == 0 and global_step > 0 and step < steps_per_epoch - 1:
        evals.append(global_step)
      global_step += 1
    evals.append(global_step)
  return sorted(set(evals))


def test_two_epoch_mrpc_evaluation_steps_are_the_references():
  assert reference.reference_eval_steps("mrpc", 230, 460) == [
      0, 76, 152, 228, 230, 304, 380, 456, 460]


@pytest.mark.parametrize("task", ["rte", "mrpc", "cola"])
@pytest.mark.parametrize("epochs", [3, 20])
def test_evaluation_steps_follow_the_reference_loop(task, epochs):
  facts = reference.TASKS[task]
  spe = facts.steps_per_epoch
  got = reference.reference_eval_steps(task, spe, spe * epochs)
  assert got == _simulate_reference_evals(spe, epochs, facts.eval_every)


def test_evaluation_steps_details():
  # CoLA: 534 = 3 x 178 is the last batch of epoch 0, which the reference skips
  cola = reference.reference_eval_steps("cola", 535, 535 * 20)
  assert 534 not in cola and {178, 356, 535, 712} <= set(cola)
  # 20 epochs: the 61 points of RTE, 81 of MRPC
  assert len(reference.reference_eval_steps("rte", 156, 156 * 20)) == 61
  assert len(reference.reference_eval_steps("mrpc", 230, 230 * 20)) == 81
  # the configs' N is "3x per epoch" rounded down; other epoch lengths follow the same rule
  for facts in reference.TASKS.values():
    assert facts.eval_every == facts.steps_per_epoch // 3
  assert reference.reference_eval_every("rte", 63) == 21  # the 1k-example subsets' value
  for spe, epochs in [(63, 3), (10, 4), (7, 2)]:
    assert (reference.reference_eval_steps("rte", spe, spe * epochs)
            == _simulate_reference_evals(spe, epochs, max(spe // 3, 1)))
  # a total that is not a whole number of epochs ends with the final step
  assert reference.reference_eval_steps("rte", 10, 25, every=4)[-3:] == [20, 24, 25]


def test_full_steps_are_the_reference_configs_counts(glue_dir):
  assert reference.reference_full_steps("cola", 3, 535) == 1602
  assert reference.reference_full_steps("rte", 3, 156) == 468
  assert reference.reference_full_steps("mrpc", 3, 230) == 690
  # other data or batch sizes, other tasks: jaxstab's own count
  assert reference.reference_full_steps("cola", 3, 268) == 804
  assert reference.reference_full_steps("sst2", 3, 10) == 30
  # the table's epoch lengths are those of the real GLUE files at batch 16
  for name, facts in reference.TASKS.items():
    n = len(dataset.load_split(tasks.get_task(name), "train", "tsv", glue_dir))
    assert n == facts.train_examples
    assert dataset.num_batches(n, reference.BATCH_SIZE) == facts.steps_per_epoch
