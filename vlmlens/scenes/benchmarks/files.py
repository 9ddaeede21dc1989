"""Reading benchmark files as their authors publish them, with errors that name the file and row or line."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from vlmlens.checks import count


def read_json_rows(path: str | Path, what: str, n: int | None = None) -> list[Any]:
    """The rows of a file holding one JSON list (the first ``n`` if given); ``what`` describes a row.

    >>> import json, tempfile, pathlib
    >>> file = pathlib.Path(tempfile.mkdtemp()) / "rows.json"; _ = file.write_text(json.dumps([[1], [2]]))
    >>> read_json_rows(file, "rows", n=1)
    [[1]]
    """
    path = Path(path)
    if n is not None:
        count("n", n, lowest=0)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; expected a JSON list of {what}")
    try:
        rows = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err}); expected a JSON list of {what}") from err
    if not isinstance(rows, list):
        raise ValueError(f"{path}: expected a JSON list of {what}, got a {type(rows).__name__}")
    return rows[:n] if n is not None else rows


def read_jsonl(path: str | Path, what: str, n: int | None = None) -> list[tuple[int, dict[str, Any]]]:
    """``(line number, record)`` for the JSON objects of a JSONL file, blank lines skipped (the first ``n``).

    >>> import tempfile, pathlib
    >>> file = pathlib.Path(tempfile.mkdtemp()) / "a.jsonl"; _ = file.write_text('{"a": 1}\\n\\n{"a": 2}\\n')
    >>> read_jsonl(file, "records")
    [(1, {'a': 1}), (3, {'a': 2})]
    """
    path = Path(path)
    if n is not None:
        count("n", n, lowest=0)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; expected a JSONL file of {what}")
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if n is not None and len(records) == n:
            break
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{number}: not valid JSON ({err}); expected one of {what} per line") from err
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{number}: expected a JSON object ({what}), got {line[:200]!r}")
        records.append((number, record))
    return records


def find_image(where: str, candidates: Sequence[Path]) -> Path:
    """The first of ``candidates`` that is a file, else a FileNotFoundError naming ``where`` and all of them.

    >>> find_image("rows.json[0]", [Path("/no/such.jpg")])
    Traceback (most recent call last):
    ...
    FileNotFoundError: rows.json[0]: image not found; looked for /no/such.jpg
    """
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{where}: image not found; looked for {', '.join(map(str, candidates))}")


def open_rgb(where: str, path: Path) -> Image.Image:
    """The image at ``path``, decoded into memory as plain RGB pixels (no file info, so a scene saved and loaded
    with ``vlmlens.scenes.save``/``load`` compares equal), the file closed again.

    >>> import tempfile, pathlib
    >>> file = pathlib.Path(tempfile.mkdtemp()) / "x.png"; Image.new("L", (4, 2)).save(file)
    >>> open_rgb("x", file).mode, open_rgb("x", file).size
    ('RGB', (4, 2))
    """
    try:
        with Image.open(path) as image:
            return Image.fromarray(np.asarray(image.convert("RGB")), "RGB")
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"{where}: cannot read image {path} ({err})") from err
