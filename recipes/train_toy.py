"""Train the shipped toy VLM and write it, with its model card, to ``--out``.

    python recipes/train_toy.py                          # reproduces vlmlens/models/toy_checkpoint
    python recipes/train_toy.py --out /tmp/toy --steps 200
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from vlmlens.models.toy import CHECKPOINT, train_toy  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=CHECKPOINT, help="checkpoint folder (default: the shipped one)")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: train_toy's)")
    parser.add_argument("--seed", type=int, default=0, help="initialisation and training seed")
    parser.add_argument("--init-from", type=Path, default=None, help="start from this checkpoint's weights")
    args = parser.parse_args()
    steps = {} if args.steps is None else {"steps": args.steps}
    results = train_toy(args.out, seed=args.seed, init_from=args.init_from, **steps)
    for name, row in results.items():
        print(f"{name:>12}: " + "  ".join(f"{k} {v:.3f}" for k, v in row.items()))


if __name__ == "__main__":
    main()
