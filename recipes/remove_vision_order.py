"""Experiment 5 (Table 5): reference-image substitution at the LM input, and plain ablations (claim 1)."""
import vlmlens as vl
from vlmlens.study import recipe_args
from vlmlens.study import remove_vision_order as experiment

args = recipe_args(experiment)
result = experiment.run(vl.load(args.model, device=args.device, dtype=args.dtype), n=args.n, seed=args.seed)
print(result, f"\nwritten to {result.save(args.out)}")
