"""Experiment 1 (Table 1): top-1 accuracy per task (squares, shapes, relation, naturalistic) and direction."""
import vlmlens as vl
from vlmlens.study import behaviour as experiment
from vlmlens.study import recipe_args

args = recipe_args(experiment)
result = experiment.run(vl.load(args.model, device=args.device, dtype=args.dtype), n=args.n, seed=args.seed)
print(result, f"\nwritten to {result.save(args.out)}")
