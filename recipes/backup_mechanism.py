"""Experiment 6: criss-cross swaps with the vision order removed: the LM's backup mechanism (claim 2)."""
import vlmlens as vl
from vlmlens.study import backup_mechanism as experiment
from vlmlens.study import recipe_args

args = recipe_args(experiment)
result = experiment.run(vl.load(args.model, device=args.device, dtype=args.dtype), n=args.n, seed=args.seed)
print(result, f"\nwritten to {result.save(args.out)}")
