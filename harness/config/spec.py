"""competition.yaml → a validated `Competition`, in one place.

Every key is a dataclass field; unknown keys, wrong types and values outside a registry are
refused with one line that names the key and what is allowed, before anything is trained
(`validate.py` holds the rules). Keys that name a registry entry of a later stage (a layout, a
metric, a format) say only which registry; the preflight (`harness/preflight.py`) gives the
registries, and adds the task's defaults and rules.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import yaml

from ..errors import SpecError
from .validate import build, check_consistency, check_key

SPEC_FILE = "competition.yaml"


def _registry(kind: str) -> Dict[str, Any]:
    """A key that names an entry of a registry of a later stage (`harness list <kind>`): the preflight
    gives the registries when it builds the spec; config itself imports none of them."""
    return {"registry": kind}


@dataclass
class DataSection:
    layout: str = field(metadata=_registry("layouts"))
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
    metric: Optional[str] = field(default=None, metadata=_registry("metrics"))
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
    format: str = field(default="csv", metadata=_registry("formats"))
    columns: List[str] = field(default_factory=list)  # multihead: a column per head, in head order
    combined_column: Optional[str] = None  # multihead: also write the combined class index
    # re-weight the test posteriors by the test set's estimated class priors (submit/shift.py): auto
    # where a simulation on OOF says it helps and the priors moved, on, off (YAML reads those as booleans)
    label_shift: Union[bool, str] = "auto"


@dataclass
class SearchSpace:
    backbones: List[str] = field(default_factory=lambda: ["resnet18", "efficientnet_b0"])
    architectures: List[str] = field(default_factory=lambda: ["unet"])  # segmentation: smp decoders
    image_size: List[int] = field(default_factory=lambda: [224])
    augment: List[str] = field(
        default_factory=lambda: ["light", "medium"], metadata=_registry("augmentations")
    )
    loss: List[str] = field(default_factory=lambda: ["ce", "label_smoothing", "focal"])  # checked per task
    imbalance: List[str] = field(
        default_factory=lambda: ["none", "class_weights", "oversample"],
        metadata=_registry("imbalance"),
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
    pruner: str = field(default="median", metadata=_registry("pruners"))
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
    # new trials also train on the test images the submitted ensemble labels with confidence (`search
    # --pseudo-labels`, after `submit`): a class's label is taken above the cut-off at which the
    # ensemble's OOF labels of that class are right `pseudo_precision` of the time
    pseudo_labels: bool = False
    pseudo_precision: float = 0.95
    pseudo_soft: bool = False  # classification: the taken images learn the ensemble's probabilities, not its labels
    # the first trials of a new study (`harness list recipes`); auto: the one for the task and weights
    recipes: List[str] = field(default_factory=lambda: ["auto"], metadata={"may_be_empty": True})


@dataclass
class Competition:
    name: str
    task: str = field(metadata=_registry("tasks"))
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
    prepare: Optional[str] = field(default=None, metadata=_registry("preparers"))
    description: str = ""
    folder: Path = field(default=Path("."), metadata={"internal": True})

    def resolve_data_root(self, override: Optional[str], prepared_dir: Path) -> Path:
        """--data-root, else $HARNESS_DATA, else the spec's data_root, else `prepared_dir` (the run
        dir's data folder, named by `RunPaths.data_dir`)."""
        if override:
            return Path(override).expanduser().resolve()
        if os.environ.get("HARNESS_DATA"):
            return Path(os.environ["HARNESS_DATA"]).expanduser().resolve()
        if self.data_root:
            return (self.folder / self.data_root).resolve()
        if self.prepare:
            return prepared_dir.resolve()
        raise SpecError(f"{self.folder / SPEC_FILE}: no data_root: set it, pass --data-root or HARNESS_DATA")


def load_competition(folder: Union[str, Path], overrides: Sequence[str] = (),
                     registries: Optional[Mapping[str, Any]] = None,
                     defaults: Optional[Callable[[Any], Mapping[str, Mapping[str, Any]]]] = None) -> Competition:
    """Read `<folder>/competition.yaml`, apply `--set key=value` overrides, fill `defaults(task)` (section
    → key → value, for the task the spec names) where the spec is silent, check types and the names in `registries` (kind → names;
    the preflight gives them) and the rules of config's own keys."""
    path, raw = read_raw(folder, overrides)
    for section, values in (defaults(raw.get("task")) if defaults else {}).items():
        node = raw.setdefault(section, {})
        if isinstance(node, dict):
            for key, value in values.items():
                node.setdefault(key, value)
    try:
        spec = build(Competition, raw, "", registries or {})
    except SpecError as err:
        raise SpecError(f"{path}: {err}") from None
    spec.folder = path.parent.resolve()
    check_consistency(spec, path)
    return spec


def spec_path(folder: Union[str, Path]) -> Path:
    """The spec file a command names: `<folder>/competition.yaml`, or the file itself."""
    folder = Path(folder)
    return folder / SPEC_FILE if folder.is_dir() else folder


def read_raw(folder: Union[str, Path], overrides: Sequence[str] = ()) -> Tuple[Path, Dict[str, Any]]:
    """(spec path, the YAML mapping with the overrides applied), not yet validated."""
    path = spec_path(folder)
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
    try:
        check_key(Competition, key.strip())  # blamed on the command line, not on competition.yaml
    except SpecError as err:
        raise SpecError(f"--set {item!r}: {err}") from None
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
