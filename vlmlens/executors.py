"""Executors: where the blocks of a sweep run, in this process (`Local`) or on a Ray cluster (`Ray`).

An executor runs the units of some `Work` (anything with ``run(model, unit, bar)`` and ``rows(unit)``)
and yields each result as it finishes, so the caller can write it to its store at once. A `Job` is what a
sweep computes, without the model: the batch, the family's interventions, the metric, the baseline; its
units are the family's blocks, ``(start, stop)``, and ``None``, the baselines (the clean scores and, with a
baseline, the corrupt ones). The study's `reproduce` gives whole experiments as units
(`vlmlens.study.runs.Settings`).

`Ray` (``pip install "vlmlens[distributed]"``) starts one worker per GPU of the cluster (or per CPU where
it has none), each loading its own replica of the model from ``model.name`` in the model's dtype, and
hands every worker the next unit as it finishes one. Call ``ray.init(address=...)`` first to use a
running cluster; otherwise a local one is started.

Example:
    >>> import vlmlens as vl
    >>> model = vl.load("toy")
    >>> batch = model.prepare(vl.scenes.generate(8, seed=0))
    >>> family = vl.grid(vl.Ablate, site="blocks.{layer}.hook_resid_post", layer=model.lm_layers)
    >>> effects = vl.sweep(model, batch, family, vl.LogitDiff(), executor=Local(), progress=False)
    >>> effects.values.shape
    torch.Size([4, 8])
"""

from __future__ import annotations

import dataclasses
import functools
import io
import pickle
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from torch import Tensor
from tqdm.auto import tqdm

from vlmlens import engine
from vlmlens.batch import Batch
from vlmlens.interventions import Intervention, flatten
from vlmlens.metrics import as_metric

if TYPE_CHECKING:
    from vlmlens.models.vlm import VLM

#: a unit of work: for a sweep a block of the family, ``(start, stop)``, or None (the baselines)
Unit = Hashable
#: each unit with its result (e.g. a block's values, or the baselines), as it finishes
Results = Iterator[tuple[Unit, Any]]


class Work(Protocol):
    """What an executor runs: ``run`` computes one unit on a model (advancing ``bar``), ``rows`` is how much
    a unit advances the progress bar. Packed (`pack`) for a worker, so it holds no model."""

    def run(self, model: VLM, unit: Any, bar: tqdm | None = None) -> Any: ...

    def rows(self, unit: Any) -> int: ...


@dataclass
class Job:
    """What a sweep computes, model aside: ``groups`` are the family's interventions, flattened.

    Example:
        >>> job = Job(batch, [[vl.Ablate("hook_embed", region="object")]], vl.LogitDiff())
        >>> job.run(model, (0, 1)).shape, job.run(model, None)["clean"].shape
        (torch.Size([1, 16]), torch.Size([16]))
    """

    batch: Batch
    groups: list[list[Intervention]]
    metric: Callable[..., Tensor]
    baseline: Batch | Intervention | None = None
    max_batch: int | None = None

    def run(self, model: VLM, unit: Unit, bar: tqdm | None = None) -> Any:
        """A block's values ``(intervention, example)``, or for ``None`` the baselines ``{"clean", "corrupt"}``."""
        read = self.reader(model)
        if unit is not None:
            return engine.run(model, self.batch, self.groups[unit[0]:unit[1]], read, max_batch=self.max_batch, bar=bar)
        values = engine.run(model, self.batch, [[], *self.corrupting()], read, max_batch=self.max_batch, bar=bar,
                            score=self.scored())
        return {"clean": values[0]} | ({"corrupt": values[1]} if self.baseline is not None else {})

    def corrupting(self) -> list[list[Intervention]]:
        """The group of a baseline intervention (the corrupt run), or none."""
        return [flatten(self.baseline)] if isinstance(self.baseline, Intervention) else []

    def scored(self) -> Batch | None:
        """A baseline batch, which the engine scores unedited (`vlmlens.engine.run`'s ``score``), or None."""
        return self.baseline if isinstance(self.baseline, Batch) else None

    def reader(self, model: VLM) -> engine.Read:
        """The engine's ``read``: the metric's score of each group's answer logits."""
        score = as_metric(self.metric)

        def read(logits: Tensor, sub: Batch, unedited: Tensor | None) -> Tensor:
            return score(logits, sub, model, unedited)

        read.needs_unedited = score.needs_unedited  # type: ignore[attr-defined]
        return read

    def rows(self, unit: Unit) -> int:
        """How many rows (examples times groups) a unit runs, for progress bars."""
        if unit is not None:
            return (unit[1] - unit[0]) * len(self.batch)
        return len(self.batch) * (2 if self.baseline is not None else 1)


@dataclass(frozen=True)
class Local:
    """Run every unit in this process, one after the other, on the sweep's own model.

    Example:
        >>> Local()
        Local()
    """

    def results(self, model: VLM, job: Work, units: Sequence[Unit], bar: tqdm | None = None) -> Results:
        for unit in units:
            yield unit, job.run(model, unit, bar)


@dataclass(frozen=True)
class Ray:
    """Run units on a Ray cluster: ``workers`` model replicas (default: one per GPU of the cluster, or
    one per CPU where it has no GPU), each given the next unit as it finishes one.

    Example:
        >>> Ray(workers=2)
        Ray(workers=2)
    """

    workers: int | None = None

    def results(self, model: VLM, job: Work, units: Sequence[Unit], bar: tqdm | None = None) -> Results:
        if not units:
            return
        ray = _import_ray()
        if not model.name:
            raise ValueError("Ray workers load the model from model.name, which is empty; load the model with "
                             "vl.load(<a hub id or a folder>)")
        if not ray.is_initialized():
            ray.init()
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        n = max(1, min(self.workers or gpus or int(resources.get("CPU", 1)), len(units)))
        worker = ray.remote(**({"num_gpus": 1} if gpus else {"num_cpus": 1}))(_Worker)
        payload = ray.put(pack(job))
        dtype = str(model.hf.dtype).removeprefix("torch.")
        actors = [worker.remote(model.name, dtype, payload) for _ in range(n)]
        queue, pending = list(units), {}
        try:
            for actor in actors:
                if queue:
                    unit = queue.pop(0)
                    pending[actor.run.remote(unit)] = (unit, actor)
            while pending:
                [ref], _ = ray.wait(list(pending), num_returns=1)
                unit, actor = pending.pop(ref)
                result = ray.get(ref)
                if queue:
                    following = queue.pop(0)
                    pending[actor.run.remote(following)] = (following, actor)
                if bar is not None:
                    bar.update(job.rows(unit))
                yield unit, result
        finally:
            for actor in actors:
                ray.kill(actor)


def executor_for(executor: str | Local | Ray) -> Local | Ray:
    """An executor from its name (``"local"``, ``"ray"``) or itself.

    Example:
        >>> executor_for("ray")
        Ray(workers=None)
    """
    if isinstance(executor, (Local, Ray)):
        return executor
    named = {"local": Local, "ray": Ray}
    if executor not in named:
        raise ValueError(f"unknown executor {executor!r}; use 'local', 'ray' or vlmlens.executors.Ray(workers=...)")
    return named[executor]()


class _Worker:
    """A Ray actor: one model replica, loaded once, running the units it is given."""

    def __init__(self, name: str, dtype: str, payload: bytes):
        from vlmlens.models import load
        self.model = load(name, dtype=dtype)
        self.job: Work = unpack(payload, self.model)

    def run(self, unit: Unit) -> Any:
        return self.job.run(self.model, unit)


# -- sending a job to another process -------------------------------------------------------------

def pack(job: Work) -> bytes:
    """A job (any `Work`) as bytes for another process: batches (the job's and its sources') travel without their
    model-bound input selector, and tensors on the CPU.

    Example:
        >>> job = Job(batch, [[vl.Patch("hook_embed", source=batch)]], vl.LogitDiff())
        >>> unpack(pack(job), model).groups[0][0].source.inputs["input_ids"].equal(batch.inputs["input_ids"])
        True
    """
    buffer = io.BytesIO()
    _packer()(buffer).dump(job)
    return buffer.getvalue()


def unpack(payload: bytes, model: VLM) -> Any:
    """A packed job, its batches bound to ``model`` (its input selector, its device)."""
    return _Unpacker(io.BytesIO(payload), model).load()


@functools.cache
def _packer() -> type:
    """A pickler that sends batches by their fields, made on first use (on cloudpickle, which Ray brings, so
    that a metric may be a lambda or a local function)."""
    try:
        import cloudpickle
    except ImportError:
        try:
            from ray import cloudpickle
        except ImportError:
            cloudpickle = pickle
    base = cloudpickle.Pickler

    class Packer(base):  # type: ignore[misc, valid-type]
        def __init__(self, file: io.BytesIO):
            super().__init__(file)
            self.seen: set[int] = set()

        def persistent_id(self, obj: Any) -> Any:
            if isinstance(obj, Batch):
                if id(obj) in self.seen:  # the same batch again (e.g. a source that is the batch): once
                    return ("batch", id(obj), None)
                self.seen.add(id(obj))
                fields = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if f.name != "select_inputs"}
                fields["inputs"] = obj.to("cpu").inputs
                return ("batch", id(obj), fields)
            if isinstance(obj, Tensor) and obj.device.type != "cpu":
                return ("tensor", obj.detach().cpu())
            return None

    return Packer


class _Unpacker(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, model: VLM):
        super().__init__(file)
        self.model, self.batches = model, {}

    def persistent_load(self, pid: Any) -> Any:
        kind, *rest = pid
        if kind == "tensor":
            return rest[0]
        token, fields = rest
        if fields is not None:
            batch = Batch(**fields, select_inputs=self.model.adapter.select_inputs)
            self.batches[token] = batch.to(self.model.device)
        return self.batches[token]


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as err:
        raise ImportError('Ray workers (vl.sweep(..., executor="ray"), vlmlens reproduce --workers) need Ray: '
                          'pip install "vlmlens[distributed]"') from err
    return ray
