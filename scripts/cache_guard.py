"""Keep the book's execution cache honest: outputs must never outlive the library that made them.

jupyter-cache keys a notebook on its code cells and kernelspec only, so an edit to ``bgcn/*.py``
would leave stale outputs in ``_build/.jupyter_cache``, and Sphinx would not even re-read an
unchanged chapter. This module hashes the library sources (``bgcn/**/*.py``, ``pyproject.toml``,
``requirements.txt``) and, when the hash differs from the one stamped in the cache folder, deletes
the execution cache and Sphinx's doctrees, so the next build executes and re-reads every page.

Used two ways:

* from the book itself: ``scripts/bookext.py`` (a local Sphinx extension named in ``_config.yml``)
  calls :func:`guard` when the build starts, so ``jupyter-book build .`` is safe on its own;
* from the command line, e.g. in ``make book`` before the build:
  ``python scripts/cache_guard.py [--root .] [--check]``.
"""
from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
from pathlib import Path

STAMP_NAME = "bgcn_sources.sha256"
SOURCES = ("bgcn/**/*.py", "pyproject.toml", "requirements.txt")


def sources_hash(root: Path) -> str:
    """sha256 over the relative paths and contents of the library sources under ``root``."""
    h = hashlib.sha256()
    files: set[Path] = set()
    for pattern in SOURCES:
        files.update(p for p in root.glob(pattern) if p.is_file() and "__pycache__" not in p.parts)
    for path in sorted(files):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(b"\0")
        h.update(path.read_bytes())
        h.update(b"\0")
    return h.hexdigest()


def stamp_path(cache_dir: Path) -> Path:
    return cache_dir / STAMP_NAME


def is_stale(root: Path, cache_dir: Path) -> bool:
    stamp = stamp_path(cache_dir)
    return not stamp.is_file() or stamp.read_text().strip() != sources_hash(root)


def write_stamp(root: Path, cache_dir: Path) -> None:
    cache_dir.mkdir(parents=True, exist_ok=True)
    stamp_path(cache_dir).write_text(sources_hash(root) + "\n")


def clear(cache_dir: Path, doctree_dir: Path | None = None) -> list[Path]:
    """Delete the execution cache (and the doctrees, if given); return what was deleted."""
    removed = []
    for d in (cache_dir, doctree_dir):
        if d is not None and d.exists():
            shutil.rmtree(d)
            removed.append(d)
    return removed


def guard(root: Path, cache_dir: Path, doctree_dir: Path | None = None, *, stamp: bool = True) -> bool:
    """Clear the caches when the library changed since the stamp; return True when they were stale."""
    stale = is_stale(root, cache_dir)
    if stale:
        clear(cache_dir, doctree_dir)
        if stamp:
            write_stamp(root, cache_dir)
    return stale


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1],
                   help="book/repository root (default: this script's parent folder)")
    p.add_argument("--check", action="store_true", help="only report; exit 1 when stale")
    args = p.parse_args(argv)
    root = args.root.resolve()
    cache_dir, doctree_dir = root / "_build" / ".jupyter_cache", root / "_build" / ".doctrees"
    if args.check:
        stale = is_stale(root, cache_dir)
        print(f"cache_guard: {'stale' if stale else 'up to date'} ({cache_dir})")
        return int(stale)
    if guard(root, cache_dir, doctree_dir):
        print(f"cache_guard: bgcn sources changed; cleared {cache_dir} and {doctree_dir}")
    else:
        print("cache_guard: execution cache matches the bgcn sources")
    return 0


if __name__ == "__main__":
    sys.exit(main())
