"""mkdocs hooks: pages that refer to files which may not exist yet, without breaking ``--strict``.

- ``<!-- figure: NAME | caption -->`` becomes the image ``figures/NAME.png`` (or .svg, .jpg) when that
  file exists at build time, and otherwise a note saying how to produce the figure.
- ``<!-- if-exists: PAGE.md -->text<!-- else -->other<!-- end-if -->`` keeps ``text`` when the page
  exists in ``docs/`` and ``other`` (optional) when it does not.
- Navigation entries whose page does not exist are dropped (e.g. a page another change adds later).
"""

from __future__ import annotations

import logging
import posixpath
import re
from pathlib import Path
from typing import Any

log = logging.getLogger("mkdocs.hooks.vlmlens")
FIGURE = re.compile(r"<!--\s*figure:\s*([\w.-]+)\s*(?:\|\s*(.*?))?\s*-->")
IF_EXISTS = re.compile(r"<!--\s*if-exists:\s*([\w./-]+)\s*-->(.*?)(?:<!--\s*else\s*-->(.*?))?<!--\s*end-if\s*-->", re.S)
FIGURE_TYPES = (".png", ".svg", ".jpg", ".webp")
_docs = Path("docs")


def _prune(nav: Any, docs: Path) -> Any:
    """The nav without entries whose markdown file is missing (sections left empty go too)."""
    if isinstance(nav, list):
        kept = [item for item in (_prune(i, docs) for i in nav) if item is not None]
        return kept or None
    if isinstance(nav, dict):
        out = {}
        for title, value in nav.items():
            pruned = _prune(value, docs)
            if pruned is not None:
                out[title] = pruned
        return out or None
    if isinstance(nav, str) and nav.endswith(".md") and "://" not in nav and not (docs / nav).exists():
        log.info("vlmlens docs: %s does not exist yet; left out of the navigation", nav)
        return None
    return nav


def on_config(config: Any) -> Any:
    global _docs
    _docs = Path(config["docs_dir"])
    if config.get("nav"):
        config["nav"] = _prune(config["nav"], _docs)
    return config


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    here = posixpath.dirname(page.file.src_uri)

    def figure(match: re.Match) -> str:
        name, caption = match.group(1), (match.group(2) or match.group(1)).strip()
        for suffix in FIGURE_TYPES:
            if (_docs / "figures" / f"{name}{suffix}").exists():
                return f"![{caption}]({posixpath.relpath(f'figures/{name}{suffix}', here or '.')})"
        return (f'!!! note "Figure: {caption}"\n    No picture of this figure is stored with the docs '
                f"(`docs/figures/{name}.png`). Run the recipe's command above: it writes the interactive "
                "figure as HTML next to its tables, and `vlmlens reproduce` puts every figure in one "
                "`report.html`.\n")

    def if_exists(match: re.Match) -> str:
        target = match.group(1)
        resolved = posixpath.normpath(posixpath.join(here, target))
        return match.group(2) if (_docs / resolved).exists() else (match.group(3) or "")

    return FIGURE.sub(figure, IF_EXISTS.sub(if_exists, markdown))
