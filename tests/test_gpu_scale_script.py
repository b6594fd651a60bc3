"""benchmarks/gpu_scale.py, the prepared GPU run: its --dry-run on the CPU writes a complete JSON
(every step measured or named as skipped) with finite gradients. No timing is asserted."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]  # runs the whole script (dry run)


def test_dry_run_writes_every_step(tmp_path):
    spec = importlib.util.spec_from_file_location("gpu_scale", ROOT / "benchmarks" / "gpu_scale.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "g.json"
    assert mod.main(["--dry-run", "--out", str(out)]) == 0
    rec = json.loads(out.read_text())
    assert rec["meta"]["dry_run"] and not list(tmp_path.glob("*.tmp"))
    done = {(r["method"], r["n"]) for r in rec["graph"]} | {(s.get("method"), s.get("n")) for s in rec["skipped"]}
    assert done == {(m, n) for m in ("masked_softmax", "softmax") for n in (2000, 4000)}
    assert all(r["grad_finite"] and r["total_s"] >= r["forward_s"] for r in rec["graph"])
    assert rec["epoch"]["n"] == 3000 and 0.0 <= rec["epoch"]["test_acc"] <= 1.0
