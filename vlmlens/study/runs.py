"""A reproduce run's folder: each finished experiment kept whole, with the settings that made it, so that a
rerun loads what is done and computes only what is left.

`Settings` is what every experiment of one run is given besides the model; its units of work are the
experiments' names, so an executor (`vlmlens.executors`: this process, or Ray workers with one model
replica each) runs them. `RunFolder` keeps ``out/<experiment>/result.pkl``: the experiment's whole
`StudyResult` (tables, figures, summary), its time, and the run's identity (the model with a digest of its
weights, n, seed, protocol, What'sUp folder, benchmarks). It is written after the experiment's CSVs, under
a temporary name and renamed into place, so a killed run leaves whole experiments only; a folder holding
results made with other settings is refused with an error naming each differing setting.

Within a run (`RunFolder.running`, and `experiment` around each experiment, as `Settings.run` does) an
experiment whose work splits into independent parts (criss-cross's and the removal's tasks) keeps each
part as it finishes with `chunk`, in ``out/<experiment>/chunks/<key>.pkl`` under the same identity, so a
killed experiment resumes from its finished parts; the chunks are deleted once its result is saved.
Outside a run (or on Ray workers, which share no folder with the driver) `chunk` just computes.

Example:
    >>> from vlmlens.executors import Local
    >>> settings = Settings(n=4)
    >>> folder = RunFolder("study_out", settings.identity(model))
    >>> for name, (result, seconds) in Local().results(model, settings, ["behaviour"]):
    ...     folder.save(name, result, seconds)
    >>> list(RunFolder("study_out", settings.identity(model)).finished)
    ['behaviour']
"""

from __future__ import annotations

import pickle
import re
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from tqdm.auto import tqdm

from vlmlens import fingerprint
from vlmlens.store import atomic, check_same
from vlmlens.study.common import StudyResult

if TYPE_CHECKING:
    from vlmlens.models.vlm import VLM
    from vlmlens.scenes import Scene

RESULT, CHUNKS = "result.pkl", "chunks"
FORMAT, CHUNK, VERSION = "vlmlens-study-result", "vlmlens-study-chunk", 1
T = TypeVar("T")
#: the experiments a What'sUp folder adds composites to
WHATSUP = ("behaviour", "position_probes", "criss_cross")
#: the experiments extra benchmarks are evaluated in
BENCHMARKED = ("global_amplification", "coco_amplification")
#: what a finished experiment must agree on with a rerun, in the order an error names them, with what to do
IDENTITY = {
    "model": "load the model the folder was made with",
    "weights": "load the checkpoint the folder was made with: the weights differ",
    "n": "give the same --n",
    "seed": "give the same --seed",
    "protocol": "give the same --protocol",
    "whatsup": "give the same --whatsup folder",
    "benchmarks": "give the same --benchmark folders",
}
REMEDY = "use another folder (--out), or recompute everything in this one (--fresh; fresh=True in Python)"


@dataclass(frozen=True)
class Settings:
    """What each experiment of a reproduce run is given besides the model: a unit of work (`Work`) is an
    experiment's name, its result ``(StudyResult, seconds)``.

    Example:
        >>> result, seconds = Settings(n=4).run(model, "behaviour")
        >>> result.name, list(result.tables)
        ('behaviour', ['accuracy', 'table1'])
    """

    n: int | None = None
    seed: int = 0
    protocol: str = "paper"
    whatsup: str | Path | None = None
    benchmarks: Mapping[str, Sequence[Scene]] | None = None

    def run(self, model: VLM, unit: str, bar: tqdm | None = None) -> tuple[StudyResult, float]:
        from vlmlens.study import EXPERIMENTS
        begun = time.time()
        extra: dict[str, Any] = {"benchmarks": self.benchmarks} if self.benchmarks and unit in BENCHMARKED else {}
        if self.whatsup is not None and unit in WHATSUP:
            extra["whatsup"] = self.whatsup
        with experiment(unit):
            result = EXPERIMENTS[unit].run(model, **({"n": self.n} if self.n else {}), seed=self.seed,
                                           protocol=self.protocol, **extra)
        if bar is not None:
            bar.update(self.rows(unit))
        return result, time.time() - begun

    def rows(self, unit: str) -> int:
        """One step of the progress bar per experiment."""
        return 1

    def identity(self, model: VLM) -> dict[str, Any]:
        """What a finished experiment records of its run (see `IDENTITY`)."""
        return {"model": fingerprint.of_model(model), "weights": fingerprint.of_weights(model), "n": self.n,
                "seed": self.seed, "protocol": self.protocol,
                "whatsup": None if self.whatsup is None else str(Path(self.whatsup).resolve()),
                "benchmarks": None if not self.benchmarks else {name: fingerprint.digest(list(scenes))
                                                                for name, scenes in self.benchmarks.items()}}


#: the run folder of the reproduce run in progress, with the experiment running in it (None between them)
_RUNNING: ContextVar[tuple[RunFolder, str | None] | None] = ContextVar("vlmlens_running", default=None)


class RunFolder:
    """A reproduce folder opened for a run of ``identity``: `finished` holds the experiments found done
    (name -> ``(StudyResult, seconds)``), `chunks` the finished parts of unfinished ones ((experiment, key)
    -> value); a folder with results of other settings is refused, or with ``fresh`` has them deleted."""

    def __init__(self, out: str | Path, identity: dict[str, Any], fresh: bool = False):
        self.folder, self.identity = Path(out), identity
        self.folder.mkdir(parents=True, exist_ok=True)
        self.finished: dict[str, tuple[StudyResult, float]] = {}
        self.chunks: dict[tuple[str, str], Any] = {}
        for path in sorted(self.folder.glob(f"*/{RESULT}")):
            if fresh:
                path.unlink()
                continue
            name = path.parent.name
            record = self._read(path, FORMAT, name)
            self.finished[name] = (record["result"], record["seconds"])
            shutil.rmtree(path.parent / CHUNKS, ignore_errors=True)  # a kill between the result and the cleanup
        for path in sorted(self.folder.glob(f"*/{CHUNKS}/*.pkl")):
            if fresh:
                path.unlink()
                continue
            self.chunks[path.parent.parent.name, path.stem] = self._read(path, CHUNK, path.parent.parent.name)["value"]

    @contextmanager
    def running(self) -> Iterator[RunFolder]:
        """Within: the experiments run (`experiment`) keep their parts (`chunk`) in this folder."""
        token = _RUNNING.set((self, None))
        try:
            yield self
        finally:
            _RUNNING.reset(token)

    def chunk(self, name: str, key: str, compute: Callable[[], T]) -> T:
        """Part ``key`` of experiment ``name``: as kept by an earlier run, else computed and kept."""
        if (name, key) in self.chunks:
            return self.chunks[name, key]
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", key):
            raise ValueError(f"chunk key {key!r} is not a file name; use letters, digits, '_', '.', '-'")
        value = compute()
        place = self.folder / name / CHUNKS
        place.mkdir(parents=True, exist_ok=True)
        record = {"format": CHUNK, "version": VERSION, "experiment": name, "identity": self.identity, "value": value}
        atomic(place / f"{key}.pkl", lambda tmp: Path(tmp).write_bytes(pickle.dumps(record)))
        self.chunks[name, key] = value
        return value

    def save(self, name: str, result: StudyResult, seconds: float) -> None:
        """Write the experiment's CSVs, then its whole result (the mark that it is finished)."""
        place = self.folder / name
        place.mkdir(parents=True, exist_ok=True)
        for key, table in result.tables.items():
            table.to_csv(place / f"{key}.csv", index=False)
        record = {"format": FORMAT, "version": VERSION, "experiment": name, "identity": self.identity,
                  "result": result, "seconds": seconds}
        atomic(place / RESULT, lambda tmp: Path(tmp).write_bytes(pickle.dumps(record)))
        shutil.rmtree(place / CHUNKS, ignore_errors=True)
        self.chunks = {at: value for at, value in self.chunks.items() if at[0] != name}

    def _read(self, path: Path, kind: str, name: str) -> dict[str, Any]:
        """A result or chunk record, refused unless it is one, of experiment ``name``, made by this run."""
        try:
            record = pickle.loads(path.read_bytes())
        except Exception as err:  # a file from elsewhere, or from a version whose classes moved
            raise ValueError(f"{path} cannot be read back ({type(err).__name__}: {err}); {REMEDY}") from err
        what = "result" if kind == FORMAT else "chunk"
        if not isinstance(record, dict) or record.get("format") != kind or record.get("version") != VERSION:
            raise ValueError(f"{path} is not a version-{VERSION} vlmlens study {what}; {REMEDY}")
        if record["experiment"] != name:
            raise ValueError(f"{path} holds a {what} of {record['experiment']!r}, not of {name!r} "
                             f"(was the folder renamed?); {REMEDY}")
        check_same(record["identity"], self.identity, str(path if kind == CHUNK else path.parent), "this run",
                   fields=IDENTITY, what="run", remedy=REMEDY)
        return record


@contextmanager
def experiment(name: str) -> Iterator[None]:
    """Within a run (`RunFolder.running`): experiment ``name`` is running, its `chunk` parts kept under it;
    outside one, nothing."""
    running = _RUNNING.get()
    token = _RUNNING.set((running[0], name)) if running else None
    try:
        yield
    finally:
        if token is not None:
            _RUNNING.reset(token)


def chunk(key: str, compute: Callable[[], T]) -> T:
    """``compute()``, or within a reproduce run the value an earlier, killed run kept for this part of the
    running experiment (`RunFolder.chunk`): ``key`` names the part (a task), unique in its experiment.

    Example:
        >>> chunk("squares", lambda: 1 + 1)  # outside a run: computed
        2
        >>> folder = RunFolder("study_out_chunks", {"n": 4})
        >>> with folder.running(), experiment("criss_cross"):
        ...     chunk("squares", lambda: 1 + 1), chunk("squares", lambda: 3)  # the second is the kept one
        (2, 2)
    """
    running = _RUNNING.get()
    if running is None or running[1] is None:
        return compute()
    return running[0].chunk(running[1], key, compute)


__all__ = ["RunFolder", "Settings", "chunk", "experiment"]
