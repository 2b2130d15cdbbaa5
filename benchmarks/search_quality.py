"""Search quality: the recipe trial's CV against the best CV after a fixed number of trials, per competition.

    python benchmarks/search_quality.py                                   # digits, 4 trials
    python benchmarks/search_quality.py --competition competitions/uhcs-phase \
        --data-root ../shared/data/uhcs --trials 10 --set search.pretrained=false

Prints one JSON object: for each competition, the first recipe trial's CV (`recipe_cv`; every
recipe's in `recipes`), the best CV of the whole search (`best_cv`), which trial that was, how
many trials were pruned (and the first pruning note), and the seconds the search took. The issue's
targets (on a GPU, 15 minutes a competition) are read from these figures; no score is asserted.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from optuna.trial import TrialState

from harness import open_run, run_search


def quality(competition: str, run_dir: Path, trials: int, overrides, data_root=None,
            timeout=None) -> dict:
    run = open_run(competition, data_root=data_root, run_dir=str(run_dir), overrides=overrides)
    start = time.perf_counter()
    study = run_search(run, trials=trials, timeout=timeout, echo=lambda line: None)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    pruned = study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))
    recipes = [t for t in complete if t.user_attrs.get("recipe")]
    best = study.best_trial if complete else None
    return {"competition": run.spec.name, "metric": run.spec.metric, "trials": len(complete),
            "pruned": len(pruned), "pruned_note": pruned[0].user_attrs.get("pruned") if pruned else None,
            "seconds": round(time.perf_counter() - start, 1),
            "recipe": recipes[0].user_attrs["recipe"] if recipes else None,
            "recipe_cv": round(recipes[0].value, 4) if recipes else None,
            "recipes": {t.user_attrs["recipe"]: round(t.value, 4) for t in recipes},
            "best_cv": round(best.value, 4) if best else None, "best_trial": best.number if best else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--competition", action="append", help="competition folder (repeatable; default digits)")
    parser.add_argument("--data-root", action="append", default=[], help="one per --competition, in order")
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--timeout", type=float, help="seconds per competition (stop starting trials after)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--keep", metavar="DIR", help="keep the run directories under DIR (default: a temp dir)")
    args = parser.parse_args()
    competitions = args.competition or ["competitions/digits"]
    roots = args.data_root + [None] * (len(competitions) - len(args.data_root))
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(args.keep or tmp)
        results = [quality(c, base / str(i), args.trials, args.overrides, root, args.timeout)
                   for i, (c, root) in enumerate(zip(competitions, roots))]
    print(json.dumps({"trials": args.trials, "overrides": args.overrides, "results": results}, indent=1))


if __name__ == "__main__":
    main()
