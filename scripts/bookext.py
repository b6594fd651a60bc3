"""Local Sphinx extension of the book (``sphinx: local_extensions: {bookext: scripts/}`` in _config.yml).

It does six small things that _config.yml cannot say:

1. **Plotly renderer for every kernel.** Sets ``PLOTLY_RENDERER=notebook_connected`` (and
   ``TQDM_DISABLE=1``) in the environment of the build process before any notebook runs; kernels
   inherit it and plotly reads it at import. Each figure's output is then self-contained HTML that
   loads plotly.js from its CDN, with no ``application/vnd.plotly.v1+json`` output that MyST-NB
   would warn about ("skipping unknown output mime type", fatal under -W). Chapters need not set
   ``plotly.io.renderers.default``; readers running a chapter in Jupyter keep Jupyter's default.
2. **Cache guard.** When ``bgcn/**/*.py`` (or the requirements) changed since the last build,
   clears the execution cache and the doctrees, so every page is executed and read again
   (``scripts/cache_guard.py``).
3. **Front page and API page.** The front page's links to chapters that do not exist yet become
   plain text. In ``chapters/api.md`` the marker ``<!-- bgcn:automodules -->`` becomes one
   ``automodule`` per existing ``bgcn`` module, and ``<!-- bgcn:taught-in -->`` a table mapping
   every public name to the chapter that teaches it, read from the ``Taught in:`` line of its
   docstring. In docstrings, ``chapters/NN_name.md`` becomes a link to that chapter.
4. **One copy of each script.** Jupyter Book 1.0.4 with Sphinx 7.4 puts sphinx-thebe's and
   sphinx-togglebutton's inline scripts twice in every page, and the second
   ``const THEBE_JS_URL`` throws "Identifier 'THEBE_JS_URL' has already been declared"; the
   duplicates are dropped from each page's script list.
5. **Plotly outputs and widget fonts.** Removes two CDN requests that plotly's
   ``notebook_connected`` outputs make and that fail in the page (see PLOTLY_OUTPUT_FIXES), and on
   widget pages points require.js at html-manager's CDN folder so its fonts load.
6. **Short names.** A reference to a re-export such as ``bgcn.soft_topk`` resolves to where it is
   documented (``bgcn.topk.soft_topk``), so chapters can write {py:func}`bgcn.soft_topk`.
"""
from __future__ import annotations

import importlib
import inspect
import os
import pkgutil
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cache_guard  # noqa: E402

os.environ["PLOTLY_RENDERER"] = "notebook_connected"
os.environ.setdefault("TQDM_DISABLE", "1")

# planned order of the modules on the API page (DESIGN.md's data flow); others follow by name
MODULE_ORDER = ["utils", "io", "stats", "distributed", "data", "backbone", "similarity", "estimators", "topk",
                "argmax", "temperature", "graph", "scaling", "index", "gcn_spec", "gcn", "model", "train", "bank", "minibatch",
                "config", "viz", "viz_estimators", "experiments", "experiments.common", "experiment",
                "estimator_experiment", "experiments.real", "experiments.seeds", "cli"]
TAUGHT_RE = re.compile(r"Taught in:?(.*)", re.IGNORECASE)
CHAPTER_RE = re.compile(r"(?:chapters/)?(\d\d_[A-Za-z0-9_]+)(?:\.md)?")
# reference pages a docstring may name as where it is taught ("Taught in: the Sources page (chapters/sources.md)")
REFERENCE_RE = re.compile(r"chapters/(sources|notation)\.md")
AUTOMODULES_MARK = "<!-- bgcn:automodules -->"
TAUGHT_MARK = "<!-- bgcn:taught-in -->"


def _config_inited(app, config):
    root = Path(app.srcdir)
    cache = Path(config.nb_execution_cache_path or Path(app.outdir).parent / ".jupyter_cache")
    if not cache.is_absolute():
        cache = root / cache
    doctrees = Path(app.doctreedir)
    if cache_guard.guard(root, cache, doctrees):
        doctrees.mkdir(parents=True, exist_ok=True)
        print(f"bookext: bgcn sources changed (or first build): cleared {cache} and {doctrees}")


def bgcn_modules() -> list[str]:
    """Public submodules of bgcn that exist on disk, in the planned order."""
    try:
        import bgcn
    except Exception:  # noqa: BLE001 - the API page then says so; autodoc warns
        return []
    names = []
    for m in pkgutil.iter_modules(bgcn.__path__):
        if m.name.startswith("_"):
            continue
        names.append(m.name)
        if m.ispkg:  # a sub-package (bgcn.experiments): its modules too
            sub = importlib.import_module(f"bgcn.{m.name}")
            names += [f"{m.name}.{s.name}" for s in pkgutil.iter_modules(sub.__path__) if not s.name.startswith("_")]
    order = {n: i for i, n in enumerate(MODULE_ORDER)}
    return sorted(names, key=lambda n: (order.get(n, len(order)), n))


def public_names(module) -> list[str]:
    names = getattr(module, "__all__", None)
    if names is None:
        names = [n for n, obj in vars(module).items() if not n.startswith("_")
                 and (inspect.isfunction(obj) or inspect.isclass(obj))
                 and getattr(obj, "__module__", None) == module.__name__]
    return list(names)


def _lives_in(obj, module) -> bool:
    """Whether ``obj`` is defined in ``module`` or in one of its private parts (``bgcn.data._fashion``
    belongs to ``bgcn.data``); data (no ``__module__``) counts as living where it is listed."""
    home = getattr(obj, "__module__", None)
    if home is None or _is_data(obj):
        return True
    name = module.__name__
    return home == name or (home.startswith(name + "._") and hasattr(module, "__path__"))


def _is_data(obj) -> bool:
    return not (inspect.isclass(obj) or inspect.isroutine(obj) or inspect.ismodule(obj))


def _attr_docs(module) -> dict:
    """Module-level attributes with a ``#:`` doc comment (the only data autodoc documents)."""
    from sphinx.pycode import ModuleAnalyzer

    try:
        return ModuleAnalyzer.for_module(module.__name__).find_attr_docs()
    except Exception:  # noqa: BLE001
        return {}


def chapters_of(obj) -> list[str]:
    """Chapter docnames (chapters/NN_name) named in the object's ``Taught in:`` line."""
    doc = inspect.getdoc(obj) or ""
    found = []
    for line in doc.splitlines():
        m = TAUGHT_RE.search(line)
        if m:
            found += ["chapters/" + c for c in CHAPTER_RE.findall(m.group(1))]
            found += ["chapters/" + c for c in REFERENCE_RE.findall(m.group(1))]
    return list(dict.fromkeys(found))


def _chapter_link(docname: str, found_docs) -> str:
    name = docname.split("/")[-1]
    label = "chapter " + name[:2] if name[:2].isdigit() else f"the {name.capitalize()} page"
    return f"{{doc}}`{label} </{docname}>`" if docname in found_docs else f"{label} (to come)"


def taught_in_table(found_docs) -> str:
    import bgcn

    top = set(getattr(bgcn, "__all__", None) or [n for n in vars(bgcn) if not n.startswith("_")])
    rows = []
    for modname in bgcn_modules():
        try:
            module = importlib.import_module(f"bgcn.{modname}")
        except Exception as exc:  # noqa: BLE001
            rows.append(f"| `bgcn.{modname}` | `{modname}` | import failed: {type(exc).__name__} |")
            continue
        for name in public_names(module):
            obj = getattr(module, name, None)
            if not _lives_in(obj, module):  # a re-export: its row is in the module that defines it
                continue
            target = f"bgcn.{modname}.{name}"
            short = f"bgcn.{name}" if name in top and getattr(bgcn, name, None) is obj else target
            documented = not _is_data(obj) or ("", name) in _attr_docs(module)
            ref = f"{{py:obj}}`{short} <{target}>`" if documented else f"`{short}`"
            chapters = chapters_of(obj) if obj is not None else []
            if not chapters and inspect.ismodule(module):
                chapters = chapters_of(module) if name.isupper() else []
            links = ", ".join(_chapter_link(c, found_docs) for c in chapters) or "—"
            rows.append(f"| {ref} | `{modname}` | {links} |")
    head = "| name | module | taught in |\n|---|---|---|\n"
    return head + "\n".join(rows) + "\n"


def _is_package(modname: str) -> bool:
    try:
        module = importlib.import_module(f"bgcn.{modname}")
    except Exception:  # noqa: BLE001 - autodoc reports it
        return False
    return hasattr(module, "__path__") and getattr(module, "__all__", None) is not None


def automodules() -> str:
    # the package itself first (its docstring, and a target for :mod:`bgcn`)
    blocks = ["```{eval-rst}\n.. automodule:: bgcn\n```\n"]
    for modname in bgcn_modules():
        # autodoc emits reStructuredText: wrap it in eval-rst (a bare MyST {automodule} renders nothing)
        # a package documents what its __all__ re-exports from its private parts (timm's layout)
        imported = "   :imported-members:\n" if _is_package(modname) else ""
        blocks.append(f"## `bgcn.{modname}`\n\n```{{eval-rst}}\n.. automodule:: bgcn.{modname}\n"
                      f"   :members:\n   :undoc-members:\n{imported}```\n")
    return "\n".join(blocks) or "The library could not be imported.\n"


LINK_RE = re.compile(r"\[([^\]]+)\]\((chapters/\d\d_[A-Za-z0-9_]+)\.md\)")


def _source_read(app, docname, source):
    text = source[0]
    if docname == app.config.root_doc:
        # the front page's chapter map links only chapters that exist (a dangling link fails -W)
        text = LINK_RE.sub(lambda m: m.group(0) if m.group(2) in app.env.found_docs
                           else f"{m.group(1)} *(in preparation)*", text)
    if TAUGHT_MARK in text:
        text = text.replace(TAUGHT_MARK, taught_in_table(app.env.found_docs))
    if AUTOMODULES_MARK in text:
        text = text.replace(AUTOMODULES_MARK, automodules())
    source[0] = text


def _env_get_outdated(app, env, added, changed, removed):
    # generated from the library and the chapter list: read them again on every build (cheap)
    return [d for d in env.found_docs if d == app.config.root_doc or d.endswith("api")]


def _process_docstring(app, what, name, obj, options, lines):
    found = app.env.found_docs
    for i, line in enumerate(lines):
        if TAUGHT_RE.search(line):
            def link(m):
                doc = "chapters/" + m.group(1)
                return f":doc:`/{doc}`" if doc in found else m.group(0)
            head, _, tail = line.partition("Taught in")
            lines[i] = head + "Taught in" + CHAPTER_RE.sub(link, tail)


def _missing_reference(app, env, node, contnode):
    """Resolve ``bgcn.NAME`` (a re-export) to the one documented ``bgcn.<module>.NAME``."""
    target = node.get("reftarget", "")
    if node.get("refdomain") != "py" or not target.startswith("bgcn."):
        return None
    from sphinx.util.nodes import make_refnode

    suffix = target[len("bgcn."):]
    objects = env.get_domain("py").objects
    hits = [n for n in objects if n.startswith("bgcn.") and n.endswith("." + suffix)
            and n.count(".") == suffix.count(".") + 2]
    if len(hits) != 1:
        # a re-export from another unit (bgcn.config.TrainConfig is bgcn.train's): the documented name
        # of the object itself, its module with the private parts dropped (bgcn.train._config -> bgcn.train)
        home = _documented_home(target)
        hits = [home] if home in objects else hits
    if len(hits) != 1:
        # an existing object that autodoc cannot document (a module-level constant without a
        # "#:" doc comment): link to the documented module that holds it
        holder = _holding_module(target)
        hits = [f"bgcn.{holder}"] if holder and f"bgcn.{holder}" in objects else []
        if not hits:
            return None
    entry = objects[hits[0]]
    return make_refnode(app.builder, node.get("refdoc", ""), entry.docname, entry.node_id, contnode, hits[0])


def _documented_home(target: str) -> str | None:
    """``bgcn.<public package>.<qualname>`` of the object ``target`` names, or None."""
    parts = target.split(".")
    for i in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for name in parts[i:]:
            obj = getattr(obj, name, None)
        module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
        if not module or not qualname or not module.startswith("bgcn"):
            return None
        public = [m for m in module.split(".") if not m.startswith("_")]
        return ".".join(public + [qualname])
    return None


def _holding_module(target: str) -> str | None:
    """Name of the bgcn submodule that exports ``target`` (``bgcn.NAME`` or ``bgcn.mod.NAME``).

    Looked up by name in the submodules' ``__all__``: inside Sphinx the package object may be
    a half-initialised copy (autodoc re-imports modules), so attributes of ``bgcn`` can't be trusted.
    """
    parts = target.split(".")
    if len(parts) == 3 and parts[1] in bgcn_modules():
        candidates = [parts[1]]
    elif len(parts) == 2:
        candidates = bgcn_modules()
    else:
        return None
    for modname in candidates:
        try:
            module = importlib.import_module(f"bgcn.{modname}")
        except Exception:  # noqa: BLE001
            continue
        if parts[-1] in (getattr(module, "__all__", None) or ()):
            return modname
    return None


PLOTLY_OUTPUT_FIXES = [
    # plotly 6/7's notebook_connected "global init" output imports the CDN bundle by a URL whose
    # ".js" was cut off by str.rstrip(".js") ("plotly-4.1.1.min"): a failed request on every page
    # with a figure. Every figure loads plotly.js by its own <script src> anyway.
    re.compile(r'<script type="module">\s*import\s+"https://cdn\.plot\.ly/plotly-[^"]*?\.min"\s*</script>'),
    # each figure's HTML also loads MathJax 3 (tex-svg) from cdnjs, a second MathJax beside the
    # one Sphinx loads for the page's math: they collide ("Cannot set property Package ...")
    re.compile(r'<script src="https://cdnjs\.cloudflare\.com/ajax/libs/mathjax/[^"]+"></script>'),
]


def _clean_plotly_outputs(app, doctree):
    from docutils import nodes

    for node in list(doctree.findall(nodes.raw)):
        if "html" not in node.get("format", ""):
            continue
        text = node.astext()
        new = text
        for rx in PLOTLY_OUTPUT_FIXES:
            new = rx.sub("", new)
        if new != text:
            node.replace_self(nodes.raw(new, new, **{k: v for k, v in node.attributes.items()
                                                      if k in ("format", "classes")}))


def _page_assets(app, pagename, templatename, context, doctree):
    for key in ("script_files", "css_files"):
        files = context.get(key)
        if not files:
            continue
        seen, unique = set(), []
        for f in files:
            ident = (str(getattr(f, "filename", f) or ""),  # None and "" both mean an inline script
                     tuple(sorted((k, str(v)) for k, v in getattr(f, "attributes", {}).items())))
            if ident not in seen:
                seen.add(ident)
                unique.append(f)
        context[key] = unique
    _widgets_public_path(context)
    _colab_link(context)


COLAB_BRANCH = "colab"  # the workflow publishes notebooks/ (scripts/make_notebooks.py) there


def _colab_link(context):
    """Point the Colab launch button at the .ipynb copy on the colab branch.

    sphinx-book-theme links ``.../blob/main/chapters/NN_name.md``, which Colab cannot open.
    """
    for group in context.get("header_buttons") or []:
        for button in group.get("buttons", []) if isinstance(group, dict) else []:
            url = button.get("url", "") if isinstance(button, dict) else ""
            m = re.match(r"(https://colab\.research\.google\.com/github/[^/]+/[^/]+/blob/)[^/]+/(.+)\.md$", url)
            if m:
                button["url"] = f"{m.group(1)}{COLAB_BRANCH}/{m.group(2)}.ipynb"


# ipywidgets 8's static widgets typeset their labels with the MathJax 2 API
# (MathJax.Hub.Queue), which throws under the page's MathJax 3: map it to typesetPromise.
MATHJAX2_SHIM = """
(function () {
  function shim() {
    var M = window.MathJax;
    if (M && M.version && !M.Hub) {
      M.Hub = {Config: function () {}, Queue: function (job) {
        var el = job && job[2];
        if (M.typesetPromise) { M.typesetPromise(el ? [el] : undefined).catch(function () {}); }
      }};
    }
  }
  shim();
  document.addEventListener("DOMContentLoaded", shim);
  window.addEventListener("load", shim);
})();"""


def _widgets_public_path(context):
    """On widget pages, tell require.js where html-manager lives before embed-amd.js runs.

    (And shim MathJax.Hub for the widgets, see MATHJAX2_SHIM.)

    embed-amd.js sets webpack's public path from its AMD module URI, which require.js resolves
    against the *page* ("chapters/@jupyter-widgets/html-manager/dist/"): its icon fonts then 404.
    """
    scripts = context.get("script_files") or []
    names = [str(getattr(f, "filename", "") or "") for f in scripts]
    req = next((i for i, n in enumerate(names) if re.search(r"require(\.min)?\.js$", n)), None)
    amd = next((n for n in names if n.endswith("/html-manager@1.0.6/dist/embed-amd.js")
                or re.search(r"/html-manager@[^/]+/dist/embed-amd\.js$", n)), None)
    if req is None or amd is None:
        return
    try:
        from sphinx.builders.html._assets import _JavaScript
    except ImportError:  # Sphinx < 7.2
        return
    base = amd[: -len("/embed-amd.js")]
    body = 'require.config({paths: {"@jupyter-widgets/html-manager/dist": "%s"}});' % base + MATHJAX2_SHIM
    scripts = list(scripts)
    scripts.insert(req + 1, _JavaScript("", priority=scripts[req].priority, body=body))
    context["script_files"] = scripts


def setup(app):
    app.connect("html-page-context", _page_assets, priority=900)
    app.connect("doctree-read", _clean_plotly_outputs)
    app.connect("config-inited", _config_inited)
    app.connect("source-read", _source_read)
    app.connect("env-get-outdated", _env_get_outdated)
    app.connect("autodoc-process-docstring", _process_docstring)
    app.connect("missing-reference", _missing_reference)
    return {"version": "0.1", "parallel_read_safe": True, "parallel_write_safe": True}
