"""docs/configuration.md is generated from base_config()'s comments (scripts/config_doc.py) and
must list exactly the keys of the base config."""
import os
import sys

import pytest

from jaxstab.config import config_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "scripts"))
import config_doc  # noqa: E402  pylint: disable=wrong-import-position


def test_the_page_is_current_and_lists_every_key_once():
  assert config_doc.main(["--check"]) == 0, "run python scripts/config_doc.py"
  with open(config_doc.DOC, encoding="utf-8") as f:
    listed = config_doc.listed(f.read())
  assert len(listed) == len(set(listed))
  assert set(listed) == set(config_doc.leaves(config_lib.base_config()))
  assert "optim.lr" in listed and "model.tiny.num_layers" in listed and "settings" in listed


def _page_without(tmp_path, monkeypatch, drop=None, add=None):
  text = config_doc.render()
  if drop:
    text = "\n".join(l for l in text.splitlines() if not l.startswith(f"| `{drop}` |")) + "\n"
  if add:
    text += f"| `{add}` | `0` | gone |\n"
  page = tmp_path / "configuration.md"
  page.write_text(text)
  monkeypatch.setattr(config_doc, "DOC", str(page))


def test_a_missing_key_fails_the_check(tmp_path, monkeypatch, capsys):
  _page_without(tmp_path, monkeypatch, drop="train.batch_size")
  assert config_doc.main(["--check"]) == 1
  assert "missing ['train.batch_size']" in capsys.readouterr().out


def test_a_key_that_no_longer_exists_fails_the_check(tmp_path, monkeypatch, capsys):
  _page_without(tmp_path, monkeypatch, add="train.gone")
  assert config_doc.main(["--check"]) == 1
  assert "no longer keys ['train.gone']" in capsys.readouterr().out


def test_a_key_without_a_comment_cannot_be_documented(monkeypatch):
  real = config_lib.base_config

  def with_a_new_key():
    c = real()
    c.train.undocumented = 3
    return c
  monkeypatch.setattr(config_lib, "base_config", with_a_new_key)
  with pytest.raises(SystemExit, match="train.undocumented"):
    config_doc.render()


def test_meanings_join_continuation_lines_and_group_notes():
  meaning, notes = config_doc.meanings()
  assert meaning["data_seeds"].endswith("(jaxstab/config/runs.py); empty = off")  # two lines
  assert notes["data.path"].startswith("Your own files")
