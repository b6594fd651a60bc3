"""The README's Python example runs as written and does what its comments say."""
import re
from pathlib import Path

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
