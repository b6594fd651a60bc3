"""bgcn.io: the one atomic write (and the shared partial-results helper built on it)."""
from __future__ import annotations

import json
import math
import os
import stat

import numpy as np
import pytest
import torch

from bgcn.experiments.common import Partial, merge_partial
from bgcn.io import atomic_torch_save, atomic_write, atomic_write_bytes, atomic_write_json, atomic_write_text


def test_atomic_writes_round_trip(tmp_path):
    assert atomic_write_bytes(tmp_path / "a" / "b.bin", b"\x00\x01") == tmp_path / "a" / "b.bin"
    assert (tmp_path / "a" / "b.bin").read_bytes() == b"\x00\x01"
    atomic_write_text(tmp_path / "t.md", "héllo\nworld\n")
    assert (tmp_path / "t.md").read_bytes() == "héllo\nworld\n".encode()
    atomic_write_json(tmp_path / "r.json", {"x": float("nan"), "y": np.float32(0.5), 3: (1, 2)})
    assert json.loads((tmp_path / "r.json").read_text()) == {"x": None, "y": 0.5, "3": [1, 2]}
    state = {"w": torch.arange(6, dtype=torch.float64).reshape(2, 3), "epoch": 3}
    atomic_torch_save(tmp_path / "ck.pt", state)
    back = torch.load(tmp_path / "ck.pt", weights_only=True)
    assert back["epoch"] == 3 and torch.equal(back["w"], state["w"])
    assert not list(tmp_path.rglob("*.tmp"))


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    p = tmp_path / "metrics.json"
    atomic_write_text(p, "old")

    def boom(fh):
        fh.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(p, boom)
    assert p.read_text() == "old" and sorted(os.listdir(tmp_path)) == ["metrics.json"]
    with pytest.raises(TypeError, match="not JSON serializable"):
        atomic_write_json(p, {"a": object()})  # not JSON: refused before the swap
    assert p.read_text() == "old"
    with pytest.raises(ValueError, match="mode="):
        atomic_write(p, lambda fh: None, mode="a")
    with pytest.raises(TypeError, match="atomic_write_bytes"):
        atomic_write_text(p, b"bytes")


def test_permissions_follow_the_umask(tmp_path):
    p = atomic_write_text(tmp_path / "x.txt", "x")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask


def test_partial_extra_keys_save_and_resume(tmp_path):
    path = tmp_path / "e.partial.json"
    p = Partial(path, {"seeds": 2, "k": 10}, resume=True)  # no file yet: a fresh start
    assert not p.resumed and p.runs == [] and p.extra == {}
    p.save([{"method": "a", "seed": 0, "test_acc": math.nan, "t": (1, 2)}], pretrain={"loss": [1.0], "file": "w.pt"})
    q = Partial(path, {"seeds": 2, "k": 10}, resume=True)
    assert q.resumed and q.extra == {"pretrain": {"loss": [1.0], "file": "w.pt"}}
    assert q.runs == [{"method": "a", "seed": 0, "test_acc": None, "t": [1, 2]}]
    assert q.done(method="a", seed=0) is q.runs[0] and q.done(method="a", seed=1) is None
    q.add({"method": "a", "seed": 1, "test_acc": 0.5})
    assert json.loads(path.read_text())["pretrain"]["file"] == "w.pt"  # extra kept by add
    with pytest.raises(ValueError, match=r"settings differ \(k, seeds\)"):
        Partial(path, {"seeds": 3, "k": 5}, resume=True)


def test_merge_partial(tmp_path):
    settings = {"n": 10}
    t = Partial(tmp_path / "t.json", settings, resume=False)
    t.add({"row": "a", "seed": 0, "labels_per_class": 1, "test_acc": 0.1})
    s = Partial(tmp_path / "s.json", settings, resume=False)
    s.add({"row": "a", "seed": 0, "labels_per_class": 1, "test_acc": 0.9})  # already in t: not added
    s.add({"row": "a", "seed": 1, "labels_per_class": 1, "test_acc": 0.2})
    assert merge_partial(tmp_path / "t.json", [tmp_path / "s.json"]) == 2
    runs = json.loads((tmp_path / "t.json").read_text())["runs"]
    assert [(r["seed"], r["test_acc"]) for r in runs] == [(0, 0.1), (1, 0.2)]
    Partial(tmp_path / "o.json", {"n": 11}, resume=False).add({"row": "a", "seed": 2, "labels_per_class": 1})
    with pytest.raises(ValueError, match=r"settings differ .*\(n\)"):
        merge_partial(tmp_path / "t.json", [tmp_path / "o.json"])
