"""A store: the folder a resumable sweep writes its finished blocks to, so a rerun only does what is left.

A family of interventions is run in blocks (contiguous runs of the family, in its order); each finished
block is one safetensors file, written under a temporary name and renamed into place, so a killed run
leaves only whole blocks. ``manifest.json`` records what the sweep was (the model, a fingerprint of the
batch, of the family and of the baseline, the metric, the block size); opening the folder for any other
sweep is refused with an error naming what differs. ``family.json`` holds the labels and interventions,
``baselines.safetensors`` the clean (and corrupt) scores.

Example:
    >>> import vlmlens as vl
    >>> model = vl.load("toy")
    >>> batch = model.prepare(vl.scenes.generate(8, seed=0))
    >>> family = vl.grid(vl.Ablate, site="blocks.{layer}.hook_resid_post", layer=model.lm_layers)
    >>> effects = vl.sweep(model, batch, family, vl.LogitDiff(), store="runs/ablate", block=2, progress=False)
    >>> sorted(p.name for p in Path("runs/ablate").iterdir())[:3]
    ['baselines.safetensors', 'block-000000.safetensors', 'block-000001.safetensors']
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch import Tensor

FORMAT = "vlmlens-sweep-store"
VERSION = 1
MANIFEST, FAMILY, BASELINES = "manifest.json", "family.json", "baselines.safetensors"
_BLOCK = re.compile(r"block-(\d{6})\.safetensors")
#: what a store must agree on with a sweep, in the order an error names them, with what to do about each
_IDENTITY = {
    "model": "load the model the store was made with",
    "batch": "prepare the same examples",
    "family": "sweep the same interventions with the same labels",
    "metric": "score with the same metric",
    "baseline": "give the same baseline",
    "block": "leave block= out to take the store's",
}


def blocks(n: int, size: int) -> list[tuple[int, int]]:
    """The blocks of a family of ``n`` interventions: ``(start, stop)`` runs of ``size``, in order.

    Example:
        >>> blocks(5, 2)
        [(0, 2), (2, 4), (4, 5)]
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"block must be a positive number of interventions, got {size!r}")
    return [(start, min(start + size, n)) for start in range(0, n, size)]


def shard_blocks(n_blocks: int, shard: tuple[int, int] | None) -> list[int]:
    """The blocks shard ``(i, n)`` runs: every n-th from the i-th, so each shard gets early and late layers
    alike (None: all of them).

    Example:
        >>> shard_blocks(5, (1, 2)), shard_blocks(5, None)
        ([1, 3], [0, 1, 2, 3, 4])
    """
    if shard is None:
        return list(range(n_blocks))
    ok = isinstance(shard, tuple) and len(shard) == 2 and all(isinstance(v, int) for v in shard)
    if not ok or not 0 <= shard[0] < shard[1]:
        raise ValueError(f"shard must be (i, n) with 0 <= i < n, the i-th of n shards; got {shard!r}")
    return list(range(shard[0], n_blocks, shard[1]))


class Store:
    """One sweep's folder of finished blocks; see the module's docstring.

    ``Store(folder, identity, family)`` opens the folder for a sweep (``identity``: the manifest's fields,
    ``family``: labels and interventions), creating it when new and refusing it when it was made for
    another sweep. ``Store.read(folder)`` opens an existing store as it is.

    Example:
        >>> family = vl.grid(vl.Ablate, site="blocks.{layer}.hook_resid_post", layer=[0, 1, 2], region=["object"])
        >>> _ = vl.sweep(model, batch, family, vl.LogitDiff(), store="runs/ablate", block=2, progress=False)
        >>> store = Store.read("runs/ablate")
        >>> store.block, sorted(store.done()), store.blocks()
        (2, [0, 1], [(0, 2), (2, 3)])
    """

    def __init__(self, folder: str | Path, identity: dict[str, Any] | None = None,
                 family: dict[str, Any] | None = None):
        self.folder = Path(folder)
        self.manifest = self._read_manifest() if identity is None else self._open(identity, family or {})
        self.block: int = self.manifest["block"]

    @classmethod
    def read(cls, folder: str | Path) -> Store:
        return cls(folder)

    @staticmethod
    def block_of(folder: str | Path) -> int | None:
        """The block size of the store in ``folder``, or None where there is none yet."""
        return Store(folder).block if (Path(folder) / MANIFEST).exists() else None

    # -- what is there ------------------------------------------------------------------------
    def done(self) -> set[int]:
        """The indices of the finished blocks."""
        n_blocks = len(self.blocks())
        found = {int(m.group(1)) for p in self.folder.iterdir() if (m := _BLOCK.fullmatch(p.name))}
        extra = sorted(i for i in found if i >= n_blocks)
        if extra:
            raise ValueError(f"store {self.folder} holds blocks {extra} but its family has only {n_blocks}")
        return found

    def blocks(self) -> list[tuple[int, int]]:
        return blocks(self.manifest["family"]["interventions"], self.block)

    def family(self) -> dict[str, Any]:
        """The family's labels and interventions (``to_dict``), as the sweep that made the store gave them."""
        return json.loads((self.folder / FAMILY).read_text())

    def read_block(self, index: int) -> Tensor:
        """A finished block's values: ``(intervention, example)``."""
        start, stop = self.blocks()[index]
        values = load_file(self.folder / _block_name(index))["values"]
        expected = (stop - start, self.manifest["batch"]["examples"])
        if tuple(values.shape) != expected:
            raise ValueError(f"{self.folder / _block_name(index)} holds values of shape {tuple(values.shape)}, "
                             f"expected {expected}; the file is not this store's")
        return values

    def read_baselines(self) -> dict[str, Tensor] | None:
        """The clean (and ``corrupt``) scores, or None before they were written."""
        path = self.folder / BASELINES
        return load_file(path) if path.exists() else None

    # -- writing ------------------------------------------------------------------------------
    def write_block(self, index: int, values: Tensor) -> None:
        atomic(self.folder / _block_name(index), lambda tmp: save_file({"values": values.contiguous()}, tmp))

    def write_baselines(self, baselines: dict[str, Tensor]) -> None:
        tensors = {k: v.contiguous() for k, v in baselines.items()}
        atomic(self.folder / BASELINES, lambda tmp: save_file(tensors, tmp))

    # -- opening ------------------------------------------------------------------------------
    def _read_manifest(self) -> dict[str, Any]:
        path = self.folder / MANIFEST
        if not path.exists():
            raise FileNotFoundError(f"{self.folder} is not a vlmlens sweep store (no {MANIFEST}); "
                                    "make one with vl.sweep(..., store=folder)")
        manifest = json.loads(path.read_text())
        if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
            raise ValueError(f"{path} is not a version-{VERSION} vlmlens sweep store "
                             f"(format {manifest.get('format')!r}, version {manifest.get('version')!r})")
        return manifest

    def _open(self, identity: dict[str, Any], family: dict[str, Any]) -> dict[str, Any]:
        if self.folder.exists() and not (self.folder / MANIFEST).exists() and any(self.folder.iterdir()):
            raise FileExistsError(f"{self.folder} holds files but no {MANIFEST}: it is not a sweep store; "
                                  "give an empty or new folder")
        if not (self.folder / MANIFEST).exists():
            self.folder.mkdir(parents=True, exist_ok=True)
            atomic(self.folder / FAMILY, lambda tmp: Path(tmp).write_text(json.dumps(family, default=str)))
            manifest = {"format": FORMAT, "version": VERSION, **identity}
            _create(self.folder / MANIFEST, json.dumps(manifest, indent=1))  # a concurrent shard may win
        manifest = self._read_manifest()
        check_same(manifest, identity, f"store {self.folder}", "this sweep")
        return manifest


def check_same(have: Mapping[str, Any], want: Mapping[str, Any], have_name: str, want_name: str,
               fields: Mapping[str, str] = _IDENTITY, what: str = "sweep",
               remedy: str = "use another folder (or delete this one) to start afresh") -> None:
    """Raise an error naming every identity field where two manifests differ (``fields``: each field with
    what to do about it; a sweep's by default: model, batch, family, ...), then the ``remedy``.

    Example:
        >>> check_same({"metric": "a", "block": 2}, {"metric": "b", "block": 2}, "store x", "this sweep")
        Traceback (most recent call last):
        ...
        ValueError: store x was made for another sweep; its results are never mixed in:
          metric: store x has 'a', this sweep has 'b' (score with the same metric)
        use another folder (or delete this one) to start afresh
    """
    differ = [key for key in fields if have.get(key) != want.get(key)]
    if differ:
        lines = [f"  {key}: {have_name} has {have.get(key)!r}, {want_name} has {want.get(key)!r} "
                 f"({fields[key]})" for key in differ]
        raise ValueError(f"{have_name} was made for another {what}; its results are never mixed in:\n"
                         + "\n".join(lines) + f"\n{remedy}")


def _block_name(index: int) -> str:
    return f"block-{index:06d}.safetensors"


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def atomic(path: Path, write: Callable[[str], Any]) -> None:
    """Write a file under a temporary name (``write(temporary_path)``), then rename it into place: readers
    see all of it or none.

    Example:
        >>> atomic(Path("note.txt"), lambda tmp: Path(tmp).write_text("done"))
        >>> Path("note.txt").read_text()
        'done'
    """
    tmp = _temporary(path)
    try:
        write(str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _create(path: Path, text: str) -> None:
    """Write a file only where none is (atomically: a hard link of a finished temporary file)."""
    tmp = _temporary(path)
    try:
        tmp.write_text(text)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
    finally:
        tmp.unlink(missing_ok=True)


__all__ = ["Store", "atomic", "blocks", "check_same", "shard_blocks"]
