"""Every recipe in recipes/ runs as a script on the toy, writes real numbers, uses only the public API and
has a docs page that shows its code (train_toy.py is tested with the toy itself)."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

import vlmlens as vl

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted(p for p in (ROOT / "recipes").glob("*.py") if p.name != "train_toy.py")
LM_LAYERS = 4  # the shipped toy's


def check_ablate_background(out: Path) -> None:
    table = pd.read_csv(out / "accuracy.csv")
    assert list(zip(table.region, table["how"])) == [("none", "none"), ("background", "mean"), ("background", "zero"),
                                                   ("object", "mean"), ("object", "zero")]
    assert table.accuracy.between(0, 1).all()
    by = table.set_index(["region", "how"]).accuracy
    assert by["none", "none"] > 0.9  # the toy answers squares right
    assert by["object", "zero"] < by["none", "none"]  # without its objects' tokens it cannot


def check_strip_swap(out: Path) -> None:
    table = pd.read_csv(out / "swaps.csv")
    assert len(table) == 1 + 2 * (LM_LAYERS + 1)  # no swap, then object and strip at the input and each layer
    baseline = table.iloc[0]
    assert baseline.site == "none" and baseline.p_red > 0.5 and not baseline.flipped
    at_input = table[(table.site == "hook_embed") & (table.swapped == "strip")].iloc[0]
    assert at_input.flipped and at_input.p_blue > 0.5  # the swapped strips carry the order


def check_amplify_direction(out: Path) -> None:
    table = pd.read_csv(out / "accuracy_by_alpha.csv")
    assert table.groupby("direction").alpha.apply(list).to_dict() == {
        "probe": [0.0, 1.0, 2.0, 4.0, 8.0, 16.0], "random": [0.0, 1.0, 2.0, 4.0, 8.0, 16.0]}
    by = table.set_index(["direction", "alpha"]).accuracy
    assert by["probe", 1.0] == by["random", 1.0]  # alpha 1 leaves the model alone, whatever the direction
    assert table.accuracy.between(0, 1).all() and by["probe"].nunique() > 1  # the edit does something


def check_layer_region_heatmap(out: Path) -> None:
    assert "plotly" in (out / "heatmap.html").read_text()[:100_000]
    effects = vl.Effects.load(out / "effects.json")
    assert [(lab["layer"], lab["region"]) for lab in effects.labels] == [
        (layer, region) for layer in range(LM_LAYERS) for region in ("object", "background", "text", "last")]
    assert effects.values.shape == (4 * LM_LAYERS, 8) and effects.clean.mean() > 0  # the toy prefers its answer


def check_patch_map(out: Path) -> None:
    assert "plotly" in (out / "map.html").read_text()[:100_000]
    cells = pd.read_csv(out / "cells.csv")
    assert len(cells) == 100 and cells[["x0", "y0", "x1", "y1"]].max().tolist() == [72.0, 72.0, 80.0, 80.0]
    effects = vl.Effects.load(out / "effects.json")
    assert len(effects.labels) == 25 and effects.metric == "attribution:LogitDiff"


CHECKS: dict[str, tuple[list[str], Callable[[Path], None]]] = {
    "ablate_background.py": (["--n", "16"], check_ablate_background),
    "strip_swap.py": ([], check_strip_swap),
    "amplify_direction.py": (["--n", "16", "--n-probe", "64"], check_amplify_direction),
    "layer_region_heatmap.py": (["--n", "8"], check_layer_region_heatmap),
    "patch_map.py": (["--n", "4", "--block", "2", "--method", "attribution"], check_patch_map),
}


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_recipe_runs_and_writes_its_numbers(recipe: Path, tmp_path: Path) -> None:
    assert recipe.name in CHECKS, f"{recipe.name} has no check in tests/test_recipes.py"
    args, check = CHECKS[recipe.name]
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, str(recipe), *args, "--out", str(out)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"written to {out}" in done.stdout
    check(out)


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_recipe_uses_only_the_public_api(recipe: Path) -> None:
    tree = ast.parse(recipe.read_text())
    imports = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    imports += [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    assert "vlmlens" in imports, f"{recipe.name} should `import vlmlens as vl`"
    assert not [name for name in imports if name.startswith("vlmlens.")], f"{recipe.name} imports vlmlens internals"
    docstring = ast.get_docstring(tree) or ""
    assert f"python recipes/{recipe.name}" in docstring, "the docstring says what it shows and how to run it"


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_recipe_has_a_docs_page_showing_its_code(recipe: Path) -> None:
    page = ROOT / "docs" / "recipes" / f"{recipe.stem.replace('_', '-')}.md"
    assert page.exists(), f"no docs page {page.relative_to(ROOT)} for {recipe.name}"
    assert f'--8<-- "recipes/{recipe.name}"' in page.read_text()
    assert f"recipes/{page.name}" in (ROOT / "mkdocs.yml").read_text(), f"{page.name} is not in the mkdocs nav"
