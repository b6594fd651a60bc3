"""Shared fixtures. ``built_book`` builds the Jupyter Book once per test session, into ``_build/``,
for tests/test_book.py (marker ``book``) and tests/test_browser.py (marker ``browser``).

The library tests share three small ones (instead of a copy in every file):
  digits      the 1797 digits (``load_dataset("digits")``), loaded once per session: do not modify it
  tiny_data   ``tiny_data(n=120, classes=4, seed=0, labels_per_class=5, double=False)`` ->
              (images, labels, train_mask, val_mask, test_mask) of the synthetic set, fresh tensors
  tiny_model  ``tiny_model(estimator="masked_softmax", mode="end2end", classes=4, k=5, ...)`` -> a
              seeded ``build_model(create_backbone("mlp_digits"), ...)``, a new model each call

Environment:
  BGCN_BOOK_CACHE=keep   reuse _build/.jupyter_cache (default: start from a clean cache, so every
                         chapter is executed by this run)
  BGCN_BOOK_PREBUILT=1   do not build; test the _build/html that is there (e.g. after `make book`)
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "_build"
HTML = BUILD / "html"
LOG = BUILD / "book-build.log"
BUILD_TIMEOUT_S = int(os.environ.get("BGCN_BOOK_TIMEOUT", "3600"))
SPHINX_PROBLEM = re.compile(r"^.*?: (WARNING|ERROR|CRITICAL|SEVERE): .*$", re.M)
ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass
class BookBuild:
    returncode: int
    log: str
    seconds: float
    html: Path = HTML
    problems: list[str] = field(default_factory=list)


def _jupyter_book() -> list[str]:
    exe = Path(sys.executable).with_name("jupyter-book")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("jupyter-book")
    if found:
        return [found]
    pytest.skip("jupyter-book is not installed (pip install -r requirements.txt)")


def pytest_collection_modifyitems(config, items):
    """The first test that uses ``built_book`` pays for the whole build (fixture setup counts toward
    pytest-timeout's per-test limit): such tests get the build's own timeout plus the ini timeout."""
    try:
        ini = float(config.getini("timeout") or 0)
    except ValueError:              # pytest-timeout not installed: no per-test limit to extend
        return
    for item in items:
        if "built_book" in getattr(item, "fixturenames", ()) and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(BUILD_TIMEOUT_S + (ini or 900)))


@pytest.fixture(scope="session")
def built_book() -> BookBuild:
    """Build the book with ``-W -n --keep-going`` (once per session) and return the result."""
    if os.environ.get("BGCN_BOOK_PREBUILT") == "1" and (HTML / "index.html").exists():
        log = ANSI.sub("", LOG.read_text(errors="replace")) if LOG.exists() else ""
        return BookBuild(0, log, 0.0, problems=[m.group(0) for m in SPHINX_PROBLEM.finditer(log)])
    cmd = _jupyter_book()
    if os.environ.get("BGCN_BOOK_CACHE") != "keep":
        for d in (".jupyter_cache", ".doctrees", "jupyter_execute", "html"):
            shutil.rmtree(BUILD / d, ignore_errors=True)
    BUILD.mkdir(exist_ok=True)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd + ["build", str(ROOT), "-W", "-n", "--keep-going"], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=BUILD_TIMEOUT_S)
        rc, log = proc.returncode, proc.stdout
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        rc, log = -1, out + f"\n[test] build killed after {BUILD_TIMEOUT_S} s\n"
    seconds = time.perf_counter() - t0
    log = ANSI.sub("", log)
    log += f"\n[test] jupyter-book build took {seconds:.1f} s (exit {rc})\n"
    LOG.write_text(log)
    return BookBuild(rc, log, seconds, problems=[m.group(0) for m in SPHINX_PROBLEM.finditer(log)])


@pytest.fixture(scope="session")
def digits():
    """The digits data set (1797 images (1, 8, 8) in [0, 1], labels 0..9), loaded once per session.

    Shared by every test of the session: read it, never modify it in place (clone first)."""
    from bgcn.data import load_dataset

    return load_dataset("digits")


@pytest.fixture(scope="session")
def tiny_data():
    """A factory: ``tiny_data(n=120, classes=4, seed=0, labels_per_class=5, double=False)`` ->
    ``(images, labels, train_mask, val_mask, test_mask)`` of ``load_dataset("synthetic", n, classes,
    seed)`` and ``label_masks(labels, labels_per_class, seed=0)``; fresh tensors each call (cached
    per setting, cloned), float64 images with ``double=True``."""
    from bgcn.data import label_masks, load_dataset

    cache: dict[tuple, tuple] = {}

    def make(n: int = 120, classes: int = 4, seed: int = 0, labels_per_class: int = 5, double: bool = False):
        key = (n, classes, seed, labels_per_class)
        if key not in cache:
            ds = load_dataset("synthetic", n=n, num_classes=classes, seed=seed)
            cache[key] = (ds.images, ds.labels, *label_masks(ds.labels, labels_per_class, seed=0))
        images, *rest = (t.clone() for t in cache[key])
        return (images.double() if double else images, *rest)

    return make


@pytest.fixture
def tiny_model():
    """A factory: ``tiny_model(estimator="masked_softmax", mode="end2end", classes=4, k=5, tau=0.1,
    hidden=16, seed=0, double=False, backbone=None, **kw)`` -> ``build_model(create_backbone("mlp_digits"),
    classes, k=k, estimator=estimator, tau=tau, hidden=hidden, mode=mode, **kw)`` (``backbone`` in place of
    the ``mlp_digits`` one when given) built right after ``torch.manual_seed(seed)`` (so two calls with one
    seed give equal weights), in float64 with ``double=True``. The model of about twenty test files, written
    once."""
    import torch

    from bgcn.backbone import create_backbone
    from bgcn.model import build_model

    def make(estimator: str = "masked_softmax", mode: str = "end2end", classes: int = 4, k: int = 5,
             tau: float = 0.1, hidden: int = 16, seed: int = 0, double: bool = False, backbone=None, **kw):
        torch.manual_seed(seed)
        bb = create_backbone("mlp_digits") if backbone is None else backbone
        model = build_model(bb, classes, k=k, estimator=estimator, tau=tau, hidden=hidden, mode=mode, **kw)
        return model.double() if double else model

    return make


@pytest.fixture
def one_thread():
    """Run a test on one torch thread (small matrices; a second thread on a busy 2-core machine only waits)."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# -- one headless Chromium for the whole session (tests/test_browser.py, tests/test_live_notebook.py) --
# Playwright's sync API runs an event loop in this thread while it is open, so a second
# sync_playwright() in the same session fails ("Sync API inside the asyncio loop"): both browser
# test files share this one.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-default-apps", "--disable-extensions"]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(msg: str, what: str = "the browser test"):
    """Skip, or fail under CI=true where the browser tests must run."""
    if IN_CI:
        pytest.fail(f"{msg} (CI=true: {what} must run)")
    pytest.skip(msg)


def find_chromium() -> str | None:
    """The system Chromium (Debian's, as .ci/run installs it), else None: Playwright's own."""
    for name in (os.environ.get("BGCN_CHROMIUM"), "chromium", "chromium-browser", "google-chrome",
                 "google-chrome-stable", "/usr/bin/chromium"):
        if name:
            path = shutil.which(name) or (name if Path(name).is_file() else None)
            if path:
                return path
    return None


@pytest.fixture(scope="session")
def browser():
    """A headless Chromium (Playwright), started once per session."""
    exe = find_chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("playwright is not installed (pip install playwright)")
    with sync_playwright() as p:
        try:  # the system Chromium, else the one `playwright install chromium` put in its cache
            b = p.chromium.launch(executable_path=exe, headless=True, args=CHROMIUM_ARGS)
        except Exception as exc:  # noqa: BLE001
            unavailable(f"no Chromium could be started ({exe or 'none found'}: {str(exc)[:300]}); "
                        "apt-get install -y chromium, or set BGCN_CHROMIUM")
        yield b
        b.close()
