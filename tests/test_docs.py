"""The documentation runs: every docstring example in the package, every example notebook, the docs site.

Docstring examples see ``vl``, ``torch``, ``model`` (the shipped toy), ``scenes`` (16 generated scenes)
and ``batch`` (those scenes, prepared) besides their module's own names, so an example can be as short
as the code a user types.
"""

from __future__ import annotations

import doctest
import importlib
import inspect
import os
import pkgutil
import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import torch

import vlmlens as vl

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "examples").glob("*.ipynb"))
NEEDS_TOY = re.compile(r"(?<![.\w])(model|batch|scenes)\b|load\(\"toy\"\)|CHECKPOINT")


def modules() -> list[str]:
    names = ["vlmlens"]
    for info in pkgutil.walk_packages(vl.__path__, "vlmlens."):
        names.append(info.name)
    return sorted(n for n in names if n != "vlmlens.__main__")


def docstring_examples() -> list[doctest.DocTest]:
    finder = doctest.DocTestFinder(exclude_empty=True)
    tests: dict[str, doctest.DocTest] = {}
    for name in modules():
        module = importlib.import_module(name)
        try:
            found = finder.find(module, name)
        except ValueError as err:  # a malformed example: report it as this module's failing test
            bad = doctest.Example(f"raise ValueError({str(err)!r})\n", "")
            tests[name] = doctest.DocTest([bad], {}, name, getattr(module, "__file__", name), 0, "")
            continue
        for test in found:
            if test.examples and test.name.startswith(name):  # not re-exported objects of other modules
                tests.setdefault(test.name, test)
    return sorted(tests.values(), key=lambda t: t.name)


@cache
def namespace() -> dict:
    model = vl.load("toy", device="cpu")
    scenes = vl.scenes.generate(16, seed=0)
    return {"vl": vl, "torch": torch, "model": model, "scenes": scenes, "batch": model.prepare(scenes)}


@pytest.mark.parametrize("test", docstring_examples(), ids=lambda t: t.name)
def test_docstring_example(test: doctest.DocTest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # an example that writes files (e.g. a report) writes them here
    source = "".join(example.source for example in test.examples)
    needs_toy = NEEDS_TOY.search(source) is not None
    globs = dict(test.globs)
    extra = namespace() if needs_toy else {"vl": vl, "torch": torch}
    globs.update(extra)  # e.g. the package's own ``scenes`` module gives way to the scenes list
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    runner = doctest.DocTestRunner(optionflags=flags)
    run = doctest.DocTest(test.examples, globs, test.name, test.filename, test.lineno, test.docstring)
    report: list[str] = []
    runner.run(run, out=report.append)
    assert runner.failures == 0, "".join(report)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_top_to_bottom(path: Path, tmp_path: Path) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError, naming the cell, on any error
    errors = [o for cell in notebook.cells for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors


def test_docs_site_builds_strictly(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    pytest.importorskip("material")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    site = tmp_path / "site"
    assert (site / "index.html").exists()
    api = (site / "api" / "interventions" / "index.html").read_text()
    assert 'id="vlmlens.interventions.Ablate"' in api  # the reference is generated from the docstrings
    assert '<span class="gp">&gt;&gt;&gt; </span>' in api  # with the examples rendered as highlighted code
    for recipe in ("behaviour", "last-token-patching", "position-probes", "criss-cross", "remove-vision-order",
                   "backup-mechanism", "global-amplification"):
        assert (site / "recipes" / recipe / "index.html").exists(), recipe


PUBLIC_MODULES = ("vlmlens", "vlmlens.scenes", "vlmlens.directions", "vlmlens.probes", "vlmlens.plot",
                  "vlmlens.display", "vlmlens.study", "vlmlens.scenes.benchmarks", "vlmlens.metrics",
                  "vlmlens.effects", "vlmlens.interventions", "vlmlens.layout", "vlmlens.cache", "vlmlens.batch",
                  "vlmlens.sites")


def test_every_public_object_has_a_runnable_example() -> None:
    missing: set[str] = set()
    for name in PUBLIC_MODULES:
        module = importlib.import_module(name)
        public = getattr(module, "__all__", [n for n in vars(module) if not n.startswith("_")])
        for attr in public:
            obj = getattr(module, attr)
            if not (inspect.isfunction(obj) or inspect.isclass(obj)) or not obj.__module__.startswith("vlmlens"):
                continue
            if ">>>" not in (obj.__doc__ or ""):
                missing.add(f"{obj.__module__}.{obj.__qualname__}")  # once, where it is defined
    assert not missing, "public objects without a docstring example: " + ", ".join(sorted(missing))
