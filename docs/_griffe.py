"""A Griffe extension for the API pages: vlmlens docstrings put their runnable examples under
``Example:`` (or bare ``>>>`` lines); Google style renders only ``Examples:`` sections as code. This turns
both into ``Examples:`` sections, leaving the docstrings themselves as the project writes them."""

from __future__ import annotations

import re
from typing import Any

import griffe

HEADER = re.compile(r"^(\s*)Examples?:\s*$")


def normalise(text: str) -> str:
    """``Example:`` -> ``Examples:``; a bare ``>>>`` block at the docstring's left margin gets a header."""
    out: list[str] = []
    lines = text.splitlines()
    in_bare = False
    for i, line in enumerate(lines):
        header = HEADER.match(line)
        if header:
            out.append(f"{header.group(1)}Examples:")
            in_bare = False
            continue
        if line.startswith(">>>"):
            if not in_bare:
                previous = next((p for p in reversed(out) if p.strip()), "")
                if not HEADER.match(previous) and not previous.startswith("    "):
                    out.append("Examples:")
                in_bare = True
            out.append("    " + line)
            continue
        if in_bare and line.strip():
            out.append("    " + line)  # the expected output of the example above
            continue
        if in_bare and not line.strip():
            following = next((n for n in lines[i + 1:] if n.strip()), "")
            in_bare = following.startswith(">>>")
        out.append(line)
    return "\n".join(out)


class DoctestExamples(griffe.Extension):
    def on_object(self, *, obj: Any, **kwargs: Any) -> None:
        if obj.docstring is not None and ">>>" in obj.docstring.value:
            obj.docstring.value = normalise(obj.docstring.value)
