"""Recipes: complete training configurations known to work, the first trials of every new study.

A recipe is one registered function `(spec) -> params` naming a value for each searched key
(`harness list recipes`); `masks` (whether the task's labels are masks), `pretrained` and
`family` say where it applies: to every task whose traits match (`applies`). A new study
enqueues the spec's recipes (`search.recipes`, default `[auto]`: for each model family the spec
searches, the first recipe for its task and for whether weights are used) before the sampler
draws, each projected into the spec's search space: a value the space lacks becomes the space's
nearest (numbers, clipped for ranges) or first choice.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List

import optuna

from ..registry import Registry
from ..tasks import task_type
from .weights import uses_weights

if TYPE_CHECKING:
    from ..config.spec import Competition

RECIPES = Registry("recipe")


@RECIPES.register("scratch_small", masks=False, pretrained=False, family="classifier")
def scratch_small(spec: "Competition") -> Dict[str, Any]:
    """From scratch on hundreds of images: resnet18, AdamW 2e-3, weight decay 0.05, 3,000 steps.

    224 px, medium augmentation, label smoothing, batch 32: 3,000 steps are 150 epochs of 640 images."""
    return {"family": "classifier", "backbone": "resnet18", "image_size": 224, "augment": "medium",
            "loss": "label_smoothing", "imbalance": "none", "lr": 2e-3, "weight_decay": 0.05, "batch_size": 32,
            "steps": 3000}


@RECIPES.register("finetune", masks=False, pretrained=True, family="classifier")
def finetune(spec: "Competition") -> Dict[str, Any]:
    """Pretrained weights: resnet18, AdamW 3e-4, weight decay 0.01, 600 steps."""
    return {"family": "classifier", "backbone": "resnet18", "image_size": 224, "augment": "medium",
            "loss": "label_smoothing", "imbalance": "none", "lr": 3e-4, "weight_decay": 1e-2, "batch_size": 32,
            "steps": 600}


@RECIPES.register("unet_scratch", masks=True, pretrained=None, family=None)
def unet_scratch(spec: "Competition") -> Dict[str, Any]:
    """A U-Net on a resnet18 encoder with BCE + Dice, AdamW 1e-3, 3,000 steps."""
    return {"model": "unet/resnet18", "image_size": 256, "augment": "light", "loss": "bce_dice",
            "imbalance": "none", "lr": 1e-3, "weight_decay": 1e-4, "batch_size": 8, "steps": 3000}


@RECIPES.register("mask_unet_scratch", masks=False, pretrained=None, family="mask_score")
def mask_unet_scratch(spec: "Competition") -> Dict[str, Any]:
    """Family mask_score: a U-Net on resnet18 learns the masks; D4-oversampled positives, 3,000 steps.

    AdamW 1e-3, weight decay 1e-4, 288 px, batch 16."""
    return {"family": "mask_score", "mask_model": "unet/resnet18", "image_size": 288, "augment": "medium",
            "loss": "ce", "imbalance": "oversample_d4", "lr": 1e-3, "weight_decay": 1e-4, "batch_size": 16,
            "steps": 3000}


def applies(recipe: Any, task: type) -> bool:
    """Whether a recipe fits a task class: the same kind of labels, a family the task offers."""
    return recipe.masks == task.masks_are_labels and (recipe.family is None or recipe.family in task.families)


def recipe_names(spec: "Competition") -> List[str]:
    """The recipes a new study starts from: `search.recipes`, with `auto` resolved for this spec."""
    names: List[str] = []
    for name in spec.search.recipes:
        names += _auto(spec) if name == "auto" else [name]
    return list(dict.fromkeys(names))


def _auto(spec: "Competition") -> List[str]:
    """For each model family the spec searches, the first recipe for its task and weights."""
    weights = uses_weights(spec.search.pretrained, spec.search.backbones)
    out = []
    for family in spec.search.families:
        for name in RECIPES.names():
            recipe = RECIPES.get(name)
            if (applies(recipe, task_type(spec)) and recipe.pretrained in (None, weights)
                    and recipe.family in (None, family)):
                out.append(name)
                break
    return out


def projected(params: Dict[str, Any], distributions: Dict[str, optuna.distributions.BaseDistribution]
              ) -> Dict[str, Any]:
    """`params` as the search space allows them, over exactly the space's keys; keys a recipe does
    not name (a second head's loss, aux_weight) take the recipe's value for the first of their kind,
    else the space's first choice."""
    out = {}
    for key, dist in distributions.items():
        value = params.get(key, params.get(key.split("_")[0]))  # loss_<head> falls back to loss
        if isinstance(dist, optuna.distributions.FloatDistribution):
            out[key] = min(max(float(value if value is not None else dist.low), dist.low), dist.high)
        else:
            out[key] = _choice(value, list(dist.choices))
    return out


def _choice(value: Any, choices: List[Any]) -> Any:
    if value in choices:
        return value
    numbers = [c for c in choices if isinstance(c, (int, float)) and not isinstance(c, bool)]
    if isinstance(value, (int, float)) and numbers:
        return min(numbers, key=lambda c: abs(c - value))
    return choices[0]
