"""The search space: one trial's configuration drawn from the spec's `search` section."""
from __future__ import annotations

from typing import List

import optuna

from ..config.paths import Run
from ..data.prepare import SearchData
from ..training.config import TrialConfig
from ..training.device import default_workers
from ..training.models import choose_model
from ..training.recipes import RECIPES, projected, recipe_names
from ..training.weights import resolve_weights
from . import record


def suggest_config(trial: optuna.Trial, run: Run, data: SearchData) -> TrialConfig:
    """The trial's draw of every searched key; the rest from the spec and the data."""
    s = run.spec.search
    heads = data.task.heads
    loss_names = ["loss"] if len(heads) == 1 else [f"loss_{h.name}" for h in heads]
    model = choose_model(trial, run.spec, data.task, data.channels)
    return TrialConfig(
        backbone=model.name, model_family=model.family,
        image_size=trial.suggest_categorical("image_size", s.image_size),
        augment=trial.suggest_categorical("augment", s.augment),
        loss=[trial.suggest_categorical(name, s.loss) for name in loss_names],
        imbalance=trial.suggest_categorical("imbalance", s.imbalance),
        lr=trial.suggest_float("lr", min(s.lr), max(s.lr), log=True),
        weight_decay=trial.suggest_float("weight_decay", min(s.weight_decay), max(s.weight_decay), log=True),
        batch_size=trial.suggest_categorical("batch_size", s.batch_size),
        steps=trial.suggest_categorical("steps", s.steps), evals=s.evals, patience=s.patience, keep=s.keep,
        pretrained=resolve_weights(s.pretrained, model.name), tta=s.tta, seed=run.spec.seed,
        channels=data.channels, orientation=run.spec.orientation, metric=run.spec.metric,
        num_classes=data.task.width,
        num_workers=default_workers() if s.num_workers is None else s.num_workers,
        augment_on=s.augment_on, compile=s.compile, aux_weight=model.aux_weight,
    )


def enqueue_recipes(study: optuna.Study, run: Run, data: SearchData) -> List[str]:
    """Enqueue the spec's recipes as the first trials of a new study; their names (none on a resume)."""
    if study.get_trials(deepcopy=False):
        return []
    names = recipe_names(run.spec)
    for name in names:
        study.enqueue_trial(recipe_params(RECIPES.get(name)(run.spec), run, data), user_attrs=record.recipe_attrs(name))
    return names


def recipe_params(recipe: dict, run: Run, data: SearchData) -> dict:
    """The recipe projected onto the keys a trial of its path draws: which keys a trial draws can
    depend on a drawn value (the family), so the projection is repeated on a probe trial that
    takes the projected values, until it no longer changes."""
    params: dict = {}
    for _ in range(4):
        probe_study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))  # in memory
        if params:
            probe_study.enqueue_trial(params)
        probe = probe_study.ask()
        suggest_config(probe, run, data)
        new = projected(recipe, probe.distributions)
        if new == params:
            break
        params = new
    return params
