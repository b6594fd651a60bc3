"""The README's Python example runs as written and does what its comments say."""
import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_reaches_the_backbone():
    text = README.read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "README.md has no ```python example"
    ns: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), ns)  # noqa: S102 - our own README
    backbone, gcn = ns["backbone"], ns["gcn"]
    assert ns["log_probs"].shape == (1797, 10)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in backbone.parameters() if p.requires_grad)
    assert any(float(p.grad.abs().sum()) > 0 for p in backbone.parameters())
    assert all(p.grad is not None for p in gcn.parameters())


def test_readme_names_the_two_commands():
    text = README.read_text()
    assert "make book" in text and "make test" in text


def _commands(prefix: str) -> list[list[str]]:
    import shlex

    text = README.read_text().replace("\\\n", " ")
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith(prefix):
                out.append(shlex.split(line))
    return out


def test_every_readme_train_command_parses():
    from bgcn.cli import build_parser

    cmds = [c for c in _commands("python -m bgcn train") if "--help" not in c]
    cmds += [c[c.index("bgcn") + 1:] for c in _commands("torchrun")]
    assert len(cmds) >= 3
    for cmd in cmds:
        argv = cmd[3:] if cmd[:3] == ["python", "-m", "bgcn"] else cmd
        args = build_parser().parse_args(argv)
        assert args.command == "train"


@pytest.mark.slow
def test_readme_torchrun_command_runs_with_two_processes(tmp_path):
    """The README's torchrun line, as written (fewer epochs, a temporary --out)."""
    import json
    import os
    import subprocess
    import sys

    (cmd,) = _commands("torchrun")
    cmd = list(cmd)
    cmd[cmd.index("--epochs") + 1] = "2"
    cmd[cmd.index("--out") + 1] = str(tmp_path / "two")
    env = dict(os.environ, OMP_NUM_THREADS="1", TQDM_DISABLE="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    full = [sys.executable, "-m", "torch.distributed.run", *cmd[1:], "--threads", "1"]
    proc = subprocess.run(full, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert m["world_size"] == 2 and len(m["history"]["loss"]) == 2
