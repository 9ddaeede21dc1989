"""Experiment 4: criss-cross swaps of object tokens vs whole strips, per layer; flip rate (claim 1)."""
import vlmlens as vl
from vlmlens.study import criss_cross as experiment
from vlmlens.study import recipe_args

args = recipe_args(experiment)
result = experiment.run(vl.load(args.model, device=args.device, dtype=args.dtype), n=args.n, seed=args.seed)
print(result, f"\nwritten to {result.save(args.out)}")
