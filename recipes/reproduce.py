"""Every experiment of the study on one model, and one self-contained report.html (same as `vlmlens reproduce`)."""
import argparse

from vlmlens.study import reproduce

parser = argparse.ArgumentParser(description=__doc__)
for flag, default in (("--model", "toy"), ("--out", "study_out"), ("--device", None), ("--dtype", None)):
    parser.add_argument(flag, default=default)
parser.add_argument("--n", type=int, default=None)
args = parser.parse_args()
report = reproduce(args.model, out=args.out, n=args.n, device=args.device, dtype=args.dtype)
print("\n".join(c["sentence"] for c in report.claims), f"\n{report.path} ({report.seconds['total']:.0f} s)")
