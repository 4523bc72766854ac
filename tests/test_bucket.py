"""A study whose workdir is a bucket (gs://) writes everything there and nothing on the local
disk. The bucket is a stand-in: an fsspec filesystem registered for gs:// that keeps objects
under a temporary folder and, like GCS, has no append. Orbax's own gs:// checkpoints go through
tensorstore's GCS driver, which needs the network, so checkpoints are off here."""
import json
import os
import socket
import time

import fsspec
import pytest
from etils.epath import backend as epath_backend
from fsspec.implementations.local import LocalFileSystem

from jaxstab.infra import checkpoint, fs, lock
from jaxstab.infra.errors import ConfigError
from jaxstab.report import compare
from jaxstab.study import studies
from tests.helpers import demo_config


class _FakeBucket(LocalFileSystem):
  protocol = ("gs", "gcs")
  root = ""

  def __init__(self, *args, finalize_on_close=None, **kwargs):  # gcsfs's keyword
    del finalize_on_close
    super().__init__(*args, auto_mkdir=True, **kwargs)

  @classmethod
  def _strip_protocol(cls, path):
    path = str(path)
    for prefix in ("gs://", "gcs://"):
      if path.startswith(prefix):
        return os.path.join(cls.root, path[len(prefix):].rstrip("/"))
    return super()._strip_protocol(path)

  def _open(self, path, mode="rb", **kwargs):
    if "a" in mode:
      raise NotImplementedError("a bucket object cannot be appended to")
    return super()._open(path, mode=mode, **kwargs)


@pytest.fixture
def bucket(tmp_path, monkeypatch):
  root = tmp_path / "bucket_store"
  root.mkdir()
  monkeypatch.setattr(_FakeBucket, "root", str(root))
  fsspec.register_implementation("gs", _FakeBucket, clobber=True)
  fsspec.register_implementation("gcs", _FakeBucket, clobber=True)
  epath_backend.fsspec_backend._get_filesystem.cache_clear()  # pylint: disable=protected-access
  _FakeBucket.clear_instance_cache()
  local = tmp_path / "cwd"
  local.mkdir()
  monkeypatch.chdir(local)
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  yield root
  epath_backend.fsspec_backend._get_filesystem.cache_clear()  # pylint: disable=protected-access


def test_fs_round_trip_in_a_bucket(bucket):
  fs.write_text("gs://b/x/a.json", '{"a": 1}')
  assert fs.read_json("gs://b/x/a.json") == {"a": 1}
  assert fs.isfile("gs://b/x/a.json") and not fs.isfile("gs://b/x")
  assert fs.isdir("gs://b/x")
  fs.write_text("gs://b/x/sub/b.json", "{}")
  assert fs.listdir("gs://b/x") == ["a.json", "sub"]
  fs.save_npz("gs://b/x/p.npz", v=[1.0, 2.0])
  assert fs.load_npz("gs://b/x/p.npz")["v"].tolist() == [1.0, 2.0]
  fs.remove("gs://b/x/a.json")
  assert not fs.exists("gs://b/x/a.json")
  # An unreadable checkpoint step is set aside by name (a bucket has no rename: copy, delete).
  assert fs.move_aside("gs://b/x/sub", "unreadable") == "gs://b/x/sub.unreadable"
  fs.write_text("gs://b/x/sub/b.json", "[]")
  assert fs.move_aside("gs://b/x/sub", "unreadable") == "gs://b/x/sub.unreadable-2"
  assert fs.listdir("gs://b/x") == ["p.npz", "sub.unreadable", "sub.unreadable-2"]
  assert [fs.read_text(f"gs://b/x/sub.unreadable{n}/b.json") for n in ("", "-2")] == ["{}", "[]"]
  fs.rmtree("gs://b/x")
  assert not (bucket / "b" / "x").exists()
  # Paths into a bucket stay bucket paths (os.path.abspath would make "<cwd>/gs:/b/w/...").
  assert checkpoint.params_dir("gs://b/w", 3) == "gs://b/w/params/seed_3"
  ck = checkpoint.GroupCheckpointer("gs://b/w", "g", every_steps=0, keep=1)
  assert ck.directory == "gs://b/w/checkpoints/g" and not ck.enabled


@pytest.mark.parametrize("tool", ["report", "loss_surface", "forgetting"])
def test_analyses_ask_for_a_local_copy_of_a_bucket(tool, capsys):
  from jaxstab.analysis import forgetting, loss_surface  # pylint: disable=import-outside-toplevel
  from jaxstab.report import __main__ as report  # pylint: disable=import-outside-toplevel
  main = {"report": report.main, "loss_surface": loss_surface.main, "forgetting": forgetting.main}
  assert main[tool](["--workdir=gs://b/study"]) == 2
  assert "gsutil -m cp -r gs://b/study" in capsys.readouterr().err


def test_study_in_a_bucket_writes_there_resumes_and_refuses_a_changed_config(bucket):
  workdir = "gs://runs/study"
  cfg = demo_config("1-2", checkpoint__every_steps=0)
  with cfg.unlocked():
    cfg.settings = {"demo_devlin": "task=demo,setting=devlin",
                    "demo_ours": "task=demo,setting=ours,epochs=1"}
  first = studies.run(cfg, workdir)
  store = bucket / "runs" / "study"
  for name in ("summary.json", "summary.csv", "table.md"):
    assert (store / name).is_file(), name
  for setting in ("demo_devlin", "demo_ours"):
    d = store / setting
    for name in ("config.json", "summary.json", "probe.npz", "metrics.jsonl",
                 "runs/seed_1.json", "runs/seed_2.json", "runs/probe_seed_2.npz"):
      assert (d / name).is_file(), f"{setting}/{name}"
    assert list((d / "tensorboard" / "seed_1").glob("events.out.tfevents*")), setting
    assert not (d / ".lock").exists()
    lines = (d / "metrics.jsonl").read_text().splitlines()
    assert {json.loads(x)["seed"] for x in lines} == {1, 2}
  # Nothing landed on the local disk under a mangled name ("gs:/runs/...").
  assert not any("gs:" in str(p) for p in (bucket.parent / "cwd").rglob("*"))
  assert not list((bucket.parent / "cwd").iterdir())

  summary = json.loads((store / "summary.json").read_text())
  assert [s["name"] for s in summary["settings"]] == ["demo_devlin", "demo_ours"]
  assert summary["settings"][0]["final_spread"] == first["settings"][0]["final_spread"]

  # A rerun finds both seeds finished in the bucket and trains nothing: run records unchanged.
  before = (store / "demo_devlin" / "runs" / "seed_1.json").stat().st_mtime_ns
  again = studies.run(cfg, workdir)
  assert (store / "demo_devlin" / "runs" / "seed_1.json").stat().st_mtime_ns == before
  assert again["settings"][1]["final_spread"] == first["settings"][1]["final_spread"]

  # The cross-workdir table reads the bucket too, also while the study summary is absent.
  assert compare.markdown(compare.gather([workdir])).startswith(summary["table"])
  (store / "summary.json").unlink()
  assert [s.name for s in compare.gather([workdir])] == ["demo_devlin", "demo_ours"]

  changed = cfg.copy_and_resolve_references()
  changed.optim.lr = 5e-4
  with pytest.raises(ConfigError, match="optim.lr"):
    studies.run(changed, workdir)


def _lease(host, pid, age_s):
  return json.dumps({"host": host, "pid": pid, "time": time.time() - age_s})


def test_bucket_lease_refuses_a_live_owner_and_takes_over_a_stale_one(bucket):
  workdir = "gs://runs/leased"
  path = bucket / "runs" / "leased" / ".lock"
  path.parent.mkdir(parents=True)
  path.write_text(_lease("other-vm", 123, age_s=5))  # renewed 5 s ago on another machine
  with pytest.raises(ConfigError, match="other-vm"):
    with lock.workdir_lock(workdir):
      pass
  assert json.loads(path.read_text())["host"] == "other-vm"  # the owner's lease is untouched

  path.write_text(_lease("other-vm", 123, age_s=lock.LEASE_S + 10))  # never renewed: stale
  with lock.workdir_lock(workdir):
    held = json.loads(path.read_text())
    assert (held["host"], held["pid"]) == (socket.gethostname(), os.getpid())
  assert not path.exists()

  path.write_text(_lease(socket.gethostname(), 2**22 + 17, age_s=1))  # this host, pid gone
  with lock.workdir_lock(workdir):
    assert json.loads(path.read_text())["pid"] == os.getpid()


def test_bucket_lease_is_renewed_while_held(bucket, monkeypatch):
  monkeypatch.setattr(lock, "RENEW_S", 0.2)
  path = bucket / "runs" / "renewed" / ".lock"
  with lock.workdir_lock("gs://runs/renewed"):
    first = json.loads(path.read_text())["time"]
    time.sleep(1.0)
    assert json.loads(path.read_text())["time"] > first
