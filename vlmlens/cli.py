"""The `vlmlens` command line.

Example:
    $ vlmlens sites --model toy
"""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Spatial-reasoning interpretability for VLMs.")


@app.command()
def sites(model: str = typer.Option("toy", help="'toy', a Hugging Face id, or a local folder"),
          pattern: str | None = typer.Option(None,
                                             help="only sites matching this pattern, e.g. 'blocks.*.hook_resid_post'"),
          device: str | None = typer.Option(None)) -> None:
    """List a model's sites: name, documented shape, and the module behind it."""
    from vlmlens.models import load
    vlm = load(model, device=device)
    names = vlm.sites(pattern)
    width = max(map(len, names))
    typer.echo(repr(vlm))
    for name in names:
        spec = vlm.site(name)
        typer.echo(f"{name:<{width}}  [{spec.shape}]  {spec.module}.{spec.io}")
    typer.echo(f"{len(names)} sites")


@app.command("train-toy")
def train_toy(out: Path = typer.Option(Path("toy_checkpoint"), help="folder for the new checkpoint"),
              steps: int | None = typer.Option(None, help="training steps (default: the shipped recipe's)"),
              seed: int = typer.Option(0),
              init_from: Path | None = typer.Option(None, help="start from this checkpoint's weights")) -> None:
    """Train the toy VLM on synthetic scenes (CPU is fine; from scratch unless --init-from) and write it."""
    from vlmlens.models.toy import train_toy as run
    run(out, seed=seed, init_from=init_from, **({"steps": steps} if steps else {}))


@app.command()
def reproduce(model: str = typer.Option("toy", help="'toy', a Hugging Face id, or a local folder"),
              out: Path = typer.Option(Path("study_out"), help="folder for report.html, the CSVs and summary.json"),
              n: int | None = typer.Option(None, help="scenes (or pairs) per experiment; default: each one's own"),
              seed: int = typer.Option(0),
              device: str | None = typer.Option(None, help="e.g. cuda, cpu (default: cuda when available)"),
              dtype: str | None = typer.Option(None, help="e.g. bfloat16, float32"),
              benchmark: list[Path] = typer.Option(
                  [], help="a scene folder (vl.scenes.save of a loaded benchmark, e.g. What'sUp) to evaluate global "
                           "amplification on as well; repeatable")) -> None:
    """Run every experiment of the study and write one self-contained report.html (opens offline)."""
    from vlmlens.scenes import load as load_scenes
    from vlmlens.study import reproduce as run
    benchmarks = {folder.name: load_scenes(folder) for folder in benchmark}
    report = run(model, out=out, n=n, device=device, dtype=dtype, seed=seed, benchmarks=benchmarks)
    for claim in report.claims:
        typer.echo(claim["sentence"])
    typer.echo(f"{report.path} ({report.seconds['total']:.0f} s)")


if __name__ == "__main__":
    app()
