"""Model families: timm backbones with a classification head, and their pretrained weights.

`pretrained` is what `weights.resolve_weights` made of the spec's value: `false` (random init),
`true` (timm's hub download) or a path to a local weights file, a cached download included (loaded
through timm's own `pretrained_cfg_overlay=dict(file=...)`, so the head and input channels are
adapted as timm does).
The segmentation family (`smp_model`, smp decoders on timm encoders) reads `pretrained` the same way.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from functools import lru_cache
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import timm
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SpecError
from ..registry import Registry
from ..tasks import Task, searches_aux_head
from .config import TrialConfig
from .names import ModelName

if TYPE_CHECKING:
    from ..config.spec import Competition, SearchSpace

MODEL_FAMILIES = Registry("model family")


def weights_file(pretrained: Union[bool, str]) -> Optional[str]:
    """The local weights file a resolved `pretrained` names (`weights.resolve_weights`: false, true or a
    file), or None; a missing file is an error."""
    if not isinstance(pretrained, str):
        return None
    path = Path(pretrained).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights file {path} does not exist")
    return str(path)


def weights_file_overlay(pretrained: Union[bool, str]) -> Dict[str, Any]:
    """timm's keyword arguments to load the local weights file `pretrained` names (none for true/false)."""
    file = weights_file(pretrained)
    return {"pretrained_cfg_overlay": {"file": file}} if file else {}


def uses_pretrained(pretrained: Union[bool, str]) -> bool:
    return pretrained is not False


@contextmanager
def loading_weights(name: str, pretrained: Union[bool, str]) -> Iterator[None]:
    """Turns a failed hub download into one line that says what to do without a network."""
    try:
        yield
    except (OSError, RuntimeError) as err:
        if not uses_pretrained(pretrained) or weights_file(pretrained):
            raise
        raise RuntimeError(
            f"pretrained weights for {name!r} could not be loaded ({type(err).__name__}); "
            "without a network set search.pretrained to false or to a local weights file"
        ) from None


@MODEL_FAMILIES.register("timm_classifier")
def timm_classifier(name: str, num_classes: int, in_chans: int,
                    pretrained: Union[bool, str] = False) -> nn.Module:
    """Any timm backbone with a fresh `num_classes` head."""
    with loading_weights(name, pretrained):
        return timm.create_model(name, pretrained=uses_pretrained(pretrained), num_classes=num_classes,
                                 in_chans=in_chans, **weights_file_overlay(pretrained))


class AuxMaskModel(nn.Module):
    """A timm classifier plus a 1×1-convolution mask head on its last feature map.

    In training it returns (class logits, mask logits at the feature map's resolution), so the
    mask loss can be added (`losses.AuxMaskLoss`); in eval only the class logits, so prediction,
    TTA and checkpoints are those of the plain classifier.
    """

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.aux = nn.Conv2d(backbone.num_features, 1, kernel_size=1)
        self.pretrained_cfg = getattr(backbone, "pretrained_cfg", {})

    def forward(self, x: torch.Tensor):
        features = self.backbone.forward_features(x)
        logits = self.backbone.forward_head(features)
        return (logits, self.aux(features)) if self.training else logits


@MODEL_FAMILIES.register("timm_aux_mask")
def timm_aux_mask(name: str, num_classes: int, in_chans: int, pretrained: Union[bool, str] = False) -> nn.Module:
    """A timm backbone with a fresh head and an auxiliary mask head (train.masks, search.aux_weight)."""
    backbone = timm_classifier(name, num_classes, in_chans, pretrained)
    size = (getattr(backbone, "pretrained_cfg", None) or {}).get("input_size", (in_chans, 224, 224))[1:]
    with torch.no_grad():
        features = backbone.eval().forward_features(torch.zeros(1, in_chans, *size))
    if features.ndim != 4 or features.shape[1] != backbone.num_features:
        raise ValueError(f"{name!r} has no N×C×H×W feature map for the auxiliary mask head "
                         f"(got {tuple(features.shape)}): use a convolutional backbone or search.aux_weight [0]")
    return AuxMaskModel(backbone.train())


def normalisation(model: nn.Module, channels: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Mean and std (C×1×1) the backbone was trained with, averaged to one channel for greyscale."""
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    mean = torch.tensor(cfg.get("mean", (0.5, 0.5, 0.5)), dtype=torch.float32)
    std = torch.tensor(cfg.get("std", (0.5, 0.5, 0.5)), dtype=torch.float32)
    if channels == 1:
        mean, std = mean.mean(0, keepdim=True), std.mean(0, keepdim=True)
    return mean.view(-1, 1, 1), std.view(-1, 1, 1)


class PadToMultiple(nn.Module):
    """Pads the input to a multiple of the encoder's stride and crops the output back."""

    def __init__(self, model: nn.Module, multiple: int = 32) -> None:
        super().__init__()
        self.model, self.multiple = model, multiple

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ph, pw = -h % self.multiple, -w % self.multiple
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="reflect" if min(h, w) > max(ph, pw) else "constant")
        return self.model(x)[..., :h, :w]


@MODEL_FAMILIES.register("smp")
def smp_model(name: str, num_classes: int, in_chans: int, pretrained=False) -> nn.Module:
    """segmentation_models_pytorch architecture on a timm encoder; `name` is 'arch/encoder'."""
    import segmentation_models_pytorch as smp

    arch, encoder = ModelName(name).architecture, ModelName(name).encoder
    with loading_weights(encoder, pretrained):  # a weights file: a timm checkpoint of the encoder
        net = smp.create_model(arch, encoder_name=f"tu-{encoder}", in_channels=in_chans, classes=num_classes,
                               encoder_weights=True if uses_pretrained(pretrained) else None,
                               **weights_file_overlay(pretrained))
    model = PadToMultiple(net)
    # the timm encoder's mean/std, so inputs are normalised as the pretrained encoder expects
    model.pretrained_cfg = getattr(getattr(net.encoder, "model", None), "pretrained_cfg", {})
    return model


class MaskScoreModel(nn.Module):
    """A segmentation model trained on the masks of a binary task, scoring each image by its most
    defect-like pixels: the mean logit of its top `top` share of pixels is the positive class's
    logit (the negative's is 0, so softmax gives sigmoid(score)).

    In training it returns (image logits, pixel logits) for `losses.AuxMaskLoss` (image loss +
    pixel BCE on the mask); in eval the image logits, so prediction, TTA, ensemble and report
    treat it as any classifier. A small defect on a large tile is a few pixels of the map, where a
    classifier's global pooling would average it away.
    """

    def __init__(self, net: nn.Module, top: float = 0.005) -> None:
        super().__init__()
        self.net, self.top = net, top
        self.pretrained_cfg = getattr(net, "pretrained_cfg", {})

    def forward(self, x: torch.Tensor):
        pixels = self.net(x)  # N × 1 × H × W logits
        flat = pixels.flatten(1).float()
        score = flat.topk(max(1, int(flat.shape[1] * self.top)), dim=1).values.mean(1)
        logits = torch.stack([torch.zeros_like(score), score], dim=1)
        return (logits, pixels) if self.training else logits


MASK_SCORE_WEIGHT = 1.0  # pixel loss beside the image loss, for the mask_score family


@MODEL_FAMILIES.register("smp_mask_score")
def smp_mask_score(name: str, num_classes: int, in_chans: int, pretrained=False) -> nn.Module:
    """search.families mask_score: an smp 'arch/encoder' trained on train.masks (binary tasks)."""
    if num_classes != 2:
        raise ValueError(f"the mask_score family scores binary tasks, not {num_classes} classes")
    return MaskScoreModel(smp_model(name, 1, in_chans, pretrained))


def create_model(cfg: TrialConfig, pretrained: Optional[Union[bool, str]] = None) -> nn.Module:
    """The one door to every model: the family, model name, outputs, channels and weights a trial's
    configuration names (`pretrained` replaces its weights: a checkpoint about to be loaded needs none)."""
    weights = cfg.pretrained if pretrained is None else pretrained
    return MODEL_FAMILIES.get(cfg.model_family)(cfg.backbone, cfg.num_classes, cfg.channels, weights)


def classifier_config(cfg: TrialConfig) -> Optional[TrialConfig]:
    """`cfg` as a plain timm classifier (an auxiliary mask head dropped: class probabilities are all
    a distilled student matches), or None when its family has no such form (smp models)."""
    if cfg.model_family == "timm_aux_mask":
        return replace(cfg, model_family="timm_classifier", aux_weight=0.0)
    return cfg if cfg.model_family == "timm_classifier" else None


def architectures() -> List[str]:
    import segmentation_models_pytorch as smp

    return sorted(smp.MODEL_ARCHITECTURES_MAPPING)


@lru_cache(maxsize=32)
def buildable(archs: Tuple[str, ...], encoders: Tuple[str, ...], channels: int) -> List[str]:
    """The 'arch/encoder' combinations that build and run; the search offers only these."""
    out = []
    for arch in archs:
        for encoder in encoders:
            try:
                model = smp_model(f"{arch}/{encoder}", 1, channels).eval()
                with torch.no_grad():
                    model(torch.zeros(1, channels, 64, 64))
                out.append(f"{arch}/{encoder}")
            except Exception:  # noqa: BLE001 - any failure means: not offered
                continue
    return out


def buildable_models(search: "SearchSpace", channels: int) -> List[str]:
    """The search space's 'arch/encoder' pairs that build; none is a spec error (a ViT has no
    feature pyramid), raised by `validate` and before any trial."""
    models = buildable(tuple(search.architectures), tuple(search.backbones), channels)
    if not models:
        raise SpecError(f"'search.architectures' × 'search.backbones': no combination builds with "
                        f"{channels} channel(s) ({', '.join(search.architectures)} × {', '.join(search.backbones)})")
    return models


@dataclass
class ModelChoice:
    """What a trial trains: the model name, its family (`MODEL_FAMILIES`) and the mask loss's weight."""

    name: str
    family: str
    aux_weight: float = 0.0


def choose_model(trial: Any, spec: "Competition", task: Task, channels: int,
                 backbones: Sequence[str] = ()) -> ModelChoice:
    """The trial's draw of its model, the one place a family is decided: decoders for a task whose
    labels are masks; else the spec's families (a timm classifier, with the auxiliary mask head
    when it draws a mask weight above 0, or the mask_score decoder trained on the masks).
    `backbones`: the spec's that a planned search keeps (all when empty)."""
    search = spec.search
    if backbones:
        search = replace(search, backbones=[b for b in search.backbones if b in backbones])
    if task.masks_are_labels:
        return ModelChoice(trial.suggest_categorical("model", buildable_models(search, channels)), "smp")
    families = search.families
    family = families[0] if len(families) == 1 else trial.suggest_categorical("family", families)
    if family == "mask_score":
        return ModelChoice(trial.suggest_categorical("mask_model", buildable_models(search, channels)),
                           "smp_mask_score", MASK_SCORE_WEIGHT)  # the masks are what this family learns from
    backbone = trial.suggest_categorical("backbone", search.backbones)
    if not searches_aux_head(spec):
        return ModelChoice(backbone, "timm_classifier")
    aux_weight = trial.suggest_categorical("aux_weight", search.aux_weight)
    return ModelChoice(backbone, "timm_aux_mask" if aux_weight else "timm_classifier", aux_weight)


def check_buildable(search: "SearchSpace", task: Task, channels: int) -> None:
    """Refuse, before any trial, a search space where no decoder model builds (a ViT has no feature pyramid)."""
    if task.masks_are_labels or "mask_score" in search.families:
        buildable_models(search, channels)
