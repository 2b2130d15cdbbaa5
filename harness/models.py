"""Model families: timm backbones with a classification head, and their pretrained weights.

`pretrained` is `false` (random init), `true` (timm's hub loading, which also uses the local
Hugging Face cache when offline) or a path to a local weights file (loaded through timm's own
`pretrained_cfg_overlay=dict(file=...)`, so the head and input channels are adapted as timm does).
"""
from __future__ import annotations

from pathlib import Path
from typing import Tuple, Union

import timm
import torch
from torch import nn

from .registry import Registry

MODEL_FAMILIES = Registry("model family")


@MODEL_FAMILIES.register("timm_classifier")
def timm_classifier(name: str, num_classes: int, in_chans: int,
                    pretrained: Union[bool, str] = False) -> nn.Module:
    """Any timm backbone with a fresh `num_classes` head."""
    if isinstance(pretrained, str) and pretrained.lower() not in ("true", "false"):
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"pretrained weights file {path} does not exist")
        return timm.create_model(name, pretrained=True, num_classes=num_classes, in_chans=in_chans,
                                 pretrained_cfg_overlay={"file": str(path)})
    use_hub = pretrained is True or str(pretrained).lower() == "true"
    try:
        return timm.create_model(name, pretrained=use_hub, num_classes=num_classes, in_chans=in_chans)
    except (OSError, RuntimeError) as err:
        if not use_hub:
            raise
        raise RuntimeError(
            f"pretrained weights for {name!r} could not be loaded ({type(err).__name__}); "
            "without a network set search.pretrained to false or to a local weights file"
        ) from None


def normalisation(model: nn.Module, channels: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Mean and std (C×1×1) the backbone was trained with, averaged to one channel for greyscale."""
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    mean = torch.tensor(cfg.get("mean", (0.5, 0.5, 0.5)), dtype=torch.float32)
    std = torch.tensor(cfg.get("std", (0.5, 0.5, 0.5)), dtype=torch.float32)
    if channels == 1:
        mean, std = mean.mean(0, keepdim=True), std.mean(0, keepdim=True)
    return mean.view(-1, 1, 1), std.view(-1, 1, 1)
