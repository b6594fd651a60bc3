"""A chapter run live: JupyterLab 4 in headless Chromium, Run All, figures drawn, a widget moved.

The second kind of reader does not read the static book: they open a chapter as a notebook
(Binder, Colab, their own JupyterLab) and run it. This test does that with chapter 05 (Plotly
figures and the τ slider of :func:`bgcn.viz.widget_softmax_temperature`):

1. puts into a temporary folder ``chapters/05_temperature_1_weights.md`` converted to ``.ipynb`` with
   jupytext (what Colab opens), and the ``.md`` file itself (what Binder opens);
2. starts JupyterLab on 127.0.0.1 (a free port, a random token, the test's own settings
   folders, with binder/overrides.json's settings, so that ``.md`` opens as a Jupytext
   notebook) with the environment of a reader: no ``PLOTLY_RENDERER`` (the book build sets
   one; a live notebook must draw with Plotly's default renderer);
3. opens each notebook in headless Chromium (Playwright), runs ``notebook:run-all-cells`` and
   waits until every code cell has run and the kernel is idle;
4. checks: no error output; every Plotly output of the notebook is drawn (a ``.js-plotly-plot``
   with a ``.main-svg`` that holds traces), as many as the notebook has; no "Plotly is not
   defined" (or any other uncaught error) in the page; no request leaves 127.0.0.1;
5. moves the τ slider with the keyboard and checks that the widget's picture and caption change.

Marker ``browser``. Skipped when Chromium, Playwright or JupyterLab is not installed (under
``CI=true`` that is a failure, as in tests/test_browser.py). About a minute on two cores
(both notebooks).
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import pytest


ROOT = Path(__file__).resolve().parents[1]
CHAPTER = ROOT / "chapters" / "05_temperature_1_weights.md"  # the page with the live tau widget
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
SCREENSHOTS = ROOT / "_build" / "screenshots"
RUN_TIMEOUT_S = 240      # Run All of chapter 05 takes ~20 s alone, longer on a loaded machine


def _unavailable(msg: str):
    if IN_CI:
        pytest.fail(msg + " (CI=true: the live-notebook test must run)")
    pytest.skip(msg)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server on 127.0.0.1 serving a folder with chapter 05 as a notebook."""
    for mod, pip in (("jupyterlab", "jupyterlab"), ("jupytext", "jupytext"), ("playwright", "playwright")):
        if importlib.util.find_spec(mod) is None:
            _unavailable(f"{mod} is not installed (pip install {pip}; see requirements.txt)")
    import jupytext

    work = tmp_path_factory.mktemp("live")
    nb_dir, home = work / "nb", work / "home"
    (nb_dir / "ipynb").mkdir(parents=True)
    (nb_dir / "md").mkdir()
    # the .ipynb a reader gets from jupytext (or Colab from scripts/make_notebooks.py) ...
    nb = jupytext.read(CHAPTER)
    nb.metadata.pop("jupytext", None)
    jupytext.write(nb, nb_dir / "ipynb" / CHAPTER.with_suffix(".ipynb").name, fmt="ipynb")
    # ... and the MyST file itself, which Binder opens as a notebook
    shutil.copy(CHAPTER, nb_dir / "md" / CHAPTER.name)
    settings = home / "settings" / "@jupyterlab"
    # binder/overrides.json's settings, as user settings: .md opens as a Jupytext Notebook
    overrides = json.loads((ROOT / "binder" / "overrides.json").read_text())
    for plugin, values in overrides.items():
        package, name = plugin.split(":")
        f = home / "settings" / package / f"{name}.jupyterlab-settings"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps(values))
    # every cell in the DOM (no windowing), so that each figure can be checked without scrolling
    (settings / "notebook-extension").mkdir(parents=True, exist_ok=True)
    (settings / "notebook-extension" / "tracker.jupyterlab-settings").write_text('{"windowingMode": "none"}')
    env = {k: v for k, v in os.environ.items() if k not in ("PLOTLY_RENDERER", "MPLBACKEND", "JUPYTER_PLATFORM_DIRS")}
    env.update(JUPYTER_CONFIG_DIR=str(home / "config"), JUPYTERLAB_SETTINGS_DIR=str(home / "settings"),
               JUPYTERLAB_WORKSPACES_DIR=str(home / "workspaces"), IPYTHONDIR=str(home / "ipython"),
               JUPYTER_RUNTIME_DIR=str(home / "runtime"), OMP_NUM_THREADS="1", TQDM_DISABLE="1",
               PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p]))
    port, token = _free_port(), secrets.token_hex(16)
    log = open(work / "lab.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
         f"--ServerApp.root_dir={nb_dir}", "--LabApp.expose_app_in_browser=True",
         "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
         "--LabApp.extension_manager=readonly", "--ServerApp.terminals_enabled=False"]
        + (["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []),
        cwd=nb_dir, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=5) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            log.close()
            pytest.fail(f"JupyterLab did not start:\n{(work / 'lab.log').read_text()[-3000:]}")
        time.sleep(0.5)
    yield {"base": base, "token": token, "log": work / "lab.log"}
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture(params=["ipynb", "md"])
def page(request, lab, browser):
    """Chapter 05 open in JupyterLab: as a converted .ipynb, and as the .md file (Binder's way)."""
    kind = request.param
    path = f"{kind}/{CHAPTER.stem}.{kind}"
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    outside: list[str] = []

    def route(r):
        u = urlsplit(r.request.url)
        if u.scheme in ("data", "blob") or u.hostname == "127.0.0.1":
            return r.continue_()
        outside.append(r.request.url)
        return r.abort("blockedbyclient")

    context.route("**/*", route)
    pg = context.new_page()
    pg.console_messages, pg.page_errors, pg.outside, pg.kind = [], [], outside, kind
    pg.on("console", lambda m: pg.console_messages.append(f"{m.type}: {m.text}"))
    pg.on("pageerror", lambda e: pg.page_errors.append(str(e)))
    pg.goto(f"{lab['base']}/lab/tree/{path}?token={lab['token']}&reset",   # reset: no old layout
            wait_until="domcontentloaded", timeout=120_000)
    pg.nb_path = path
    yield pg
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    try:
        pg.screenshot(path=str(SCREENSHOTS / f"live__{CHAPTER.stem}__{kind}.png"))
    except Exception:  # noqa: BLE001
        pass
    context.close()


JS_READY = """async () => {
  const app = window.jupyterapp;
  await app.started; await app.restored;
  const nb = app.shell.currentWidget;
  if (!nb || !nb.sessionContext) { return 'no notebook'; }
  await nb.context.ready; await nb.sessionContext.ready;
  const k = nb.sessionContext.session && nb.sessionContext.session.kernel;
  return k ? k.status : 'no kernel';
}"""

JS_STATE = """() => {
  const nb = window.jupyterapp.shell.currentWidget;
  const cells = nb.content.widgets.filter(c => c.model.type === 'code');
  const k = nb.sessionContext.session && nb.sessionContext.session.kernel;
  const errors = [];
  let plotlyOutputs = 0;
  for (const c of cells) {
    for (const o of c.model.outputs.toJSON()) {
      if (o.output_type === 'error') { errors.push(o.ename + ': ' + o.evalue); }
      // a Plotly figure, whichever renderer wrote it (mime bundle, or HTML calling Plotly.newPlot)
      if (o.data && (o.data['application/vnd.plotly.v1+json']
                     || String(o.data['text/html'] || '').includes('Plotly.newPlot'))) { plotlyOutputs += 1; }
    }
  }
  return {status: k ? k.status : 'none', cells: cells.length,
          done: cells.filter(c => c.model.executionCount !== null).length,
          errors: errors, plotlyOutputs: plotlyOutputs};
}"""

JS_PLOTS = """() => Array.from(document.querySelectorAll('.jp-OutputArea .js-plotly-plot')).map(gd => ({
  svg: gd.querySelectorAll('.main-svg').length,
  traces: gd.querySelectorAll('.main-svg .trace').length,
  sliders: gd.querySelectorAll('.slider-container').length,
  width: gd.getBoundingClientRect().width,
}))"""


@pytest.mark.browser
@pytest.mark.timeout(420)
def test_chapter_05_runs_live_in_jupyterlab(page):
    page.wait_for_function("() => !!window.jupyterapp", timeout=120_000)
    page.wait_for_function("() => !!window.jupyterapp.shell.currentWidget", timeout=120_000)
    opened = page.evaluate("""async () => { const w = window.jupyterapp.shell.currentWidget;
        await w.context.ready;
        return {notebook: !!(w.sessionContext && w.content && w.content.widgets),
                path: w.context.path, factory: w.context.factoryName || ''}; }""")
    assert opened["path"] == page.nb_path, opened
    assert opened["notebook"], f"{opened['path']} did not open as a notebook: {opened}"
    status = page.evaluate(JS_READY)
    assert status in ("idle", "starting", "busy", "unknown"), f"notebook/kernel not ready: {status}"
    t0 = time.monotonic()
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    state = None
    while time.monotonic() - t0 < RUN_TIMEOUT_S:
        time.sleep(1.0)
        state = page.evaluate(JS_STATE)
        if state["errors"] or (state["done"] == state["cells"] and state["status"] == "idle"):
            break
    run_s = time.monotonic() - t0
    assert state is not None and not state["errors"], f"error output after Run All: {state['errors']}"
    assert state["done"] == state["cells"] and state["status"] == "idle", (
        f"Run All did not finish in {RUN_TIMEOUT_S} s: {state}")
    print(f"Run All of chapter 05 ({page.kind}) in JupyterLab: {run_s:.1f} s, {state['cells']} code cells")

    # every Plotly output is drawn by JupyterLab's Plotly renderer (jupyterlab-plotly)
    assert state["plotlyOutputs"] >= 2, f"the notebook should hold Plotly outputs: {state}"
    deadline = time.monotonic() + 60
    while True:           # plotly.js draws asynchronously after the output is attached
        plots = page.evaluate(JS_PLOTS)
        if (len(plots) >= state["plotlyOutputs"] and all(p["traces"] for p in plots)) or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    assert len(plots) == state["plotlyOutputs"], f"{state['plotlyOutputs']} Plotly outputs, {len(plots)} drawn"
    for i, p in enumerate(plots):
        assert p["svg"] >= 1 and p["traces"] >= 1 and p["width"] > 100, f"Plotly figure {i} is blank: {p}"
        assert p["sliders"] >= 1, f"Plotly figure {i} lost its slider: {p}"
    problems = [m for m in page.console_messages if re.search(r"Plotly is not defined|ReferenceError", m)]
    assert not problems and not page.page_errors, f"page errors: {problems + page.page_errors}"

    # the live τ slider: move it with the keyboard, the picture and the caption change
    widget = page.locator(".jp-OutputArea .jupyter-widgets.widget-vbox").filter(
        has=page.locator(".widget-slider")).first
    widget.wait_for(timeout=30_000)
    img = widget.locator(".widget-image img, img.widget-image").first
    caption = widget.locator(".widget-html-content").first
    img.wait_for(timeout=30_000)
    before_src, before_caption = img.get_attribute("src"), caption.inner_text()
    assert "τ = " in before_caption, before_caption
    handle = widget.locator(".widget-slider .noUi-handle").first
    handle.scroll_into_view_if_needed()
    handle.focus()
    for _ in range(10):
        page.keyboard.press("ArrowLeft")       # 10 steps of 0.05 in log10 τ: τ / 10^0.5
    page.wait_for_function(
        "([el, old]) => el.innerText !== old", arg=[caption.element_handle(), before_caption], timeout=30_000)
    page.wait_for_function("([el, old]) => el.getAttribute('src') !== old",
                           arg=[img.element_handle(), before_src], timeout=30_000)
    deadline = time.monotonic() + 60      # let the kernel finish the queued redraws
    while page.evaluate(JS_STATE)["status"] != "idle" and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(1.0)
    after_caption = caption.inner_text()
    readout = float(widget.locator(".widget-readout").first.inner_text())
    tau_before = float(re.search(r"τ = ([0-9.e+-]+)", before_caption).group(1))
    tau_after = float(re.search(r"τ = ([0-9.e+-]+)", after_caption).group(1))
    assert tau_after < tau_before, (before_caption, after_caption)
    # the caption (written by the kernel) shows the slider's final value
    assert abs(tau_after - readout) <= 0.01 * readout, (readout, after_caption)
    assert not page.outside, f"requests outside 127.0.0.1: {sorted(set(page.outside))[:10]}"


def test_binder_and_colab_environments_install_the_library():
    """Static (no browser): what Binder and Colab need to run a chapter live."""
    import yaml

    sys.path.insert(0, str(ROOT / "scripts"))
    import make_notebooks

    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert config["launch_buttons"]["notebook_interface"] == "jupyterlab"   # classic opens .md as text
    binder = ROOT / "binder"
    req = (binder / "requirements.txt").read_text().split("\n")
    assert "-r ../requirements.txt" in req
    assert any(line.startswith("--extra-index-url https://download.pytorch.org/whl/cpu") for line in req)
    post = binder / "postBuild"
    assert os.access(post, os.X_OK), "binder/postBuild must be executable"
    text = post.read_text()
    assert "pip install --no-deps -e ." in text and "overrides.json" in text
    viewers = json.loads((binder / "overrides.json").read_text())[
        "@jupyterlab/docmanager-extension:plugin"]["defaultViewers"]
    assert viewers["markdown"] == viewers["myst"] == "Jupytext Notebook"
    root_req = (ROOT / "requirements.txt").read_text()
    assert re.search(r"^jupyterlab>=4", root_req, re.M) and re.search(r"^jupytext>=1.16", root_req, re.M)
    # one repository URL: _config.yml's, read by make_notebooks
    url, branch = make_notebooks.repository()
    assert url == config["repository"]["url"].rstrip("/") and branch == config["repository"]["branch"]
    setup = make_notebooks.setup_source(url, branch)
    assert f'"bgcn[widgets] @ git+{url}@{branch}" myst-nb' in setup
    assert "github.com" not in (ROOT / "scripts" / "make_notebooks.py").read_text()
