"""The same search (fixed seed, fixed trial count) without and with pruning: wall-clock and best CV.

    python benchmarks/search_speed.py                                  # digits, 10 trials
    python benchmarks/search_speed.py --competition competitions/uhcs-phase --trials 30 --pruner median
    python benchmarks/search_speed.py --set search.epochs=[2] --trials 4  # what a CPU can afford

Target (issue 6): the pruned search reaches the unpruned best CV within 0.01 in at most half the
wall-clock. Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from optuna.trial import TrialState

from harness import open_run, search


def timed_search(competition: str, run_dir: Path, trials: int, overrides, data_root=None) -> dict:
    run = open_run(competition, data_root=data_root, run_dir=str(run_dir), overrides=overrides)
    start = time.perf_counter()
    study = search(run, trials=trials, echo=lambda line: None)
    seconds = time.perf_counter() - start
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    pruned = study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))
    return {"pruner": run.spec.search.pruner, "seconds": round(seconds, 1),
            "best_cv": round(study.best_value, 4) if complete else None,
            "complete": len(complete), "pruned": len(pruned)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--competition", default="competitions/digits")
    parser.add_argument("--data-root")
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--pruner", default="median")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        # the digits data is materialised once and shared by both runs
        shared = ["data_root=" + str(Path(tmp) / "data")] if "digits" in args.competition else []
        runs = [timed_search(args.competition, Path(tmp) / pruner, args.trials,
                             args.overrides + shared + [f"search.pruner={pruner}"], args.data_root)
                for pruner in ("none", args.pruner)]
    plain, pruned = runs
    result = {"competition": args.competition, "trials": args.trials, "without": plain, "with": pruned}
    if plain["best_cv"] is not None and pruned["best_cv"] is not None:
        result["cv_gap"] = round(plain["best_cv"] - pruned["best_cv"], 4)
        result["time_ratio"] = round(pruned["seconds"] / plain["seconds"], 3)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
