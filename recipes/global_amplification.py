"""Experiment 7: scale the probe-found spatial component over image tokens vs controls; fix rate (claim 3)."""
import vlmlens as vl
from vlmlens.study import global_amplification as experiment
from vlmlens.study import recipe_args

args = recipe_args(experiment)
result = experiment.run(vl.load(args.model, device=args.device, dtype=args.dtype), n=args.n, seed=args.seed)
print(result, f"\nwritten to {result.save(args.out)}")
