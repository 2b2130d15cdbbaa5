"""Classification losses: one registered factory `(class_weight) -> loss(logits, y)` each."""
from __future__ import annotations

from typing import TYPE_CHECKING, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import Registry

if TYPE_CHECKING:
    from .base import Head

LOSSES = Registry("loss")


@LOSSES.register("ce")
def cross_entropy(class_weight: Optional[torch.Tensor] = None) -> nn.Module:
    """Cross-entropy."""
    return nn.CrossEntropyLoss(weight=class_weight)


@LOSSES.register("label_smoothing")
def label_smoothing(class_weight: Optional[torch.Tensor] = None) -> nn.Module:
    """Cross-entropy with label smoothing 0.1."""
    return nn.CrossEntropyLoss(weight=class_weight, label_smoothing=0.1)


class FocalLoss(nn.Module):
    def __init__(self, gamma: float = 2.0, class_weight: Optional[torch.Tensor] = None) -> None:
        super().__init__()
        self.gamma = gamma
        self.register_buffer("class_weight", class_weight)

    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logp = F.log_softmax(logits.float(), dim=1).gather(1, y[:, None]).squeeze(1)
        loss = -((1 - logp.exp()) ** self.gamma) * logp
        if self.class_weight is not None:
            loss = loss * self.class_weight[y]
        return loss.mean()


@LOSSES.register("focal")
def focal(class_weight: Optional[torch.Tensor] = None) -> nn.Module:
    """Focal loss (gamma 2): down-weights easy examples."""
    return FocalLoss(2.0, class_weight)


class SoftF1Loss(nn.Module):
    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        p = logits.float().softmax(1)
        onehot = F.one_hot(y, p.shape[1]).float()
        tp = (p * onehot).sum(0)
        fp = (p * (1 - onehot)).sum(0)
        fn = ((1 - p) * onehot).sum(0)
        return 1 - (2 * tp / (2 * tp + fp + fn + 1e-7)).mean()


@LOSSES.register("soft_f1")
def soft_f1(class_weight: Optional[torch.Tensor] = None) -> nn.Module:
    """1 − differentiable macro-F1 (class weights do not apply: F1 already balances classes)."""
    return SoftF1Loss()


class AuxMaskLoss(nn.Module):
    """The class loss plus `weight` × BCE of the auxiliary mask head (`models.AuxMaskModel`).

    The mask is max-pooled to the head's resolution: a cell is positive when any of its pixels
    is, so small defects still count on a coarse map.
    """

    def __init__(self, class_loss: nn.Module, weight: float) -> None:
        super().__init__()
        self.class_loss, self.weight = class_loss, weight

    def forward(self, outputs, target) -> torch.Tensor:
        logits, mask_logits = outputs
        y, mask = target
        cells = F.adaptive_max_pool2d(mask.float(), mask_logits.shape[-2:])
        aux = F.binary_cross_entropy_with_logits(mask_logits.float(), cells)
        return self.class_loss(logits, y) + self.weight * aux


class MultiHeadLoss(nn.Module):
    """Each head's own loss on its columns, summed with the heads' loss weights. With
    `skip_unlabelled`, a head's loss leaves out the rows whose label is negative (a pseudo-labelled
    image that head is not sure of): set only then, since the check costs a sync a step."""

    def __init__(self, heads: List["Head"], losses: List[nn.Module]) -> None:
        super().__init__()
        self.heads = heads
        self.losses = nn.ModuleList(losses)
        self.skip_unlabelled = False

    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if not self.skip_unlabelled:
            return sum(h.loss_weight * loss(logits[:, h.cols], y[:, i])
                       for i, (h, loss) in enumerate(zip(self.heads, self.losses)))
        total = logits.new_zeros((), dtype=torch.float32)
        for i, (h, loss) in enumerate(zip(self.heads, self.losses)):
            labelled = y[:, i] >= 0
            if labelled.any():
                total = total + h.loss_weight * loss(logits[labelled][:, h.cols], y[labelled, i])
        return total


class SoftCrossEntropy(nn.Module):
    """Per head, the cross-entropy of the logits' softmax against soft targets, weighted by the
    head's loss weight: the KL divergence to the targets plus their entropy, a constant, so the
    same gradient."""

    def __init__(self, heads: List["Head"]) -> None:
        super().__init__()
        self.spans = [(h.offset, h.offset + len(h.classes), h.loss_weight) for h in heads]

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        total = logits.new_zeros((), dtype=torch.float32)
        for start, stop, weight in self.spans:
            log_p = logits[:, start:stop].float().log_softmax(1)
            total = total - weight * (target[:, start:stop].float() * log_p).sum(1).mean()
        return total


class SoftPseudoLoss(nn.Module):
    """`hard` (the trial's loss) on the rows with labels, the soft cross-entropy on the pseudo-labelled
    rows whose targets are the ensemble's probabilities, each weighted by its share of the batch.
    `target` holds each row's labels (one column per head), then its soft targets (zeros: none)."""

    def __init__(self, hard: nn.Module, heads: List["Head"]) -> None:
        super().__init__()
        self.hard, self.soft, self.n_heads = hard, SoftCrossEntropy(heads), len(heads)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        labels, soft = target[:, :self.n_heads].long(), target[:, self.n_heads:]
        is_soft = soft.sum(1) > 0
        total = logits.new_zeros((), dtype=torch.float32)
        if (~is_soft).any():
            total = total + self.hard(logits[~is_soft], labels[~is_soft]) * (~is_soft).float().mean()
        if is_soft.any():
            total = total + self.soft(logits[is_soft], soft[is_soft]) * is_soft.float().mean()
        return total
