"""The `vlmlens` command line.

Example:
    $ vlmlens sites --model toy
    $ vlmlens run criss_cross --n 64
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import typer

from vlmlens.checks import choice

PROTOCOL_HELP = ("paper: as the authors' code ran it (prompts, top-1 over the vocabulary, centred layouts, strip "
                 "bands); vlmlens: vlmlens's own")
WHATSUP_HELP = ("a folder of What'sUp Controlled_Images photos ({object}_left_of_{middle}.jpeg, ...): adds the study's "
                "What'sUp composites to behaviour, the position probes and criss-cross")
FRESH_HELP = "recompute everything, forgetting the experiments an earlier run finished in --out"
app = typer.Typer(add_completion=False, no_args_is_help=True, help="Spatial-reasoning interpretability for VLMs.")
#: what a user's mistake raises (a bad name, value, path or type): one line, not a traceback
USER_ERRORS = (ValueError, TypeError, LookupError, OSError)


def _one_line(command: Callable[..., None]) -> Callable[..., None]:
    """Run a command; a user's mistake prints ``Error: <message>`` and exits with status 2."""
    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> None:
        try:
            command(*args, **kwargs)
        except USER_ERRORS as err:
            typer.echo(f"Error: {err}", err=True)
            raise typer.Exit(2) from None
    return run


@app.command()
@_one_line
def sites(model: str = typer.Option("toy", help="'toy', a Hugging Face id, or a local folder"),
          pattern: str | None = typer.Option(None,
                                             help="only sites matching this pattern, e.g. 'blocks.*.hook_resid_post'"),
          device: str | None = typer.Option(None, help="e.g. cpu, cuda; 'meta': the architecture without weights "
                                                      "(instant, no memory)")) -> None:
    """List a model's sites: name, shape (with the model's sizes), and the module behind it."""
    from vlmlens.dims import sized_shape
    from vlmlens.models import load
    vlm = load(model, device=device)
    names = vlm.sites(pattern)
    width = max(map(len, names))
    typer.echo(repr(vlm))
    for name in names:
        spec = vlm.site(name)
        typer.echo(f"{name:<{width}}  [{sized_shape(vlm, name)}]  {spec.module}.{spec.io}")
    typer.echo(f"{len(names)} sites")


@app.command("train-toy")
@_one_line
def train_toy(organism: str = typer.Option("toy", help="which toy: toy, toy-sequence, toy-content, toy-background"),
              out: Path | None = typer.Option(None, help="folder for the new checkpoint (default: the shipped one)"),
              steps: int | None = typer.Option(None, min=1, help="training steps (default: the organism's recipe)"),
              seed: int = typer.Option(0),
              threads: int = typer.Option(2, min=1, help="CPU threads (results are reproducible for a fixed count)"),
              init_from: str | None = typer.Option(None, help="start from this checkpoint folder's (or toy's) weights")
              ) -> None:
    """Train a toy VLM on synthetic scenes (CPU is fine) and write it with its card; each toy starts where
    its recipe says (from scratch, or from the shipped toy's weights), unless --init-from. Rerun the same command
    to resume."""
    from vlmlens.models.toy import train_toy as run
    results = run(organism, out, steps=steps, seed=seed, threads=threads, init_from=init_from)
    for name, row in results.items():
        typer.echo(f"{name:>12}: " + "  ".join(f"{k} {v:.3f}" for k, v in row.items()))


def _experiment(name: str) -> ModuleType:
    """The study experiment called ``name`` (``criss-cross`` works too), or a ValueError naming the valid ones
    and the closest."""
    from vlmlens.study import EXPERIMENTS
    return EXPERIMENTS[choice("experiment", name.replace("-", "_"), EXPERIMENTS)]


@app.command("run")
@_one_line
def run_experiment(experiment: str = typer.Argument(..., help="behaviour, last_token_patching, position_probes, "
                                                              "grid_probes, criss_cross, remove_vision_order, "
                                                              "backup_mechanism, global_amplification, "
                                                              "coco_amplification, absolute_vs_relative or "
                                                              "patch_maps"),
                   model: str = typer.Option("toy", help="'toy', a Hugging Face id, or a local folder"),
                   n: int | None = typer.Option(None, min=1,
                                                help="scenes (or pairs); default: the experiment's own"),
                   seed: int = typer.Option(0),
                   out: Path | None = typer.Option(None, help="folder for its CSVs, summary.json and figures "
                                                              "(default: study_out/<experiment>)"),
                   device: str | None = typer.Option(None, help="e.g. cuda, cpu (default: cuda when available)"),
                   dtype: str | None = typer.Option(None, help="e.g. bfloat16, float32"),
                   protocol: str = typer.Option("paper", help=PROTOCOL_HELP),
                   whatsup: Path | None = typer.Option(None, help=WHATSUP_HELP)) -> None:
    """Run one experiment of the study, print its tables and write them (CSV, summary.json, HTML figures)."""
    from vlmlens.models import load
    from vlmlens.study.protocol import PROTOCOLS
    from vlmlens.study.runs import WHATSUP
    module = _experiment(experiment)
    choice("protocol", protocol, PROTOCOLS)
    if whatsup is not None and module.NAME not in WHATSUP:
        raise ValueError(f"--whatsup goes with {', '.join(WHATSUP[:-1])} or {WHATSUP[-1]}, not {module.NAME}")
    extra = {"whatsup": whatsup} if whatsup is not None else {}
    result = module.run(load(model, device=device, dtype=dtype), n=module.DEFAULT_N if n is None else n,
                        seed=seed, protocol=protocol, **extra)
    typer.echo(str(result))
    typer.echo(f"written to {result.save(out or Path('study_out') / module.NAME)}")


@app.command()
@_one_line
def reproduce(model: str = typer.Option("toy", help="'toy', a Hugging Face id, or a local folder"),
              out: Path = typer.Option(Path("study_out"), help="folder for report.html, the CSVs and summary.json"),
              n: int | None = typer.Option(None, min=1,
                                           help="scenes (or pairs) per experiment; default: each one's own"),
              seed: int = typer.Option(0),
              device: str | None = typer.Option(None, help="e.g. cuda, cpu (default: cuda when available)"),
              dtype: str | None = typer.Option(None, help="e.g. bfloat16, float32"),
              benchmark: list[Path] = typer.Option(
                  [], help="a scene folder (vl.scenes.save of a loaded benchmark, e.g. What'sUp) to evaluate global "
                           "amplification on as well; repeatable"),
              protocol: str = typer.Option("paper", help=PROTOCOL_HELP),
              whatsup: Path | None = typer.Option(None, help=WHATSUP_HELP),
              experiment: list[str] = typer.Option([], help="an experiment to run (repeatable; default: all)"),
              workers: int | None = typer.Option(None, min=1, help="run the experiments on this many Ray workers, "
                                                                   "one model replica each (needs Ray: the "
                                                                   "'distributed' extra)"),
              fresh: bool = typer.Option(False, help=FRESH_HELP)) -> None:
    """Run every experiment of the study and write one self-contained report.html (opens offline).

    Each finished experiment is kept in OUT/<experiment>/result.pkl: rerunning the same command after a kill
    loads those and computes only the rest; a folder made with other settings is refused (another --out, or
    --fresh)."""
    from vlmlens.scenes import load as load_scenes
    from vlmlens.study import reproduce as run
    benchmarks = {folder.name: load_scenes(folder) for folder in benchmark}
    report = run(model, out=out, n=n, device=device, dtype=dtype, seed=seed, benchmarks=benchmarks,
                 protocol=protocol, whatsup=whatsup, experiments=[_experiment(e).NAME for e in experiment] or None,
                 workers=workers, fresh=fresh)
    for claim in report.claims:
        typer.echo(claim["sentence"])
    typer.echo(f"{report.path} ({report.seconds['total']:.0f} s)")


@app.command("compare")
@_one_line
def compare_runs(folders: list[Path] = typer.Argument(..., help="folders written by `vlmlens reproduce --out`"),
                 out: Path = typer.Option(Path("compare.html"), help="the page to write"),
                 label: list[str] = typer.Option([], help="a name per folder, in order (default: each one's model)")
                 ) -> None:
    """Set several reproduce runs side by side on one HTML page: Table 1, Table 5, flip-rate and last-token curves,
    probe accuracies, the claims' verdicts."""
    from vlmlens.study.compare import compare
    typer.echo(str(compare(folders, out=out, labels=label or None)))


@app.command("validate")
@_one_line
def validate_organisms(out: Path = typer.Option(Path("validation"), help="folder for each organism's run and "
                                                                         "validation.html"),
                       n: int | None = typer.Option(None, help="scenes (or pairs) per experiment; default: each "
                                                               "one's own"),
                       seed: int = typer.Option(0),
                       organism: list[str] = typer.Option([], help="an organism to validate (repeatable; default: "
                                                                   "all)"),
                       protocol: str = typer.Option("paper", help=PROTOCOL_HELP),
                       strict: bool = typer.Option(False, help="exit with status 1 if any planted outcome is "
                                                               "contradicted"),
                       everything: bool = typer.Option(False, help="run every experiment on each organism, not only "
                                                                   "those its expectations read"),
                       fresh: bool = typer.Option(False, help=FRESH_HELP)) -> None:
    """Run the study on every model organism and grade what it recovers against what training planted."""
    from vlmlens.study.validate import validate
    result = validate(out=out, n=n, seed=seed, organisms=organism or None, protocol=protocol, everything=everything,
                      fresh=fresh)
    typer.echo(result.table.drop(columns="note").to_string(index=False))
    missed = result.table[(result.table.status != "recovered") & (result.table.note != "")]
    for row in missed.drop_duplicates(["organism", "measure"]).itertuples():
        typer.echo(f"note on {row.organism} {row.measure}: {row.note}")
    typer.echo(str(result.path))
    if strict and len(result.contradicted):
        raise typer.Exit(1)


if __name__ == "__main__":
    app()
