"""The same search (fixed seed, fixed trial count) without and with pruning: wall-clock and best CV.

    python benchmarks/search_speed.py                                  # digits, 10 trials
    python benchmarks/search_speed.py --competition competitions/uhcs-phase --trials 30 --pruner median
    python benchmarks/search_speed.py --set search.steps=[20] --trials 4  # what a CPU can afford

Target (issue 6): the pruned search reaches the unpruned best CV within 0.01 in at most half the
wall-clock. Prints one JSON object with two readings of it: `time_ratio`, the pruned search's whole
wall-clock over the unpruned one's, and `reach_ratio`, the moment the pruned search's best first came
within 0.01 of the unpruned best, over the unpruned wall-clock. Each arm's `reach_seconds` is that
moment for the arm (the unpruned arm's is the baseline: both draw the same first, random, trials).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Optional

from optuna.study import StudyDirection
from optuna.trial import TrialState

from harness import open_run, run_search

TOLERANCE = 0.01  # "within 0.01 of the unpruned best CV"


def timed_search(competition: str, run_dir: Path, trials: int, overrides, data_root=None) -> dict:
    run = open_run(competition, data_root=data_root, run_dir=str(run_dir), overrides=overrides)
    started = datetime.now()
    start = time.perf_counter()
    study = run_search(run, trials=trials, echo=lambda line: None)
    seconds = time.perf_counter() - start
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    pruned = study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))
    # (seconds since the start, CV) of each complete trial, in the order they ended
    ends = sorted(((t.datetime_complete - started).total_seconds(), t.value) for t in complete)
    return {"pruner": run.spec.search.pruner, "seconds": round(seconds, 1),
            "best_cv": round(study.best_value, 4) if complete else None,
            "complete": len(complete), "pruned": len(pruned),
            "maximize": study.direction == StudyDirection.MAXIMIZE, "ends": ends}


def seconds_to_reach(ends, target: float, maximize: bool) -> Optional[float]:
    """When a search's best CV first came within reach of `target` (None: never)."""
    for seconds, value in ends:
        if (value >= target) if maximize else (value <= target):
            return seconds
    return None


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
    maximize, _ = plain.pop("maximize"), pruned.pop("maximize")
    plain_ends, pruned_ends = plain.pop("ends"), pruned.pop("ends")
    result = {"competition": args.competition, "trials": args.trials, "without": plain, "with": pruned}
    if plain["best_cv"] is not None and pruned["best_cv"] is not None:
        result["cv_gap"] = round(plain["best_cv"] - pruned["best_cv"], 4)
        result["time_ratio"] = round(pruned["seconds"] / plain["seconds"], 3)
        target = plain["best_cv"] - TOLERANCE if maximize else plain["best_cv"] + TOLERANCE
        # both arms draw the same first (random) trials, so the unpruned arm's own moment is the baseline
        for arm, ends in ((plain, plain_ends), (pruned, pruned_ends)):
            reach = seconds_to_reach(ends, target, maximize)
            arm["reach_seconds"] = None if reach is None else round(reach, 1)
        reach = pruned["reach_seconds"]
        result["reach_ratio"] = None if reach is None else round(reach / plain["seconds"], 3)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
