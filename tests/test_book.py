"""The book builds cleanly and every chapter shows what it claims (marker ``book``; slow).

The session fixture ``built_book`` (conftest.py) executes every chapter from a clean cache with
``jupyter-book build . -W -n --keep-going``. The tests then read the HTML in ``_build/html``:

* every file in _toc.yml became a page, and _toc.yml lists every chapter file;
* no page shows a traceback or an error output (cells tagged ``raises-exception`` excepted);
* every chapter page that runs code prints at least one numeric check as a line exactly
  ``CHECK <name>: max error <value> (tol <tol>)``, and every such value is below its tolerance;
* every Plotly figure is in the page as HTML (not as a bare plotly mime bundle, which the book
  cannot show), and a figure with sliders has real steps; the temperature chapter has one.
"""
from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.book

ROOT = Path(__file__).resolve().parents[1]
CHECK_RE = re.compile(r"^CHECK (?P<name>[^:\n]+): max error (?P<value>\S+) \(tol (?P<tol>[^)\s]+)\)\s*$", re.M)
CHAPTER_RE = re.compile(r"^chapters/\d\d_")
ERROR_NAME = re.compile(r"\b[A-Z]\w*(Error|Exception)\b")
TEMPERATURE = "chapters/05_temperature_1_weights"  # the page with the tau slider (Figure 5.1)


def toc_files() -> list[str]:
    import yaml

    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]

    def walk(entries):
        for e in entries or []:
            if "file" in e:
                files.append(e["file"])
            walk(e.get("sections"))
            walk(e.get("chapters"))

    walk(toc.get("parts"))
    walk(toc.get("chapters"))
    return [str(Path(f).with_suffix("")) for f in files]


def chapter_docs() -> list[str]:
    return [d for d in toc_files() if CHAPTER_RE.match(d)]


def shown_cells(text: str) -> list[str]:
    """The code cells of a page's source whose input or output the reader sees (not ``remove-cell``)."""
    cells = re.findall(r"```\{code-cell\}[^\n]*\n(.*?)\n```", text, re.S)
    return [c for c in cells if not re.search(r"^:tags:.*remove-cell", c, re.M)]


def code_chapter_docs() -> list[str]:
    """The chapter pages that show code or its output: a chapter's landing page (title, question,
    list of its section pages) has none, or only a hidden cell that glues a number it quotes, and
    its checks are on its section pages."""
    return [d for d in chapter_docs() if shown_cells((ROOT / f"{d}.md").read_text(encoding="utf-8"))]


def soup(html: Path, doc: str):
    from bs4 import BeautifulSoup

    page = html / f"{doc}.html"
    if not page.exists():
        pytest.fail(f"{doc}: no page {page} (see _build/book-build.log)")
    return BeautifulSoup(page.read_text(encoding="utf-8"), "html.parser")


def output_text(cell) -> str:
    """The text outputs (streams, text/plain, tracebacks) of a cell, one block per output."""
    return "\n".join(pre.get_text() for pre in cell.select(".cell_output pre"))


def plotly_figures(page_html: str) -> list[dict]:
    """Every ``Plotly.newPlot(id, data, layout, config)`` in the page, parsed from its JSON."""
    dec = json.JSONDecoder()
    figs = []
    for m in re.finditer(r"Plotly\.newPlot\(\s*", page_html):
        i = m.end()
        try:
            div_id, i = dec.raw_decode(page_html, i)
            args = []
            for _ in range(3):  # data, layout, config
                i = re.compile(r"\s*,\s*").match(page_html, i).end()
                value, i = dec.raw_decode(page_html, i)
                args.append(value)
        except (ValueError, AttributeError) as exc:
            figs.append({"id": None, "error": f"unparsable Plotly.newPlot call: {exc}"})
            continue
        frames = []
        fm = re.compile(r"\s*\)\s*\.then\(function\(\)\{\s*Plotly\.addFrames\(\s*'[^']*',\s*").match(page_html, i)
        if fm:
            frames, _ = dec.raw_decode(page_html, fm.end())
        figs.append({"id": div_id, "data": args[0], "layout": args[1], "frames": frames})
    return figs


# ---------------------------------------------------------------------------------------------
def test_build_passes_with_W_n(built_book):
    assert built_book.returncode == 0 and not built_book.problems, (
        f"jupyter-book build -W -n exited {built_book.returncode} with {len(built_book.problems)} "
        "warnings/errors:\n" + "\n".join(built_book.problems[:40])
        + "\n--- log tail ---\n" + built_book.log[-4000:])


def test_toc_lists_every_chapter_file():
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_toc.py"), "--check"],
                         capture_output=True, text=True)
    assert out.returncode == 0, ("_toc.yml does not match chapters/NN_*.md; run "
                                 "`python scripts/make_toc.py`\n" + out.stderr)


def test_every_toc_entry_has_a_page(built_book):
    missing = [d for d in toc_files() if not (built_book.html / f"{d}.html").exists()]
    assert not missing, f"pages missing from {built_book.html}: {missing}"


@pytest.mark.parametrize("doc", toc_files())
def test_no_traceback_or_error_output(built_book, doc):
    page = soup(built_book.html, doc)
    problems = []
    for cell in page.select("div.cell"):
        if "tag_raises-exception" in (cell.get("class") or []):
            continue  # a deliberate error, shown on purpose
        text = output_text(cell)
        src = cell.select_one(".cell_input")
        where = (src.get_text()[:80].strip() if src else "?").replace("\n", " ")
        if "Traceback (most recent call last)" in text or cell.select(".output.traceback, .output.error"):
            problems.append(f"traceback after cell `{where}`")
        for err in cell.select(".output.stderr"):
            m = ERROR_NAME.search(err.get_text())
            if m:
                problems.append(f"stderr shows {m.group(0)} after cell `{where}`")
    if "Traceback (most recent call last)" in page.get_text() and not problems:
        if not page.select("div.cell.tag_raises-exception"):
            problems.append("a traceback outside any cell output")
    assert not problems, f"{doc}: " + "; ".join(problems)


def _checks(page) -> list[tuple[str, str, str]]:
    checks = []
    for cell in page.select("div.cell"):
        for m in CHECK_RE.finditer(output_text(cell)):
            checks.append((m.group("name").strip(), m.group("value"), m.group("tol")))
    return checks


@pytest.mark.parametrize("doc", code_chapter_docs())
def test_chapter_checks_are_within_tolerance(built_book, doc):
    checks = _checks(soup(built_book.html, doc))
    assert checks, (f"{doc}: no line `CHECK <name>: max error <value> (tol <tol>)` in any output; "
                    "every chapter prints at least one numeric check")
    bad = []
    for name, value, tol in checks:
        try:
            v, t = float(value), float(tol)
        except ValueError:
            bad.append(f"{name}: unparsable value {value!r} or tol {tol!r}")
            continue
        if not (math.isfinite(v) and math.isfinite(t) and 0 <= v < t):
            bad.append(f"{name}: max error {value} not below tol {tol}")
    assert not bad, f"{doc}: " + "; ".join(bad)


@pytest.mark.parametrize("doc", toc_files())
def test_plotly_figures_are_in_the_page(built_book, doc):
    page = built_book.html / f"{doc}.html"
    if not page.exists():
        pytest.fail(f"{doc}: no page {page} (see _build/book-build.log)")
    page_html = page.read_text(encoding="utf-8")
    figs = plotly_figures(page_html)
    problems = [f["error"] for f in figs if "error" in f]
    for f in figs:
        if "error" in f:
            continue
        if not f["data"] and not f["frames"]:
            problems.append(f"figure {f['id']} has no traces")
        frame_names = {fr.get("name") for fr in f["frames"]}
        for s, slider in enumerate(f["layout"].get("sliders", [])):
            steps = slider.get("steps", [])
            if len(steps) < 2:
                problems.append(f"figure {f['id']} slider {s} has {len(steps)} steps")
            for st in steps:
                if st.get("method", "restyle") == "skip":
                    continue
                if "args" not in st:
                    problems.append(f"figure {f['id']} slider {s}: a step without args")
                elif st.get("method") == "animate":
                    names = st["args"][0] if st["args"] else None
                    for n in names if isinstance(names, list) else [names]:
                        if n is not None and n not in frame_names:
                            problems.append(f"figure {f['id']} slider {s}: frame {n!r} missing")
    # a figure the book cannot show: a plotly mime bundle without text/html in the executed notebook
    nb = built_book.html.parent / "jupyter_execute" / f"{doc}.ipynb"
    if nb.exists():
        cells = json.loads(nb.read_text(encoding="utf-8")).get("cells", [])
        for cell in cells:
            for out in cell.get("outputs", []):
                data = out.get("data", {})
                if "application/vnd.plotly.v1+json" in data and "text/html" not in data:
                    problems.append("a plotly output without text/html (set the notebook_connected renderer)")
    if doc == TEMPERATURE:
        if not any(f.get("layout", {}).get("sliders") for f in figs):
            problems.append("the temperature chapter has no Plotly figure with a slider")
    assert not problems, f"{doc}: " + "; ".join(problems)


# ---------------------------------------------------------------------------------------------
# source checks (no build needed): citations and code-line length
BIB_KEY_RE = re.compile(r"^@\w+\s*\{\s*([^,\s]+)\s*,", re.M)
# MyST roles {cite}`a,b`, {cite:p}`a`, {cite:t}`a`; reST roles :cite:`a` / :cite:p:`a` in docstrings
CITE_RE = re.compile(r"(?:\{cite(?::\w+)?\}|:cite(?::\w+)?:)`([^`]+)`")
CODE_FENCE_RE = re.compile(r"^(`{3,}|~{3,})\s*(\{code-cell\}|python\b|ipython3?\b)")
MAX_CODE_LINE = 88


def bib_keys() -> list[str]:
    return BIB_KEY_RE.findall((ROOT / "references.bib").read_text(encoding="utf-8"))


def citations() -> dict[str, list[str]]:
    """key -> the files citing it: every page of the book and every bgcn docstring."""
    sources = [ROOT / f"{d}.md" for d in toc_files() if (ROOT / f"{d}.md").is_file()]
    sources += sorted((ROOT / "bgcn").rglob("*.py"))
    cited: dict[str, list[str]] = {}
    for path in sources:
        for m in CITE_RE.finditer(path.read_text(encoding="utf-8")):
            for key in m.group(1).split(","):
                cited.setdefault(key.strip(), []).append(path.relative_to(ROOT).as_posix())
    return cited


def test_bibliography_has_no_uncited_or_missing_entries():
    keys = bib_keys()
    duplicates = sorted({k for k in keys if keys.count(k) > 1})
    cited = citations()
    uncited = sorted(set(keys) - set(cited))
    missing = {k: v for k, v in sorted(cited.items()) if k not in keys}
    assert keys, "no entries found in references.bib"
    assert not duplicates, f"references.bib defines these keys twice: {duplicates}"
    assert not uncited, (f"references.bib entries cited nowhere in the book (pages in _toc.yml or "
                         f"bgcn docstrings): {uncited}; cite them or remove them")
    assert not missing, f"cited keys missing from references.bib: {missing}"


def code_lines_too_long(path: Path, limit: int = MAX_CODE_LINE) -> list[tuple[int, int]]:
    """(line number, length) of every code line longer than ``limit`` in a MyST chapter.

    Code is what a reader sees as code: the body of ``{code-cell}`` cells (not their option
    header: ``---``-fenced YAML or ``:key:`` lines) and of fenced ``python`` blocks, such as the
    solutions of the exercises.
    """
    out, fence, in_header, first = [], None, False, False
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if fence is None:
            m = CODE_FENCE_RE.match(line)
            if m:
                fence, in_header, first = m.group(1), False, True
            continue
        if line.strip() == fence:
            fence = None
            continue
        if first:
            first = False
            if line.strip() == "---":
                in_header = True
                continue
        if in_header:
            in_header = line.strip() != "---"
            continue
        if re.match(r"^:[\w-]+:", line):
            continue
        if len(line) > limit:
            out.append((n, len(line)))
    return out


def test_code_line_helper_sees_cells_and_solutions_not_options(tmp_path):
    page = tmp_path / "99_x.md"
    long = "x = " + "1 + " * 30 + "1"
    page.write_text("\n".join([
        "```{code-cell} ipython3", "---", "mystnb:", "  figure:", "    caption: " + "w" * 100,
        "---", long, "```", "prose " + "p" * 100, "```python", "ok = 1", long, "```",
        "```{code-cell} ipython3", ":tags: [remove-cell]", "short = 2", "```"]))
    assert code_lines_too_long(page) == [(7, len(long)), (12, len(long))]


def test_chapter_code_lines_fit_the_column():
    """Every code line of every chapter is at most 88 characters; lists all offenders at once."""
    report = []
    for path in sorted((ROOT / "chapters").glob("[0-9][0-9]_*.md")):
        for n, length in code_lines_too_long(path):
            report.append(f"{path.relative_to(ROOT)}:{n}: {length} characters")
    assert not report, (f"{len(report)} code lines longer than {MAX_CODE_LINE} characters "
                        "(they overflow the page column):\n" + "\n".join(report))


def test_toc_nests_a_chapters_second_page_as_a_section(tmp_path):
    """Two files with one NN are one chapter (9 and 9.1), so the next chapter keeps its number."""
    import yaml

    sys.path.insert(0, str(ROOT / "scripts"))
    import make_toc

    (tmp_path / "chapters").mkdir()
    for name in ["08_a", "09_b", "09_b_more", "10_c"]:
        (tmp_path / "chapters" / f"{name}.md").write_text("# x\n")
    toc = yaml.safe_load(make_toc.render(tmp_path))
    part = next(p for p in toc["parts"] if p["caption"].startswith("Part II"))
    assert [e["file"] for e in part["chapters"]] == ["chapters/08_a", "chapters/09_b", "chapters/10_c"]
    assert part["chapters"][1]["sections"] == [{"file": "chapters/09_b_more"}]


def test_a_hidden_glue_cell_is_not_a_shown_cell():
    hidden = "```{code-cell} ipython3\n:tags: [remove-cell]\nglue('x', 1)\n```\n"
    shown = "```{code-cell} ipython3\nprint(1)\n```\n"
    assert shown_cells(hidden) == [] and shown_cells(hidden + shown) == ["print(1)"]
