"""The rendered book works in a real browser (marker ``browser``; needs Chromium).

Serves ``_build/html`` (built once by the ``built_book`` fixture) on 127.0.0.1 and opens every page
in headless Chromium through Playwright. Nothing outside localhost is reached: every request to a
CDN is answered from a local copy, and any request that cannot be is a failure:

* plotly.js (``cdn.plot.ly/plotly-<v>.min.js``)  -> plotly's bundled ``package_data/plotly.min.js``
* ``cdn.jsdelivr.net/npm/<pkg>@<v>/<path>``     -> npm packages unpacked by scripts/fetch_js.sh
  (mathjax@3, requirejs@2.3.4, @jupyter-widgets/html-manager@1.0.6)
* ``cdnjs.cloudflare.com/ajax/libs/mathjax/<v>/<path>`` (plotly's own MathJax tag) -> mathjax@<v>

Per page: no uncaught exception and no console error; math typeset by MathJax (and no MathJax
error); every Plotly figure drawn, with its slider where it has one; static widgets rendered;
images loaded; internal links point at files that exist (and at anchors that exist). A screenshot
of each whole page goes to ``_build/screenshots/``: ``<page>.png``, or, for a page taller than
one slice (8 000 px), ``<page>-01.png``, ``<page>-02.png``, ... from top to bottom. On the temperature chapter a slider is moved with
the mouse and the figure must change.

Without a browser the tests are skipped, except under CI (``CI=true``), where that fails.
"""
from __future__ import annotations

import functools
import http.server
import mimetypes
import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from test_book import TEMPERATURE, toc_files

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
JS_CACHE = Path(os.environ.get("BGCN_JS_CACHE", Path.home() / ".cache" / "bgcn-js"))
SCREENSHOTS = ROOT / "_build" / "screenshots"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
SHOT_SLICE = 8_000  # px per screenshot file; the API page is ~110 000 px tall, in slices
NPM_PACKAGES = {"requirejs": "2.3.4", "@jupyter-widgets/html-manager": "1.0.6", "mathjax": "3.2.2"}


def _unavailable(msg: str):
    if IN_CI:
        pytest.fail(msg + " (CI=true: the browser test must run)")
    pytest.skip(msg)


# ---------------------------------------------------------------------------------------------
# local copies of the CDN files
class LocalCDN:
    """Maps a CDN URL to a local file, or None."""

    def __init__(self, cache: Path):
        import plotly
        from plotly.offline import get_plotlyjs_version

        self.npm = cache / "npm"
        self.plotly_js = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
        self.plotly_version = get_plotlyjs_version()

    def _npm_file(self, name: str, version: str, path: str) -> Path | None:
        pkg = self.npm / name
        have = NPM_PACKAGES.get(name)
        if have is None or not (have == version or have.startswith(version + ".")):
            return None  # a version we don't have a copy of: fail rather than serve another
        f = (pkg / path).resolve()
        if pkg.resolve() not in f.parents or not f.is_file():
            return None
        return f

    def resolve(self, url: str) -> Path | None:
        u = urlsplit(url)
        path = unquote(u.path)
        if u.hostname == "cdn.plot.ly":
            m = re.fullmatch(r"/plotly-(?P<v>[\d.]+)\.min\.js", path)
            return self.plotly_js if m and m["v"] == self.plotly_version else None
        if u.hostname == "cdn.jsdelivr.net":
            m = re.fullmatch(r"/npm/(?P<name>(@[^/@]+/)?[^/@]+)@(?P<v>[^/]+)/(?P<path>.+)", path)
            return self._npm_file(m["name"], m["v"], m["path"]) if m else None
        if u.hostname == "cdnjs.cloudflare.com":
            m = re.fullmatch(r"/ajax/libs/mathjax/(?P<v>[\d.]+)/(?P<path>.+)", path)
            if m:
                return self._npm_file("mathjax", m["v"], re.sub(r"\.min\.js$", ".js", m["path"]))
        return None


@pytest.fixture(scope="session")
def local_cdn() -> LocalCDN:
    missing = [n for n in NPM_PACKAGES if not (JS_CACHE / "npm" / n / "package.json").is_file()]
    if missing:
        script = ROOT / "scripts" / "fetch_js.sh"
        proc = subprocess.run(["bash", str(script)], capture_output=True, text=True,
                              env={**os.environ, "BGCN_JS_CACHE": str(JS_CACHE)})
        if proc.returncode != 0:
            _unavailable(f"no local copies of {missing} and scripts/fetch_js.sh failed:\n{proc.stderr[-2000:]}")
    return LocalCDN(JS_CACHE)


# ---------------------------------------------------------------------------------------------
# server and browser
class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # noqa: D401 - keep pytest output clean
        pass


@pytest.fixture(scope="session")
def site(built_book):
    html = built_book.html
    if not (html / "index.html").exists():
        pytest.fail(f"no built book in {html} (see _build/book-build.log)")
    handler = functools.partial(_QuietHandler, directory=str(html))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", html
    server.shutdown()
    server.server_close()


class PageRun:
    """One page opened in the browser, with everything it requested and complained about."""

    def __init__(self, browser, site, cdn: LocalCDN, doc: str):
        self.base, self.html = site
        self.doc = doc
        self.errors: list[str] = []
        self.unserved: list[str] = []
        self.context = browser.new_context(viewport={"width": 1280, "height": 900})
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(f"console: {m.text}"))
        self.page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        self.page.on("response", self._response)
        self.cdn = cdn

    def _route(self, route):
        url = route.request.url
        u = urlsplit(url)
        if u.scheme in ("data", "blob") or (u.hostname == "127.0.0.1" and url.startswith(self.base)):
            if u.path == "/favicon.ico":
                return route.fulfill(status=204, body=b"")
            return route.continue_()
        f = self.cdn.resolve(url)
        if f is None:
            self.unserved.append(url)
            return route.abort("blockedbyclient")
        ctype = mimetypes.guess_type(f.name)[0] or "application/octet-stream"
        if f.suffix == ".js":
            ctype = "application/javascript; charset=utf-8"
        return route.fulfill(status=200, body=f.read_bytes(), content_type=ctype,
                             headers={"Access-Control-Allow-Origin": "*"})

    def _response(self, resp):
        if resp.url.startswith(self.base) and resp.status >= 400:
            self.errors.append(f"HTTP {resp.status} for {resp.url}")

    def open(self):
        self.page.goto(f"{self.base}/{self.doc}.html", wait_until="load", timeout=120_000)
        try:  # only a wait: what was requested and not served is checked separately
            self.page.wait_for_load_state("networkidle", timeout=60_000)
        except Exception:  # noqa: BLE001 - a long page on a busy machine; the checks decide
            pass
        # MathJax 3 typesets asynchronously after load
        self.page.evaluate("""async () => {
            if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
                await MathJax.startup.promise;
            }
        }""")
        return self.page

    def close(self):
        self.context.close()


@pytest.fixture
def open_page(browser, site, local_cdn):
    runs = []

    def _open(doc):
        run = PageRun(browser, site, local_cdn, doc)
        runs.append(run)
        run.open()
        return run

    yield _open
    for r in runs:
        r.close()


# ---------------------------------------------------------------------------------------------
JS_PAGE_FACTS = """() => {
  const q = (s) => Array.from(document.querySelectorAll(s));
  const plots = q('.plotly-graph-div').map(gd => ({
    id: gd.id,
    drawn: gd.classList.contains('js-plotly-plot') && !!gd.querySelector('.main-svg'),
    sliders: (gd.layout && gd.layout.sliders) ? gd.layout.sliders.length : 0,
    sliderContainers: gd.querySelectorAll('.slider-container').length,
  }));
  return {
    mathSources: q('.math, span.math, div.math').length,
    mjx: q('mjx-container').length,
    mjxErrors: q('mjx-merror').map(e => e.getAttribute('data-mjx-error') || e.textContent).slice(0, 5),
    plots: plots,
    widgetViews: q('script[type="application/vnd.jupyter.widget-view+json"]').length,
    widgetsRendered: q('.jupyter-widgets').length,
    images: q('img').map(i => ({src: i.currentSrc || i.src, ok: i.complete && i.naturalWidth > 0})),
    links: q('a[href]').map(a => a.href),
  };
}"""


def _anchor_exists(file: Path, fragment: str, cache: dict) -> bool:
    if file not in cache:
        cache[file] = file.read_text(encoding="utf-8", errors="replace")
    text = cache[file]
    return f'id="{fragment}"' in text or f"id='{fragment}'" in text or f'name="{fragment}"' in text


def check_page(run: PageRun) -> list[str]:
    page, problems = run.page, []
    # give plotly and the widget manager time to draw
    try:
        page.wait_for_function("""() => Array.from(document.querySelectorAll('.plotly-graph-div'))
                                   .every(gd => gd.classList.contains('js-plotly-plot'))""", timeout=30_000)
    except Exception:  # noqa: BLE001 - reported below
        pass
    try:
        page.wait_for_function("""() => document.querySelectorAll(
            'script[type="application/vnd.jupyter.widget-view+json"]').length === 0
            || document.querySelectorAll('.jupyter-widgets').length > 0""", timeout=30_000)
    except Exception:  # noqa: BLE001
        pass
    page.evaluate("""() => Promise.all(Array.from(document.images).map(i => i.complete ? null :
        new Promise(r => { i.addEventListener('load', r); i.addEventListener('error', r); })))""")
    facts = page.evaluate(JS_PAGE_FACTS)

    if facts["mathSources"] and not facts["mjx"]:
        problems.append(f"{facts['mathSources']} math elements but no mjx-container (MathJax did not typeset)")
    if facts["mjxErrors"]:
        problems.append(f"MathJax errors: {facts['mjxErrors']}")
    for p in facts["plots"]:
        if not p["drawn"]:
            problems.append(f"Plotly figure {p['id']} not drawn")
        elif p["sliders"] and p["sliderContainers"] < p["sliders"]:
            problems.append(f"Plotly figure {p['id']}: {p['sliders']} sliders, {p['sliderContainers']} drawn")
    if facts["widgetViews"] and not facts["widgetsRendered"]:
        problems.append(f"{facts['widgetViews']} widget views but no rendered .jupyter-widgets")
    problems += [f"image not loaded: {i['src']}" for i in facts["images"] if not i["ok"]]

    cache: dict = {}
    for href in dict.fromkeys(facts["links"]):
        u = urlsplit(href)
        if u.scheme not in ("http", "https") or not href.startswith(run.base):
            continue
        rel = unquote(u.path).lstrip("/")
        target = run.html / rel
        if rel == "" or target.is_dir():
            target = target / "index.html"
        if not target.is_file():
            problems.append(f"broken link: {href}")
        elif u.fragment and target.suffix == ".html" and not _anchor_exists(target, unquote(u.fragment), cache):
            problems.append(f"missing anchor: {href}")

    problems += run.errors
    problems += [f"request not served locally: {u}" for u in dict.fromkeys(run.unserved)]
    save_full_page(page, run.doc)
    return problems


def shot_slices(height: int, slice_px: int = SHOT_SLICE) -> list[tuple[int, int]]:
    """(top, height) of the slices that cover a page of ``height`` px, top to bottom, no overlap."""
    height = max(int(height), 1)
    return [(y, min(slice_px, height - y)) for y in range(0, height, slice_px)]


def save_full_page(page, doc: str) -> list[Path]:
    """Screenshot the whole page, in slices of SHOT_SLICE px (Chromium cannot paint one image
    taller than about 16 000 px). Returns the files written, top to bottom."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    stem = doc.replace("/", "__")
    for old in [SCREENSHOTS / f"{stem}.png", *SCREENSHOTS.glob(f"{stem}-[0-9][0-9]*.png")]:
        old.unlink(missing_ok=True)  # slices of an earlier, longer version of the page
    height = page.evaluate("() => Math.max(document.documentElement.scrollHeight, "
                           "document.body ? document.body.scrollHeight : 0)")
    width = page.viewport_size["width"] if page.viewport_size else 1280
    slices = shot_slices(height)
    files = []
    for i, (top, h) in enumerate(slices, 1):
        name = f"{stem}.png" if len(slices) == 1 else f"{stem}-{i:02d}.png"
        page.screenshot(path=str(SCREENSHOTS / name), full_page=True,
                        clip={"x": 0, "y": top, "width": width, "height": h})
        files.append(SCREENSHOTS / name)
    return files


@pytest.mark.parametrize("height", [1, 900, SHOT_SLICE - 1, SHOT_SLICE, SHOT_SLICE + 1, 110_003])
def test_screenshot_slices_cover_the_whole_page(height):
    slices = shot_slices(height)
    assert slices[0][0] == 0 and all(h > 0 and h <= SHOT_SLICE for _, h in slices)
    assert all(a + ha == b for (a, ha), (b, _) in zip(slices, slices[1:])), "gap or overlap"
    assert slices[-1][0] + slices[-1][1] == height, "the bottom of the page is not covered"


def test_full_page_screenshot_reaches_the_bottom(browser, tmp_path, monkeypatch):
    """A page taller than two slices comes back whole: every slice shows its own band of the page."""
    from PIL import Image

    bands = 25  # 1000 px each, 25 000 px in all: beyond what one Chromium image can hold
    colour = lambda i: ((i * 37) % 256, (i * 91) % 256, (i * 53) % 256)
    html = "".join(f'<div style="height:1000px;background:rgb{colour(i)}"></div>' for i in range(bands))
    page_file = tmp_path / "tall.html"
    page_file.write_text(f"<html><body style='margin:0'>{html}</body></html>")
    monkeypatch.setattr(sys.modules[__name__], "SCREENSHOTS", tmp_path / "shots")
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        page = context.new_page()
        page.goto(page_file.as_uri())
        files = save_full_page(page, "tall")
    finally:
        context.close()
    assert len(files) == len(shot_slices(bands * 1000))
    covered = 0
    for f, (top, h) in zip(files, shot_slices(bands * 1000)):
        im = Image.open(f).convert("RGB")
        assert im.size[1] == h, f"{f.name}: {im.size[1]} px tall, expected {h}"
        for y in range(500, h, 1000):  # the middle of every band in this slice
            assert im.getpixel((640, y)) == colour((top + y) // 1000), f"{f.name} at y={top + y}"
        covered += h
    assert covered == bands * 1000


def pages() -> list[str]:
    return toc_files() + ["genindex", "search"]


MAX_PAGE_PX = 12_500  # "about 12 000 px" at 1280 px: a d2l section is 5-10 k
TALL_ALLOWED = ("chapters/api", "genindex", "py-modindex")  # generated lookup pages, not read through


def page_height(page) -> int:
    """The rendered page's height in px (the document's scroll height)."""
    return int(page.evaluate("() => Math.max(document.documentElement.scrollHeight, "
                             "document.body ? document.body.scrollHeight : 0)"))


@pytest.mark.parametrize("doc", pages())
def test_page_works_in_browser(open_page, doc):
    run = open_page(doc)
    problems = check_page(run)
    height = page_height(run.page)
    if doc not in TALL_ALLOWED and height > MAX_PAGE_PX:
        problems.append(f"the page is {height} px tall at 1280 px (limit about {MAX_PAGE_PX}): split it "
                        f"into pages of one idea (chapters/NN_name_i_idea.md) or fold secondary output")
    assert not problems, f"{doc}:\n  " + "\n  ".join(problems)


def test_other_pages_work_in_browser(open_page, site):
    """Pages outside the TOC (module source pages of sphinx.ext.viewcode, ...) load cleanly too."""
    _, html = site
    known = {f"{d}.html" for d in pages()} | {"index.html"}
    others = sorted(p.relative_to(html).as_posix() for p in html.rglob("*.html")
                    if not p.relative_to(html).as_posix().startswith(("_static/", "_sources/")))
    failures = {}
    for rel in others:
        if rel in known:
            continue
        run = open_page(rel[: -len(".html")])
        problems = check_page(run)
        run.close()
        if problems:
            failures[rel] = problems
    assert not failures, "\n".join(f"{k}: {v}" for k, v in failures.items())


def test_temperature_slider_changes_the_figure(open_page, site):
    _, html = site
    assert TEMPERATURE in toc_files() and (html / f"{TEMPERATURE}.html").exists(), \
        f"{TEMPERATURE} must be in _toc.yml and built: the slider test moves its temperature slider"
    run = open_page(TEMPERATURE)
    page = run.page
    page.wait_for_function("""() => Array.from(document.querySelectorAll('.js-plotly-plot'))
                              .some(gd => gd.layout && gd.layout.sliders && gd.layout.sliders.length)""",
                           timeout=30_000)
    snapshot = """(id) => { const gd = document.getElementById(id);
        return JSON.stringify({active: gd.layout.sliders[0].active || 0,
                               data: gd.data.map(t => [t.x, t.y, t.z, t.visible, t.marker, t.line]),
                               title: gd.layout.title}); }"""
    gd_id = page.evaluate("""() => Array.from(document.querySelectorAll('.js-plotly-plot'))
        .find(gd => gd.layout.sliders && gd.layout.sliders.length).id""")
    gd = page.locator(f'[id="{gd_id}"]')
    gd.scroll_into_view_if_needed()
    before = page.evaluate(snapshot, gd_id)
    rail = gd.locator(".slider-container .slider-rail-rect").first
    box = rail.bounding_box()
    assert box, "the slider rail is not visible"
    active0 = page.evaluate(f"() => document.getElementById('{gd_id}').layout.sliders[0].active || 0")
    # click at the end of the rail that is farther from the current step
    n_steps = page.evaluate(f"() => document.getElementById('{gd_id}').layout.sliders[0].steps.length")
    x = box["x"] + (box["width"] - 3 if active0 < n_steps / 2 else 3)
    page.mouse.click(x, box["y"] + box["height"] / 2)
    page.wait_for_function(f"(b) => ({snapshot})('{gd_id}') !== b", arg=before, timeout=10_000)
    after = page.evaluate(snapshot, gd_id)
    assert after != before
    active1 = page.evaluate(f"() => document.getElementById('{gd_id}').layout.sliders[0].active")
    assert active1 != active0, f"slider step did not change ({active0} -> {active1})"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    gd.screenshot(path=str(SCREENSHOTS / "05_temperature__slider_moved.png"))
    assert not run.errors, run.errors
    assert not run.unserved, run.unserved
