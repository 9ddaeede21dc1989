"""Experiment 3: position probes on object tokens at the LM's image input, applied to every patch (the strips)."""
import vlmlens as vl
from vlmlens.study import position_probes as experiment
from vlmlens.study import recipe_args

args = recipe_args(experiment)
result = experiment.run(vl.load(args.model, device=args.device, dtype=args.dtype), n=args.n, seed=args.seed)
print(result, f"\nwritten to {result.save(args.out)}")
