"""Write .ipynb copies of the chapters for Colab (and anyone who prefers .ipynb files).

Colab opens only .ipynb files from GitHub, while the chapters are MyST Markdown notebooks. This
writes ``notebooks/chapters/NN_name.ipynb`` for every ``chapters/NN_name.md``:

* with the outputs the book build computed, when ``_build/jupyter_execute/chapters/NN_name.ipynb``
  exists (run after ``make book``), else without outputs (jupytext conversion);
* with a first cell that installs ``bgcn`` (with its widget extra) and ``myst-nb`` (the chapters
  ``glue`` their measured numbers into the text) from the repository when they are not
  importable (Colab).

The repository's address is read from ``repository.url`` / ``repository.branch`` in _config.yml,
the one place it is set.

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


def repository(config: Path = ROOT / "_config.yml") -> tuple[str, str]:
    """(url, branch) of the book's repository, from ``repository:`` in _config.yml."""
    import yaml

    repo = (yaml.safe_load(config.read_text(encoding="utf-8")) or {}).get("repository") or {}
    url = str(repo.get("url") or "").rstrip("/")
    if not url.startswith("https://"):
        raise SystemExit(f"make_notebooks: repository.url in {config} must be an https URL, got {url!r}")
    return url, str(repo.get("branch") or "main")


def setup_source(url: str, branch: str) -> str:
    """The first cell of every notebook: install what a bare Colab kernel lacks."""
    return f'''# Setup for Colab: install the book's library (and myst-nb, whose glue the chapters use)
try:
    import bgcn, myst_nb
except ImportError:
    %pip install -q "bgcn[widgets] @ git+{url}@{branch}" myst-nb
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
    setup = nbformat.v4.new_code_cell(setup_source(*repository()), metadata={"tags": ["colab-setup"]})
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
