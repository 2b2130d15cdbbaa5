"""The preflight: every check of a spec that spans the registries of several stages, before any
training, so that no stage reaches up into a later one to check a name.

`config` declares the spec and checks its own keys; the names it holds of other stages' choices
(a layout, a metric, a recipe, a backbone, a submission format) are checked here, with the
task's own rules (`tasks/rules.py`). `open_run` is what every command and the Python API start
from; `check_run` adds what only training needs (weights, models that build).
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Union

import timm

from .config.paths import Run
from .config.paths import resolve_run
from .config.spec import Competition, load_competition, spec_path
from .data.layouts import LAYOUTS
from .data.preparers import PREPARERS
from .errors import SpecError
from .registry import Registry
from .search.pruners import PRUNERS
from .submit.formats import FORMATS
from .tasks import TASKS, task_type, uses_aux_masks
from .tasks.losses import LOSSES
from .tasks.metrics import METRICS
from .tasks.pixels import SEG_LOSSES, SEG_METRICS
from .training.augment import AUGMENTS, batch_form
from .training.models import MODEL_FAMILIES, architectures
from .training.recipes import RECIPES, applies
from .training.sampling import IMBALANCE
from .training.weights import check_trainable

if TYPE_CHECKING:
    from .data.prepare import SearchData

# every user-facing choice, by the name `harness list` and the spec's fields give it
REGISTRIES: Dict[str, Registry] = {
    "tasks": TASKS, "layouts": LAYOUTS, "preparers": PREPARERS, "metrics": METRICS, "losses": LOSSES,
    "segmentation_losses": SEG_LOSSES, "segmentation_metrics": SEG_METRICS, "augmentations": AUGMENTS,
    "imbalance": IMBALANCE, "families": MODEL_FAMILIES, "pruners": PRUNERS, "formats": FORMATS, "recipes": RECIPES,
}


def open_run(folder: Union[str, Path], data_root: Optional[str] = None, run_dir: Optional[str] = None,
             overrides: Sequence[str] = (), storage: Optional[str] = None) -> Run:
    """Resolve everything a command needs from the CLI's options (or their Python equivalents), the
    spec checked against every stage (`load_spec`). Overrides that `search` remembered in the run dir
    apply first; this command's `overrides` after them, key by key."""
    return resolve_run(load_spec, folder, data_root, run_dir, overrides, storage)


def load_spec(folder: Union[str, Path], overrides: Sequence[str] = ()) -> Competition:
    """`<folder>/competition.yaml` with its overrides, the task's defaults filled in, every key and
    name checked; one line per mistake, naming the file."""
    spec = load_competition(folder, overrides, registries=REGISTRIES, defaults=_task_defaults)
    check_spec(spec, spec_path(folder))
    return spec


def _task_defaults(task: Any) -> Dict[str, Dict[str, Any]]:
    """Keys the spec leaves out take the task's defaults (segmentation: masks, pixel losses); an
    unknown task is refused, with the tasks allowed, when the spec is built."""
    return TASKS.get(task).defaults if task in TASKS else {}


def check_spec(spec: Competition, path: Path) -> None:
    """The rules that span registries: recipes, the task's own rules, its submission formats, the
    decoders, where batches may be augmented, the backbones."""
    _check_recipes(spec, path)
    task = task_type(spec)
    task.rules.check(spec, path)
    if FORMATS.get(spec.submission.format).masks != task.mask_submission:
        allowed = [f for f in FORMATS.names() if FORMATS.get(f).masks == task.mask_submission]
        raise SpecError(f"{path}: 'submission.format': task {spec.task} writes {' or '.join(allowed)}, "
                        f"not {spec.submission.format}")
    if task.masks_are_labels or "mask_score" in spec.search.families:
        _check_architectures(spec, path)
    _check_augment_on(spec, path)
    _check_backbones(spec.search.backbones, path)


def check_run(run: Run, data: "SearchData") -> List[str]:
    """What only training needs, before any trial: each backbone's weights are there, the models
    build. Returns what `auto` (or a mapping) chose for each backbone, a line each."""
    return check_trainable(run.spec.search, data.task, data.channels)


def _check_recipes(spec: Competition, path: Path) -> None:
    for name in spec.search.recipes:
        if name == "auto":
            continue
        try:
            RECIPES.check(name, "search.recipes")
        except SpecError as err:
            raise SpecError(f"{path}: {err}: or auto") from None
        recipe = RECIPES.get(name)
        if not applies(recipe, task_type(spec)):
            tasks = [t for t in TASKS.names() if applies(recipe, TASKS.get(t))]
            raise SpecError(f"{path}: 'search.recipes': {name} is for task {' or '.join(tasks)}, "
                            f"not {spec.task}")
        if recipe.family is not None and recipe.family not in spec.search.families:
            raise SpecError(f"{path}: 'search.recipes': {name} trains the {recipe.family} family: "
                            f"add it to search.families")


def _check_architectures(spec: Competition, path: Path) -> None:
    """search.architectures must name smp decoders."""
    unknown = [a for a in spec.search.architectures if a not in architectures()]
    if unknown:
        raise SpecError(f"{path}: 'search.architectures': unknown value {unknown[0]!r} "
                        f"(allowed: {', '.join(architectures())})")


def _check_augment_on(spec: Competition, path: Path) -> None:
    if spec.search.augment_on != "device":
        return
    if uses_aux_masks(spec):
        raise SpecError(f"{path}: 'search.augment_on': device cannot augment train.masks with the images; "
                        "auxiliary-mask trials augment in workers (use auto or workers, or search.aux_weight [0])")
    if not task_type(spec).trains_on_whole_images:
        raise SpecError(f"{path}: 'search.augment_on': device is for whole-image tasks; task {spec.task} "
                        "augments image and mask in workers (use auto or workers)")
    for policy in spec.search.augment:
        if batch_form(policy) is None:
            raise SpecError(f"{path}: 'search.augment_on': policy {policy!r} has no device form "
                            "(use auto or workers)")


def _check_backbones(names: List[str], path: Path) -> None:
    for name in names:
        if not timm.is_model(name):
            close = close_models(name)
            hint = f" (did you mean: {', '.join(close)})" if close else ""
            raise SpecError(f"{path}: 'search.backbones': unknown timm model {name!r}{hint}")


def close_models(name: str, n: int = 5) -> List[str]:
    """timm's model names nearest to `name`, read case-insensitively with '-' as '_' (resnet-18,
    EfficientNet-B0, resnt18: resnet18, efficientnet_b0 first); else those holding its first word."""
    key = name.strip().lower().replace("-", "_")
    close = difflib.get_close_matches(key, timm.list_models(), n=n, cutoff=0.6)
    return close or timm.list_models(f"*{key.split('_')[0]}*")[:n]
