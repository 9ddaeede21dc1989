"""The `vlmlens` command line.

Example:
    $ vlmlens sites --model toy
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Spatial-reasoning interpretability for VLMs.")


@app.command()
def sites(model: str = typer.Option("toy", help="'toy', a Hugging Face id, or a local folder"),
          pattern: Optional[str] = typer.Option(None, help="only sites matching this pattern, e.g. 'blocks.*.hook_resid_post'"),
          device: Optional[str] = typer.Option(None)) -> None:
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
              steps: Optional[int] = typer.Option(None, help="training steps (default: the shipped recipe's)"),
              seed: int = typer.Option(0)) -> None:
    """Train the toy VLM from scratch on synthetic scenes (CPU is fine) and write its checkpoint."""
    from vlmlens.models.toy import train_toy as run
    run(out, seed=seed, **({"steps": steps} if steps else {}))


if __name__ == "__main__":
    app()
