"""Experiment 2: patch the counterfactual's final-token residual into the clean run per layer; P(each candidate)."""
import vlmlens as vl
from vlmlens.study import last_token_patching as experiment
from vlmlens.study import recipe_args

args = recipe_args(experiment)
result = experiment.run(vl.load(args.model, device=args.device, dtype=args.dtype), n=args.n, seed=args.seed)
print(result, f"\nwritten to {result.save(args.out)}")
