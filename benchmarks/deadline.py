"""A search with a deadline, per competition as shipped: what it gets done in `--timeout` seconds.

    python benchmarks/deadline.py --timeout 600 --competition competitions/uhcs-phase \\
        --competition competitions/faces-multihead --competition competitions/neg-pos --fixed

Each competition's spec is run as shipped (only the deadline and, if given, --data-root), in a
fresh run dir, alone, as a user runs it: `python -m harness search … --timeout S --quiet` in a
subprocess, timed from outside (`wall_s`: the whole command, Python's start included). Prints one
JSON object; per competition: the plan's line, rungs, folds a rung, floor, image sizes and
backbones, the recipe trial's CV, the best CV (and its budget), the ensemble's OOF score, trials
complete (all folds) / ranked on fewer folds / pruned / cut, complete trials per rung, the fewest
steps any complete trial trained (`min_steps`, against the floor), and the wall-clock against the
deadline. With `--fixed`, the same
for today's fixed-step search at equal wall-clock: the spec's steps as written, no plan, the
deadline cutting the trial in flight; when the recipe trial alone would take longer than the
deadline (its time estimated from the measured speed), the figure is that estimate and no search
is run for it (it would end with no complete trial).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional

from optuna.trial import TrialState

from harness import open_run, run_search
from harness.search import record
from harness.search.budget import recipe_speeds, trial_shape
from harness.search.loop import prepare_search
from harness.search.plan import trial_seconds
from harness.search.space import recipe_config
from harness.submit.submission import run_ensemble

EVERY_TRIAL = 10 ** 6  # the deadline ends the search, not a trial count


def search_figures(competition: str, run_dir: Path, timeout: float, data_root: Optional[str], fixed: bool) -> dict:
    run = open_run(competition, data_root=data_root, run_dir=str(run_dir))
    start = time.perf_counter()
    if fixed:  # the study made without a deadline: no plan, the spec's steps; in this process
        log: List[str] = []
        prepare_search(run, log.append)
        study = run_search(run, trials=EVERY_TRIAL, timeout=timeout - (time.perf_counter() - start), echo=log.append,
                           quiet=True)
        text = "\n".join(log)
    else:  # as a user runs it: the whole command timed from outside
        cmd = [sys.executable, "-m", "harness", "search", competition, "--run-dir", str(run_dir), "--trials",
               str(EVERY_TRIAL), "--timeout", f"{timeout:g}", "--quiet"] + (["--data-root", data_root] if data_root else [])
        text = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True).stdout
        study = None
    wall = time.perf_counter() - start
    (run_dir / "search.log").write_text(text + "\n")
    if study is None:
        from harness.search.storage import read_study
        study = read_study(run)
    k = run.spec.folds
    trials = study.get_trials(deepcopy=False)
    complete = record.whole_complete(study, k)
    ranked = [t for t in trials if t.state == TrialState.COMPLETE and not record.whole(t, k)]
    recipes = {t.number for t in trials if record.recipe(t)}  # a recipe ranked on a few folds, then widened
    recipe = next((t for t in complete if t.number in recipes or record.promoted_from(t) in recipes), None)
    best = record.best_whole(study, k)
    plan = record.plan(study)
    budgets = sorted({record.budget(t) for t in complete if record.budget(t)})
    out = {"competition": run.spec.name, "metric": run.spec.metric, "timeout": timeout,
           "wall_s": round(wall, 1), "wall_over_timeout": round(wall / timeout, 3),
           "plan": plan["line"] if plan else None, "rungs": plan["rungs"] if plan else None,
           "rung_folds": plan.get("folds") if plan else None, "floor": plan.get("floor") if plan else None,
           "image_sizes": plan.get("image_sizes") if plan else None, "backbones": plan.get("backbones") if plan else None,
           "pace": plan.get("pace") if plan else None,
           "complete": len(complete), "ranked_on_fewer_folds": len(ranked),
           "pruned": sum(t.state == TrialState.PRUNED for t in trials),
           "cut": sum(record.interrupted(t) for t in trials),
           "min_steps": min((record.budget(t) or 0 for t in complete + ranked), default=None),
           "complete_per_budget": {b: sum(record.budget(t) == b for t in complete) for b in budgets},
           "recipe_cv": round(recipe.value, 4) if recipe else None,
           "best_cv": round(best.value, 4) if best else None,
           "best_budget": record.budget(best) if best else None, "best_trial": best.number if best else None,
           "best_params": best.params if best else None,
           "lines": [line for line in text.splitlines() if line.startswith(("plan", "pace", "deadline", "trial ",
                                                                              "the next", "Error"))][-40:]}
    if complete:
        _, _, preds, ens = run_ensemble(run, echo=lambda line: None)
        out.update(ensemble_cv=round(ens.score, 4), ensemble_members=sorted(ens.weights),
                   ensemble_budgets=sorted({record.budget(t) for t in complete if str(t.number) in
                                            {str(n) for n in ens.weights}}))
    return out


def fixed_step_estimate(competition: str, run_dir: Path, data_root: Optional[str]) -> dict:
    """The recipe trial's seconds at the spec's steps, from the speed measured on this machine."""
    run = open_run(competition, data_root=data_root, run_dir=str(run_dir))
    data, study, storage, _ = prepare_search(run, lambda line: None)
    speeds = recipe_speeds(run, data)
    size = min(speeds)
    cfg = recipe_config(run, data, size)
    seconds = trial_seconds(speeds[size], cfg.steps, cfg.evals, trial_shape(run, data))
    return {"recipe_steps": cfg.steps, "image_size": size, "step_s": speeds[size].step,
            "recipe_trial_estimate_s": round(seconds, 1)}


def competition_figures(competition: str, base: Path, timeout: float, data_root: Optional[str], fixed: bool) -> dict:
    out = search_figures(competition, base / "planned", timeout, data_root, fixed=False)
    if fixed:
        estimate = fixed_step_estimate(competition, base / "estimate", data_root)
        if estimate["recipe_trial_estimate_s"] <= timeout:
            out["fixed_steps"] = {**estimate, **search_figures(competition, base / "fixed", timeout, data_root,
                                                               fixed=True)}
        else:
            out["fixed_steps"] = {**estimate, "complete": 0, "note": "the recipe trial alone outlasts the deadline"}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--competition", action="append", help="competition folder (repeatable; default digits)")
    parser.add_argument("--data-root", action="append", default=[], help="one per --competition, in order")
    parser.add_argument("--timeout", type=float, default=60.0, help="the deadline of each search, in seconds")
    parser.add_argument("--fixed", action="store_true", help="also today's fixed-step search at equal wall-clock")
    parser.add_argument("--keep", metavar="DIR", help="keep the run directories under DIR (default: a temp dir)")
    args = parser.parse_args()
    competitions = args.competition or ["competitions/digits"]
    roots = args.data_root + [None] * (len(competitions) - len(args.data_root))
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(args.keep or tmp)
        results = [competition_figures(c, base / f"{i}-{Path(c).name}", args.timeout, root, args.fixed)
                   for i, (c, root) in enumerate(zip(competitions, roots))]
    print(json.dumps({"timeout": args.timeout, "results": results}, indent=1))


if __name__ == "__main__":
    main()
