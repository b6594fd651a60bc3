"""Write .ipynb copies of the chapters for Colab (and anyone who prefers .ipynb files).

Colab opens only .ipynb files from GitHub, while the chapters are MyST Markdown notebooks. This
writes ``notebooks/chapters/NN_name.ipynb`` for every ``chapters/NN_name.md``:

* with the outputs the book build computed, when ``_build/jupyter_execute/chapters/NN_name.ipynb``
  exists (run after ``make book``), else without outputs (jupytext conversion);
* with a first cell that installs ``bgcn`` from the repository when it is not importable (Colab).

The GitHub workflow publishes ``notebooks/`` as the root of the ``colab`` branch, which the
Colab launch button points at (``scripts/bookext.py``). ``notebooks/`` is git-ignored on main.

    .venv/bin/python scripts/make_notebooks.py [--out notebooks] [--no-outputs]
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REPO_URL = "https://github.com/bgcn-book/bgcn"   # keep in step with repository.url in _config.yml
SETUP_SOURCE = f'''# Setup for Colab: install the book's library when it is not installed yet
try:
    import bgcn
except ImportError:
    %pip install -q "bgcn @ git+{REPO_URL}@main"
    import bgcn'''


def convert(md: Path, out_dir: Path, with_outputs: bool = True) -> Path:
    import jupytext
    import nbformat

    executed = ROOT / "_build" / "jupyter_execute" / "chapters" / f"{md.stem}.ipynb"
    if with_outputs and executed.is_file():
        nb = nbformat.read(executed, as_version=4)
    else:
        nb = jupytext.read(md)
    nb.metadata.pop("jupytext", None)
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    setup = nbformat.v4.new_code_cell(SETUP_SOURCE, metadata={"tags": ["colab-setup"]})
    nb.cells = [c for c in nb.cells if "colab-setup" not in c.get("metadata", {}).get("tags", [])]
    nb.cells.insert(0, setup)
    target = out_dir / "chapters" / f"{md.stem}.ipynb"
    target.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, target)
    return target


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / "notebooks")
    p.add_argument("--no-outputs", action="store_true", help="never copy outputs from the book build")
    args = p.parse_args(argv)
    chapters = sorted(c for c in (ROOT / "chapters").glob("*.md") if re.match(r"\d\d_", c.name))
    for md in chapters:
        print(f"make_notebooks: {convert(md, args.out, not args.no_outputs)}")
    if not chapters:
        print("make_notebooks: no chapters/NN_*.md found", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
