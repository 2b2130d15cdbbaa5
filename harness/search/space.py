"""The search space: one trial's configuration drawn from the spec's `search` section."""
from __future__ import annotations

from typing import List, Optional

import optuna

from ..config.paths import Run
from ..data.prepare import SearchData
from ..training.config import TrialConfig
from ..training.device import default_workers
from ..training.models import choose_model
from ..training.pseudo import PseudoSet
from ..training.recipes import RECIPES, projected, recipe_names
from ..training.weights import resolve_weights
from . import record
from .plan import Plan, evals_at


def suggest_config(trial: optuna.Trial, run: Run, data: SearchData, plan: Optional[Plan] = None) -> TrialConfig:
    """The trial's draw of every searched key; the rest from the spec and the data. With a `plan`
    (a search with a deadline), the steps are not drawn: they are the trial's rung's (the lowest
    for a new trial), and the image sizes and validations are the plan's."""
    s = run.spec.search
    if plan is None:
        steps, sizes = trial.suggest_categorical("steps", s.steps), s.image_size
        evals = evals_at(s, steps)
    else:
        steps = record.budget(trial) or plan.rungs[0]
        sizes, evals = list(plan.image_sizes), plan.evals_at(steps)
    heads = data.task.heads
    loss_names = ["loss"] if len(heads) == 1 else [f"loss_{h.name}" for h in heads]
    model = choose_model(trial, run.spec, data.task, data.channels, plan.backbones if plan else ())
    return TrialConfig(
        backbone=model.name, model_family=model.family,
        image_size=trial.suggest_categorical("image_size", sizes),
        augment=trial.suggest_categorical("augment", s.augment),
        loss=[trial.suggest_categorical(name, s.loss) for name in loss_names],
        imbalance=trial.suggest_categorical("imbalance", s.imbalance),
        lr=trial.suggest_float("lr", min(s.lr), max(s.lr), log=True),
        weight_decay=trial.suggest_float("weight_decay", min(s.weight_decay), max(s.weight_decay), log=True),
        batch_size=trial.suggest_categorical("batch_size", s.batch_size),
        steps=steps, evals=evals, patience=s.patience, keep=s.keep,
        pretrained=resolve_weights(s.pretrained, model.name), tta=s.tta, seed=run.spec.seed,
        channels=data.channels, orientation=run.spec.orientation, metric=run.spec.metric,
        num_classes=data.task.width,
        num_workers=default_workers() if s.num_workers is None else s.num_workers,
        augment_on=s.augment_on, compile=s.compile, aux_weight=model.aux_weight,
    )


def enqueue_recipes(study: optuna.Study, run: Run, data: SearchData, plan: Optional[Plan] = None) -> List[str]:
    """Enqueue the spec's recipes as the first trials of a new study; their names (none on a resume)."""
    if study.get_trials(deepcopy=False):
        return []
    names = recipe_names(run.spec)
    for name in names:
        study.enqueue_trial(recipe_params(RECIPES.get(name)(run.spec), run, data, plan),
                            user_attrs=record.recipe_attrs(name))
    return names


def enqueue_pseudo_members(study: optuna.Study, pseudo: PseudoSet) -> List[int]:
    """Enqueue each member of the ensemble that made `pseudo` again, with its parameters, to train on
    the pseudo-labels too (heaviest first), unless it was already; the members enqueued now."""
    trials = study.get_trials(deepcopy=False)
    by_number = {t.number: t for t in trials}
    done = {record.pseudo_of(t) for t in trials if record.pseudo(t) == pseudo.id}
    members = sorted(pseudo.record["members"].items(), key=lambda item: -item[1])
    enqueued = []
    for number in (int(n) for n, _ in members):
        if number not in done and number in by_number:
            study.enqueue_trial(by_number[number].params, user_attrs=record.pseudo_attrs(pseudo.id, by_number[number]))
            enqueued.append(number)
    return enqueued


def recipe_config(run: Run, data: SearchData, image_size: int, backbone: Optional[str] = None) -> TrialConfig:
    """The configuration of the study's first recipe (else the space's first draw) at `image_size`
    (any, not only the spec's), on `backbone` if given (one of the spec's): what a planned search times."""
    names = recipe_names(run.spec)
    params = recipe_params(RECIPES.get(names[0])(run.spec), run, data) if names else {}
    if backbone is not None:
        params = with_backbone(params, backbone)
    steps = max(run.spec.search.steps)
    probe_plan = Plan(rungs=(steps,), evals=(evals_at(run.spec.search, steps),), seconds=(0.0,),
                      image_sizes=(image_size,), line="", backbones=(backbone,) if backbone else ())
    probe_study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))  # in memory
    probe_study.enqueue_trial({**params, "image_size": image_size})
    return suggest_config(probe_study.ask(), run, data, probe_plan)


def with_backbone(params: dict, backbone: str) -> dict:
    """`params` with their model on `backbone`: a classifier's backbone, a decoder's encoder."""
    out = dict(params)
    if "backbone" in out:
        out["backbone"] = backbone
    for key in ("model", "mask_model"):
        if key in out:
            out[key] = f"{str(out[key]).split('/')[0]}/{backbone}"
    return out


def backbone_of(model: str) -> str:
    """The backbone (timm encoder) of a trial's model name: `unet/resnet18` → resnet18."""
    return model.split("/")[-1]


def recipe_params(recipe: dict, run: Run, data: SearchData, plan: Optional[Plan] = None) -> dict:
    """The recipe projected onto the keys a trial of its path draws: which keys a trial draws can
    depend on a drawn value (the family), so the projection is repeated on a probe trial that
    takes the projected values, until it no longer changes."""
    params: dict = {}
    for _ in range(4):
        probe_study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))  # in memory
        if params:
            probe_study.enqueue_trial(params)
        probe = probe_study.ask()
        suggest_config(probe, run, data, plan)
        new = projected(recipe, probe.distributions)
        if new == params:
            break
        params = new
    return params
