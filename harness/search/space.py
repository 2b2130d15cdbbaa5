"""The search space: one trial's configuration drawn from the spec's `search` section."""
from __future__ import annotations

from typing import List

import optuna

from ..config.paths import Run
from ..data.prepare import SearchData
from ..training.config import TrialConfig
from ..training.device import default_workers
from ..training.recipes import RECIPES, projected, recipe_names


def suggest_config(trial: optuna.Trial, run: Run, data: SearchData) -> TrialConfig:
    """The trial's draw of every searched key; the rest from the spec and the data."""
    s = run.spec.search
    heads = data.task.heads
    loss_names = ["loss"] if len(heads) == 1 else [f"loss_{h.name}" for h in heads]
    backbone, family = data.task.suggest_model(trial, s, data.channels)
    aux_weight = trial.suggest_categorical("aux_weight", s.aux_weight) if run.spec.uses_aux_masks else 0.0
    family = "timm_aux_mask" if aux_weight else family
    return TrialConfig(
        backbone=backbone, model_family=family,
        image_size=trial.suggest_categorical("image_size", s.image_size),
        augment=trial.suggest_categorical("augment", s.augment),
        loss=[trial.suggest_categorical(name, s.loss) for name in loss_names],
        imbalance=trial.suggest_categorical("imbalance", s.imbalance),
        lr=trial.suggest_float("lr", min(s.lr), max(s.lr), log=True),
        weight_decay=trial.suggest_float("weight_decay", min(s.weight_decay), max(s.weight_decay), log=True),
        batch_size=trial.suggest_categorical("batch_size", s.batch_size),
        epochs=trial.suggest_categorical("epochs", s.epochs),
        patience=s.patience, pretrained=s.pretrained, tta=s.tta, seed=run.spec.seed,
        channels=data.channels, orientation=run.spec.orientation, metric=run.spec.metric,
        num_classes=data.task.width,
        num_workers=default_workers() if s.num_workers is None else s.num_workers,
        augment_on=s.augment_on, compile=s.compile, aux_weight=aux_weight,
    )


def enqueue_recipes(study: optuna.Study, run: Run, data: SearchData) -> List[str]:
    """Enqueue the spec's recipes as the first trials of a new study; their names (none on a resume)."""
    if study.get_trials(deepcopy=False):
        return []
    probe = optuna.create_study().ask()  # in memory: the space's keys and choices, as trials draw them
    suggest_config(probe, run, data)
    names = recipe_names(run.spec)
    for name in names:
        study.enqueue_trial(projected(RECIPES.get(name)(run.spec), probe.distributions),
                            user_attrs={"recipe": name})
    return names
