"""A search with a deadline (`--timeout`): its plan made from measured speed, the clock that keeps it,
and the pace check that corrects it.

Before the first trial of a new study searched with a deadline, the models it may train are timed on
this machine (a few optimizer steps each, `training/speed.py`, kept in the run dir's speed.json):
the first recipe's backbone from the largest image size down until a whole trial of the learning
floor fits its share, then the spec's other backbones at that size. The plan is made from those
seconds (`plan.py`), said in one line and kept on the study: a resume keeps its budgets, whatever
its own deadline. What runs next is the scheduler's (`schedulers.py`: successive halving).

The deadline counts from the command's start (`cli.command_started`), not from when the harness got
to it. After each complete trial its seconds are held against what its measured speed said
(`check_pace`): the plan's seconds follow what trials take, and a measurement the trials contradict
by more than `PACE_FACTOR` is corrected in speed.json, in one line.
"""
from __future__ import annotations

import json
import statistics
import time
from dataclasses import replace
from typing import Callable, Dict, List, Optional

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from ..config.paths import Run
from ..data.prepare import SearchData
from ..files import write_file
from ..training.augment import tta_views
from ..training.datasets import FoldData
from ..training.measured import Speed, read_speeds
from ..training.speed import measured_speed, speed_key
from . import record
from .plan import Plan, TrialShape, learning_floor, make_plan, speed_name
from .space import backbone_of, recipe_config

PACE_FACTOR = 1.5  # trials this many times slower (or faster) than measured: the measurement is corrected
SAFETY = 1.1  # a trial starts only when this many times its estimate is left: a trial that starts, ends
def plan_search(run: Run, data: SearchData, study: optuna.Study, deadline: Optional[float],
                echo: Callable[[str], None], timeout: Optional[float] = None) -> Optional[Plan]:
    """The study's plan: the one it keeps, else, for a new study searched with a `deadline` (a
    time.time()), one made from measured speed for the seconds left once they are measured (and kept
    on the study). None for a search without a plan (no deadline, or a study started without one:
    its budgets stay as the spec says). `timeout`: the whole deadline's seconds, for its messages."""
    kept = record.plan(study)
    if kept is not None:
        return Plan.from_dict(kept)
    if deadline is None:
        return None
    if study.get_trials(deepcopy=False):
        echo("this study was started without --timeout: its budgets stay as the spec says; the deadline cuts "
             "the trial in flight")
        return None
    plan = measured_plan(run, data, deadline, timeout)
    record.set_plan(study, plan.to_dict())
    return plan


def measured_plan(run: Run, data: SearchData, deadline: float, timeout: Optional[float] = None) -> Plan:
    """A plan for the seconds left until `deadline`, timing the models it weighs (kept in speed.json)."""
    shape = trial_shape(run, data)
    first = recipe_config(run, data, max(run.spec.search.image_size))
    floor = learning_floor(shape.train_images, first.batch_size, bool(first.pretrained))
    backbones = planned_backbones(run, first.backbone)

    def speed_of(backbone: str, size: int) -> Speed:
        return model_speed(run, data, backbone, size)

    plan = None
    for _ in range(2):  # again once measured, with the seconds then left (the speeds are kept: read back)
        left = deadline - time.time()
        spent = 0.0 if timeout is None else max(0.0, timeout - left)
        plan = make_plan(run.spec.search, shape, speed_of, left, backbones, floor, spent)
        if deadline - time.time() >= left - 0.02 * left:
            break
    return replace(plan, family=first.model_family)


def planned_backbones(run: Run, recipe_model: str) -> List[str]:
    """The spec's backbones, the first recipe's (`recipe_model`, its model) first: what the plan is timed with."""
    first = backbone_of(recipe_model)
    return [first] + [b for b in run.spec.search.backbones if b != first]


def model_speed(run: Run, data: SearchData, backbone: str, size: int) -> Speed:
    """The first recipe's speed on `backbone` at `size` on this machine (measured once per machine)."""
    cfg = recipe_config(run, data, size, backbone)
    images, _ = data.images(size, run.paths.cache_dir)
    aux = data.aux_masks(size, run.paths.cache_dir) if cfg.aux_weight else None
    fold = FoldData(images, data.y, np.flatnonzero(data.fold != 0), np.flatnonzero(data.fold == 0), aux)
    return measured_speed(cfg, data.task, fold, run.paths.speed_json)


def recipe_speeds(run: Run, data: SearchData) -> Dict[int, Speed]:
    """The first recipe's speed on this machine at each of the spec's image sizes."""
    backbone = backbone_of(recipe_config(run, data, max(run.spec.search.image_size)).backbone)
    return {size: model_speed(run, data, backbone, size) for size in sorted(set(run.spec.search.image_size))}


def speed_lines(run: Run, data: SearchData) -> List[str]:
    """The speeds measured in this run dir for the recipe's model on this machine, one line each."""
    known = read_speeds(run.paths.speed_json)
    lines = []
    for size in sorted(set(run.spec.search.image_size)):
        cfg = recipe_config(run, data, size)
        if speed_key(cfg) in known:
            lines.append("speed: " + Speed(**known[speed_key(cfg)]).line(cfg))
    return lines


def trial_shape(run: Run, data: SearchData) -> TrialShape:
    s, k = run.spec.search, run.spec.folds
    return TrialShape(folds=k, val_images=len(data.fold) / k, views=len(tta_views(run.spec.orientation)) if s.tta else 1,
                      train_images=len(data.fold) * (k - 1) / k)


# --- the clock -----------------------------------------------------------------------------------

def trial_model(trial: FrozenTrial) -> Optional[str]:
    """The backbone a trial trains (its drawn model's encoder), as the plan keys its speeds."""
    model = next((trial.params[k] for k in ("backbone", "model", "mask_model") if k in trial.params), None)
    return None if model is None else backbone_of(str(model))


def promoted_seconds(trial: FrozenTrial, plan: Plan, steps: int, folds: Optional[int] = None) -> float:
    """About how long `trial` takes again at `steps` a fold on `folds` folds (None: all): its own
    seconds a fold, scaled by the steps, for the folds it must train (the same steps on more folds
    read its finished ones back). A trial that kept no seconds (a study of an older harness) is taken
    at the plan's figure."""
    seconds = trial.user_attrs.get(record.SECONDS)
    if seconds is None:
        return plan.seconds[max(plan.rung(steps, folds), 0)]
    k = int(plan.shape.get("folds", 0)) or len(record.fold_scores(trial)) or 1
    had, want = record.folds_run(trial) or k, folds or k
    to_train = want - had if record.budget(trial) == steps else want
    return float(seconds) / had * max(0, to_train) * steps / max(1, record.budget(trial) or steps)


def next_seconds(study: optuna.Study, plan: Plan) -> float:
    """About how long the next trial takes: a waiting promotion's (`promoted_seconds`), a waiting
    trial's rung's, else the lowest rung's (or the longest a complete trial of it took)."""
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    if not waiting:  # a new draw: its rung's figure, or what the slowest of its rung took (another family, say)
        lowest = [record.seconds(t) or 0.0 for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                  if plan.rung(record.budget(t) or -1, record.folds_run(t) or plan.shape.get("folds")) == 0]
        return max([plan.seconds[0], *lowest])
    steps, source = record.budget(waiting[0]), record.promoted_from(waiting[0])
    if source is not None and steps is not None:
        return promoted_seconds(study.get_trials(deepcopy=False)[source], plan, steps, record.folds_run(waiting[0]))
    if steps is None:
        return plan.seconds[0]
    return plan.seconds[max(plan.rung(steps, record.folds_run(waiting[0])), 0)]


def out_of_time(study: optuna.Study, plan: Optional[Plan], deadline: float, echo: Callable[[str], None]) -> bool:
    """Whether the search stops here: the deadline passed, or, once a trial is complete, the next
    one would not end by it (its time as planned)."""
    left = deadline - time.time()
    if left <= 0:
        return True
    if plan is None or not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return False
    need = SAFETY * next_seconds(study, plan)
    if need <= left:
        return False
    echo(f"the next trial needs about {need:.0f} s and {left:.0f} s are left: no trial starts")
    return True


def check_pace(run: Run, data: SearchData, study: optuna.Study, plan: Plan, trial: FrozenTrial
               ) -> "tuple[Plan, Optional[str]]":
    """After a complete trial: its seconds against what its model's measured speed said for the folds
    it trained. The plan's seconds follow the median pace of the trials so far (kept on the study); a
    trial `PACE_FACTOR` times off corrects the measurement (in speed.json and the plan), in one line,
    and the paces count afresh from it."""
    model, size, steps = trial_model(trial), trial.params.get("image_size"), record.budget(trial)
    if _model_family(run, trial) not in (None, plan.family):
        return plan, None  # another family's model (a decoder where a classifier was measured)
    trained = len(record.fold_scores(trial)) - len(record.reused_folds(trial))
    seconds = record.seconds(trial)
    if trial.state != TrialState.COMPLETE or None in (model, size, steps, seconds) or trained <= 0:
        return plan, None
    expected = plan.trial_seconds(model, int(size), steps, trained)
    if not expected:
        return plan, None
    pace = float(seconds) / (expected / plan.pace)
    name = speed_name(model, int(size))
    if 1 / PACE_FACTOR <= pace <= PACE_FACTOR:
        kept = record.paces(study) + [pace]
        record.set_paces(study, kept)
        new, line, speeds = float(statistics.median(kept)), None, plan.speeds
    else:  # the measurement is wrong: corrected, and the paces count afresh from it
        corrected = _correct_speed(run, data, model, int(size), pace)
        new, speeds = 1.0, {**plan.speeds, name: [v * pace for v in plan.speeds[name]]}
        record.set_paces(study, [])
        line = (f"pace: trial {trial.number} took {seconds:.0f} s where {model} at {size} px measured about "
                f"{expected / plan.pace:.0f} s ({pace:.2f}×)" + ("; speed.json corrected" if corrected else "")
                + f"; the plan's seconds ×{pace:.2f}")
    scale = (pace if line else new) / plan.pace
    plan = replace(plan, pace=new, speeds=speeds, seconds=tuple(round(s * scale, 1) for s in plan.seconds))
    record.set_plan(study, plan.to_dict())
    return plan, line


def _model_family(run: Run, trial: FrozenTrial) -> Optional[str]:
    """The model family the trial trained, as its config.json says (None when unreadable)."""
    try:
        return json.loads(run.paths.trial_config(record.artifact_owner(trial)).read_text()).get("model_family")
    except (OSError, ValueError):
        return None


def _correct_speed(run: Run, data: SearchData, model: str, size: int, pace: float) -> bool:
    """Scale the kept measurement of `model` at `size` by `pace`; False when none is kept."""
    key = speed_key(recipe_config(run, data, size, model))
    known = read_speeds(run.paths.speed_json)
    if key not in known:
        return False
    known[key] = {k: round(v * pace, 6) for k, v in known[key].items()}
    write_file(run.paths.speed_json, json.dumps(known, indent=1))
    return True


def deadline_summary(study: optuna.Study, trials: int, timeout: float, deadline: float, k: int) -> str:
    """What a search with a deadline did, in one line."""
    all_trials = study.get_trials(deepcopy=False)
    states = [t.state for t in all_trials]
    whole = record.whole_complete(study, k)
    partial = states.count(TrialState.COMPLETE) - len(whole)
    pruned = states.count(TrialState.PRUNED)
    finished = states.count(TrialState.COMPLETE) + pruned
    spent = timeout - (deadline - time.time())
    best = record.best_whole(study, k)
    ranked = f", {partial} ranked on fewer folds" if partial else ""
    best_line = f"; best CV {best.value:.4f} (trial {best.number})" if best else ""
    return (f"deadline: {spent:.0f} s of {timeout:g}: {len(whole)} complete{ranked} and {pruned} pruned trials in the "
            f"study ({finished} of --trials {trials}){best_line}"
            + ("" if best else "; nothing to submit yet: run the same command again to go on"))
