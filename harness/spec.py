"""competition.yaml → a validated `Competition`, in one place.

Every key is a dataclass field; unknown keys, wrong types and values outside a registry are
refused with one line that names the key and what is allowed, before anything is trained.
"""
from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import yaml

from .errors import SpecError

SPEC_FILE = "competition.yaml"


def _choices(registry_path: str) -> Dict[str, Any]:
    return {"choices": registry_path}


@dataclass
class DataSection:
    layout: str = field(metadata=_choices("harness.layouts:LAYOUTS"))
    images: str = "."  # folder of images, relative to the data root
    csv: Optional[str] = None  # csv layout: listing, relative to the data root
    image_column: str = "path"
    target: Optional[str] = None  # csv layout: target column
    targets: List[str] = field(default_factory=list)  # csv layout, task multihead: one column per head
    # folder of masks, matched to images by file stem: image_mask_pairs' targets; for the other
    # tasks an auxiliary target (images without a mask are all background), see search.aux_weight
    masks: Optional[str] = None
    volume: Optional[str] = None  # tiff_volume: multi-page TIFF of images
    labels: Optional[str] = None  # tiff_volume: multi-page TIFF of label masks (train)
    classes: Optional[Dict[str, Any]] = None  # class_folders: folder name → label (others ignored)
    groups: List[str] = field(default_factory=list)  # columns whose combination is one group
    extensions: List[str] = field(
        default_factory=lambda: [".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".pgm", ".webp"]
    )


@dataclass
class HeadSpec:
    metric: Optional[str] = field(default=None, metadata=_choices("harness.metrics:METRICS"))
    loss_weight: float = 1.0  # the heads' losses are summed with these weights
    metric_weight: float = 1.0  # the competition metric is the heads' metrics averaged with these


@dataclass
class Submission:
    file: str = "submission.csv"
    id_column: str = "id"
    id_from: str = field(default="path", metadata={"choices": ["path", "name", "stem"]})
    target_column: str = "label"
    value: str = field(default="label", metadata={"choices": ["label", "probability"]})
    sample: Optional[str] = None  # sample submission, relative to the data root
    format: str = field(default="csv", metadata={"choices": ["csv", "tiff", "png_folder", "rle_csv"]})
    columns: List[str] = field(default_factory=list)  # multihead: a column per head, in head order
    combined_column: Optional[str] = None  # multihead: also write the combined class index


@dataclass
class SearchSpace:
    backbones: List[str] = field(default_factory=lambda: ["resnet18", "efficientnet_b0"])
    architectures: List[str] = field(default_factory=lambda: ["unet"])  # segmentation: smp decoders
    image_size: List[int] = field(default_factory=lambda: [224])
    augment: List[str] = field(
        default_factory=lambda: ["light", "medium"], metadata=_choices("harness.augment:AUGMENTS")
    )
    loss: List[str] = field(default_factory=lambda: ["ce", "label_smoothing", "focal"])  # checked per task
    imbalance: List[str] = field(
        default_factory=lambda: ["none", "class_weights", "oversample"],
        metadata=_choices("harness.sampling:IMBALANCE"),
    )
    lr: List[float] = field(default_factory=lambda: [1e-4, 3e-3])  # [low, high], log scale
    weight_decay: List[float] = field(default_factory=lambda: [1e-6, 1e-2])  # [low, high], log
    batch_size: List[int] = field(default_factory=lambda: [32])
    epochs: List[int] = field(default_factory=lambda: [15])
    patience: int = 4  # early stopping, in epochs without a better validation metric
    pretrained: Union[bool, str] = True  # true: timm hub / offline cache; a path: local weights
    pruner: str = field(default="median", metadata=_choices("harness.search:PRUNERS"))
    tta: bool = True  # flip test-time augmentation, where `orientation` allows flips
    num_workers: Optional[int] = None  # DataLoader workers; default 0 on CPU, up to 8 on GPU
    # where training batches are augmented: auto (on a GPU, on the device when the policy allows),
    # device (also on a CPU), workers (albumentations in DataLoader workers)
    augment_on: str = field(default="auto", metadata={"choices": ["auto", "device", "workers"]})
    compile: bool = False  # torch.compile each model (slow start, faster steps on a GPU)
    # with train.masks on a classification task: weight of the auxiliary mask loss (0: not used)
    aux_weight: List[float] = field(default_factory=lambda: [0.0, 0.5])


@dataclass
class Competition:
    name: str
    task: str = field(metadata={"choices": ["binary", "multiclass", "multihead", "segmentation"]})
    train: DataSection
    test: DataSection
    metric: str  # checked against the task's metrics: `harness list metrics` / `segmentation_metrics`
    submission: Submission = field(default_factory=Submission)
    search: SearchSpace = field(default_factory=SearchSpace)
    heads: Dict[str, HeadSpec] = field(default_factory=dict)  # multihead: per-head metric and weights
    folds: int = 5
    seed: int = 42
    channels: Optional[int] = field(default=None, metadata={"choices": [1, 3]})
    orientation: str = field(default="hflip", metadata={"choices": ["fixed", "hflip", "free"]})
    positive: Optional[str] = None  # binary: the positive class label (default: the last one)
    positive_value: Optional[int] = None  # segmentation: mask value of the positive class (default: any > 0)
    negative_value: Optional[int] = None  # segmentation: value written for other pixels (default 0 / 255)
    tile_size: int = 1024  # segmentation: images with a longer side are predicted in overlapping tiles
    fold_by: str = field(default="stratified", metadata={"choices": ["stratified", "blocks"]})
    data_root: Optional[str] = None  # relative to the competition folder
    prepare: Optional[str] = field(default=None, metadata=_choices("harness.layouts:PREPARERS"))
    description: str = ""
    folder: Path = field(default=Path("."), metadata={"internal": True})

    def resolve_data_root(self, override: Optional[str], run_dir: Path) -> Path:
        """--data-root, else $HARNESS_DATA, else the spec's data_root, else <run-dir>/data."""
        if override:
            return Path(override).expanduser().resolve()
        if os.environ.get("HARNESS_DATA"):
            return Path(os.environ["HARNESS_DATA"]).expanduser().resolve()
        if self.data_root:
            return (self.folder / self.data_root).resolve()
        if self.prepare:
            return (run_dir / "data").resolve()
        raise SpecError(f"{self.folder / SPEC_FILE}: no data_root: set it, pass --data-root or HARNESS_DATA")


def load_competition(folder: Union[str, Path], overrides: Sequence[str] = ()) -> Competition:
    """Read `<folder>/competition.yaml`, apply `--set key=value` overrides, validate."""
    path, raw = read_raw(folder, overrides)
    try:
        spec = _build(Competition, raw, "")
    except SpecError as err:
        raise SpecError(f"{path}: {err}") from None
    spec.folder = path.parent.resolve()
    _check_consistency(spec, path)
    return spec


def read_raw(folder: Union[str, Path], overrides: Sequence[str] = ()) -> Tuple[Path, Dict[str, Any]]:
    """(spec path, the YAML mapping with the overrides applied), not yet validated."""
    folder = Path(folder)
    path = folder / SPEC_FILE if folder.is_dir() else folder
    if not path.is_file():
        raise SpecError(f"{path}: no such competition spec: point at a folder holding {SPEC_FILE}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise SpecError(f"{path}{where}: not valid YAML ({problem}): fix that line") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: expected a mapping of keys, got {type(raw).__name__}")
    for item in overrides:
        apply_override(raw, item)
    raw.pop("folder", None)
    return path, raw


def apply_override(raw: Dict[str, Any], item: str) -> None:
    """`search.image_size=[32]` → raw['search']['image_size'] = [32] (value parsed as YAML)."""
    if "=" not in item:
        raise SpecError(f"--set {item!r}: expected KEY=VALUE")
    key, value = item.split("=", 1)
    parts = key.strip().split(".")
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise SpecError(f"--set {item!r}: '{part}' is not a section")
    try:
        node[parts[-1]] = yaml.safe_load(value)
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise SpecError(f"--set {item!r}: the value is not valid YAML ({problem}): quote it, or close its brackets") from None


def to_dict(spec: Competition) -> Dict[str, Any]:
    out = dataclasses.asdict(spec)
    out.pop("folder")
    return out


# ---------------------------------------------------------------- generic validation

def _build(cls: type, raw: Any, where: str) -> Any:
    if not isinstance(raw, dict):
        raise SpecError(f"{where or 'spec'}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    unknown = [k for k in raw if k not in fields]
    if unknown:
        raise SpecError(
            f"unknown key '{_join(where, unknown[0])}' (allowed: {', '.join(fields)})"
        )
    kwargs = {}
    for name, f in fields.items():
        key = _join(where, name)
        if name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise SpecError(f"missing key '{key}': add it to {SPEC_FILE}")
            continue
        kwargs[name] = _convert(hints[name], raw[name], key, f.metadata.get("choices"))
    return cls(**kwargs)


def _convert(hint: Any, value: Any, key: str, choices: Any) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Union:
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return _convert(option, value, key, choices)
            except SpecError as err:
                errors.append(err)
        raise errors[0]
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key)
    if origin in (list, List):
        items = value if isinstance(value, list) else [value]
        if not items:
            raise SpecError(f"'{key}': needs at least one value")
        return [_convert(args[0], v, key, choices) for v in items]
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise SpecError(f"'{key}': expected a mapping, got {value!r}")
        if dataclasses.is_dataclass(args[1]):
            return {str(k): _build(args[1], v or {}, f"{key}.{k}") for k, v in value.items()}
        return {str(k): v for k, v in value.items()}
    out = _scalar(hint, value, key)
    _check_choice(out, key, choices)
    return out


def _scalar(hint: Any, value: Any, key: str) -> Any:
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 3e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    elif hint is Path:
        return Path(value)
    raise SpecError(f"'{key}': expected {getattr(hint, '__name__', hint)}, got {value!r}")


def _check_choice(value: Any, key: str, choices: Any) -> None:
    if choices is None or value is None:
        return
    if hasattr(choices, "names"):
        choices = choices.names()
    if isinstance(choices, str):
        module, attr = choices.split(":")
        choices = getattr(__import__(module, fromlist=[attr]), attr).names()
    if value not in choices:
        raise SpecError(f"'{key}': unknown value {value!r} (allowed: {', '.join(map(str, choices))})")


def _check_consistency(spec: Competition, path: Path) -> None:
    """Rules that span several keys."""
    s = spec.search
    if spec.folds < 2:
        raise SpecError(f"{path}: 'folds': needs at least 2, got {spec.folds}: set folds: 5")
    if spec.tile_size < 32:
        raise SpecError(f"{path}: 'tile_size': needs at least 32, got {spec.tile_size}")
    for key in ("lr", "weight_decay"):
        values = getattr(s, key)
        if len(values) > 2 or min(values) <= 0:
            raise SpecError(f"{path}: 'search.{key}': expected [low, high] > 0, got {values}")
    for key in ("image_size", "batch_size", "epochs"):
        if min(getattr(s, key)) < 1:
            raise SpecError(f"{path}: 'search.{key}': values must be >= 1, got {getattr(s, key)}")
    if s.patience < 1:
        raise SpecError(f"{path}: 'search.patience': needs at least 1, got {s.patience}: count it in epochs, "
                        "e.g. 4")
    if min(s.aux_weight) < 0:
        raise SpecError(f"{path}: 'search.aux_weight': values must be >= 0, got {s.aux_weight}")
    if spec.submission.value == "probability" and spec.task != "binary":
        raise SpecError(f"{path}: 'submission.value': probability needs task binary, got {spec.task}")
    if spec.test.target is not None or spec.test.targets:
        raise SpecError(f"{path}: 'test.target': the test set has no target")
    _check_heads(spec, path)
    _check_task_choices(spec, path)
    _check_augment_on(spec, path)
    _check_backbones(s.backbones, path)


def submission_columns(spec: Competition) -> List[str]:
    """The columns a csv submission has, in order: the id, then a target column per head."""
    sub = spec.submission
    if spec.task != "multihead":
        return [sub.id_column, sub.target_column]
    return [sub.id_column, *(sub.columns or spec.train.targets)] + \
        ([sub.combined_column] if sub.combined_column else [])


def declares_aux_masks(spec: Competition) -> bool:
    """Whether train.masks is an auxiliary target (a classification task), not segmentation's labels."""
    return spec.task != "segmentation" and spec.train.masks is not None


def uses_aux_masks(spec: Competition) -> bool:
    """Whether trials may train the auxiliary mask head: masks declared and a weight above 0 searched."""
    return declares_aux_masks(spec) and max(spec.search.aux_weight) > 0


def metric_registry(task: str):
    """The metrics a task is scored with: pixel metrics for segmentation, else classification's."""
    from .metrics import METRICS
    from .segmentation import SEG_METRICS

    return SEG_METRICS if task == "segmentation" else METRICS


def _check_task_choices(spec: Competition, path: Path) -> None:
    """Loss, metric, architectures and submission format come from the task's own registries."""
    from .losses import LOSSES
    from .segmentation import SEG_LOSSES, architectures

    segmentation = spec.task == "segmentation"
    for key, registry, values in (("metric", metric_registry(spec.task), [spec.metric]),
                                  ("search.loss", SEG_LOSSES if segmentation else LOSSES, spec.search.loss)):
        for value in values:
            _check_in(value, key, registry, path)
    if segmentation:
        for arch in spec.search.architectures:
            _check_in(arch, "search.architectures", architectures(), path)
        if spec.submission.format == "csv" or spec.search.imbalance != ["none"]:
            raise SpecError(f"{path}: task segmentation writes submission.format tiff, png_folder or "
                            "rle_csv, with search.imbalance [none]")
    elif spec.submission.format != "csv" or spec.fold_by == "blocks":
        raise SpecError(f"{path}: submission.format {spec.submission.format} and fold_by blocks are for "
                        "task segmentation")


def _check_augment_on(spec: Competition, path: Path) -> None:
    from .augment import batch_form

    if spec.search.augment_on != "device":
        return
    if uses_aux_masks(spec):
        raise SpecError(f"{path}: 'search.augment_on': device cannot augment train.masks with the images; "
                        "auxiliary-mask trials augment in workers (use auto or workers, or search.aux_weight [0])")
    if spec.task == "segmentation":
        raise SpecError(f"{path}: 'search.augment_on': device is for whole-image tasks; segmentation "
                        "augments image and mask in workers (use auto or workers)")
    for policy in spec.search.augment:
        if batch_form(policy) is None:
            raise SpecError(f"{path}: 'search.augment_on': policy {policy!r} has no device form "
                            "(use auto or workers)")


def _check_in(value: Any, key: str, choices: Any, path: Path) -> None:
    try:
        _check_choice(value, key, choices)
    except SpecError as err:
        raise SpecError(f"{path}: {err}") from None


def _check_heads(spec: Competition, path: Path) -> None:
    targets = spec.train.targets
    if spec.task != "multihead":
        if targets or spec.heads or spec.submission.columns or spec.submission.combined_column:
            raise SpecError(f"{path}: 'train.targets', 'heads' and 'submission.columns' need task multihead")
        return
    if spec.train.layout != "csv" or len(targets) < 2 or spec.train.target:
        raise SpecError(f"{path}: task multihead needs train.layout csv with 'train.targets' "
                        "(two or more columns) instead of 'train.target'")
    for name in spec.heads:
        if name not in targets:
            raise SpecError(f"{path}: 'heads.{name}': not one of train.targets ({', '.join(targets)})")
    from .metrics import METRICS

    directions = {METRICS.get(spec.heads.get(t, HeadSpec()).metric or spec.metric).direction for t in targets}
    if len(directions) > 1:
        raise SpecError(f"{path}: 'heads': the heads' metrics must all be maximised or all minimised")
    if spec.submission.columns and len(spec.submission.columns) != len(targets):
        raise SpecError(f"{path}: 'submission.columns': {len(spec.submission.columns)} names for "
                        f"{len(targets)} heads")
    if spec.submission.value != "label":
        raise SpecError(f"{path}: 'submission.value': task multihead writes labels")


def _check_backbones(names: List[str], path: Path) -> None:
    import timm

    for name in names:
        if not timm.is_model(name):
            close = timm.list_models(f"*{name.split('_')[0]}*")[:5]
            hint = f" (did you mean: {', '.join(close)})" if close else ""
            raise SpecError(f"{path}: 'search.backbones': unknown timm model {name!r}{hint}")


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name
