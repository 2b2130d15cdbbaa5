"""competition.yaml → a validated `Competition`, in one place.

Every key is a dataclass field; unknown keys, wrong types and values outside a registry are
refused with one line that names the key and what is allowed, before anything is trained
(`validate.py` holds the rules; the task's own rules live with the task, `tasks/`).
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple, Union

import yaml

from ..errors import SpecError
from .validate import build, check_consistency

if TYPE_CHECKING:
    from ..registry import Registry
    from ..tasks.base import TaskType

SPEC_FILE = "competition.yaml"


def _choices(registry_path: str) -> Dict[str, Any]:
    return {"choices": registry_path}


@dataclass
class DataSection:
    layout: str = field(metadata=_choices("harness.data.layouts:LAYOUTS"))
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
    metric: Optional[str] = field(default=None, metadata=_choices("harness.tasks.metrics:METRICS"))
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
    format: str = field(default="csv", metadata=_choices("harness.submit.formats:FORMATS"))
    columns: List[str] = field(default_factory=list)  # multihead: a column per head, in head order
    combined_column: Optional[str] = None  # multihead: also write the combined class index


@dataclass
class SearchSpace:
    backbones: List[str] = field(default_factory=lambda: ["resnet18", "efficientnet_b0"])
    architectures: List[str] = field(default_factory=lambda: ["unet"])  # segmentation: smp decoders
    image_size: List[int] = field(default_factory=lambda: [224])
    augment: List[str] = field(
        default_factory=lambda: ["light", "medium"], metadata=_choices("harness.training.augment:AUGMENTS")
    )
    loss: List[str] = field(default_factory=lambda: ["ce", "label_smoothing", "focal"])  # checked per task
    imbalance: List[str] = field(
        default_factory=lambda: ["none", "class_weights", "oversample"],
        metadata=_choices("harness.training.sampling:IMBALANCE"),
    )
    lr: List[float] = field(default_factory=lambda: [1e-4, 3e-3])  # [low, high], log scale
    weight_decay: List[float] = field(default_factory=lambda: [1e-6, 1e-2])  # [low, high], log
    batch_size: List[int] = field(default_factory=lambda: [32])
    # a fold's training, in optimizer steps (searched): enough on 16 slices as on 1,000 images,
    # which epochs are not; the learning rate warms up, then follows a cosine over them
    steps: List[int] = field(default_factory=lambda: [2000])
    evals: int = 20  # validations per fold, evenly spaced over its steps: early stopping, pruning, `keep`
    patience: float = 1.0  # early stopping: share of the steps without a better validation metric (1: off)
    # the weights that predict OOF and test: last (after the last step: nothing is chosen on the
    # validation fold, so the CV is honest) or best (the best validation's: early stopping, a CV
    # that is optimistic by the choice)
    keep: str = field(default="last", metadata={"choices": ["last", "best"]})
    prune_warmup: float = 0.3  # share of the first fold's steps before a trial may be pruned
    # auto: cached weights, else from scratch; true: cached or downloaded; false; a weights file; or a
    # mapping backbone: file (training/weights.py)
    pretrained: Union[bool, Dict[str, str], str] = "auto"
    pruner: str = field(default="median", metadata=_choices("harness.search.pruners:PRUNERS"))
    tta: bool = True  # flip test-time augmentation, where `orientation` allows flips
    num_workers: Optional[int] = None  # DataLoader workers; default 0 on CPU, up to 8 on GPU
    # seconds between a running trial's heartbeats; 5 missed: its worker died, the trial is retried
    heartbeat: int = 60
    # where training batches are augmented: auto (on a GPU, on the device when the policy allows),
    # device (also on a CPU), workers (albumentations in DataLoader workers)
    augment_on: str = field(default="auto", metadata={"choices": ["auto", "device", "workers"]})
    compile: bool = False  # torch.compile each model (slow start, faster steps on a GPU)
    # with train.masks on a classification task: weight of the auxiliary mask loss (0: not used)
    aux_weight: List[float] = field(default_factory=lambda: [0.0, 0.5])
    # classification model families: classifier (a timm backbone, + the auxiliary mask head when
    # aux_weight > 0); mask_score (binary, train.masks: an smp model of search.architectures on the
    # backbones, trained on the masks, scoring an image by its most defect-like pixels)
    families: List[str] = field(default_factory=lambda: ["classifier"],
                                metadata={"choices": ["classifier", "mask_score"]})
    # the first trials of a new study (`harness list recipes`); auto: the one for the task and weights
    recipes: List[str] = field(default_factory=lambda: ["auto"], metadata={"may_be_empty": True})


@dataclass
class Competition:
    name: str
    task: str = field(metadata=_choices("harness.tasks:TASKS"))
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
    prepare: Optional[str] = field(default=None, metadata=_choices("harness.data.preparers:PREPARERS"))
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

    @property
    def task_type(self) -> "TaskType":
        """The registered task (`harness list tasks`): its metrics, losses and rules."""
        from ..tasks import TASKS

        return TASKS.get(self.task)

    @property
    def metrics(self) -> "Registry":
        """The metrics this competition may be scored with."""
        return self.task_type.metrics

    @property
    def declares_aux_masks(self) -> bool:
        """Whether train.masks is an auxiliary target, not the task's labels (as in segmentation)."""
        return not self.task_type.masks_are_labels and self.train.masks is not None

    @property
    def searches_aux_head(self) -> bool:
        """Whether classifier trials draw an auxiliary mask head: masks declared, a weight above 0 searched."""
        return self.declares_aux_masks and max(self.search.aux_weight) > 0

    @property
    def uses_aux_masks(self) -> bool:
        """Whether trials may train on the masks: the auxiliary head, or the mask_score family."""
        return self.searches_aux_head or (self.declares_aux_masks and "mask_score" in self.search.families)


def load_competition(folder: Union[str, Path], overrides: Sequence[str] = ()) -> Competition:
    """Read `<folder>/competition.yaml`, apply `--set key=value` overrides, validate."""
    path, raw = read_raw(folder, overrides)
    _fill_task_defaults(raw)
    try:
        spec = build(Competition, raw, "")
    except SpecError as err:
        raise SpecError(f"{path}: {err}") from None
    spec.folder = path.parent.resolve()
    check_consistency(spec, path)
    return spec


def _fill_task_defaults(raw: Dict[str, Any]) -> None:
    """Keys the spec leaves out take the task's defaults (segmentation: masks, pixel losses)."""
    from ..tasks import TASKS

    if raw.get("task") not in TASKS:
        return  # refused, with the tasks allowed, when the spec is built
    for section, values in TASKS.get(raw["task"]).defaults.items():
        node = raw.setdefault(section, {})
        if isinstance(node, dict):
            for key, value in values.items():
                node.setdefault(key, value)


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
        raise SpecError(f"--set {item!r}: the value is not valid YAML ({problem}): "
                        "quote it, or close its brackets") from None


def to_dict(spec: Competition) -> Dict[str, Any]:
    out = dataclasses.asdict(spec)
    out.pop("folder")
    return out
