"""Train a toy VLM (the plain toy or a model organism) and write it, with its model card, to ``--out``.

    python recipes/train_toy.py                                   # reproduces vlmlens/models/toy/checkpoints/toy
    python recipes/train_toy.py --organism toy-content            # reproduces .../checkpoints/toy-content
    python recipes/train_toy.py --out /tmp/toy --steps 200
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from vlmlens.models.toy import ORGANISMS, train_toy  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--organism", default="toy", choices=list(ORGANISMS), help="which toy to train")
    parser.add_argument("--out", type=Path, default=None, help="checkpoint folder (default: the shipped one)")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the organism's)")
    parser.add_argument("--seed", type=int, default=0, help="initialisation and training seed")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (reproducible for a fixed count)")
    parser.add_argument("--init-from", type=Path, default=None, help="start from this checkpoint's weights")
    args = parser.parse_args()
    results = train_toy(args.organism, args.out, steps=args.steps, seed=args.seed, threads=args.threads,
                        init_from=args.init_from)
    for name, row in results.items():
        print(f"{name:>12}: " + "  ".join(f"{k} {v:.3f}" for k, v in row.items()))


if __name__ == "__main__":
    main()
