"""The trial configuration: everything that decides what one trial trains, and its digest."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any, List, Union

# how a fold is run, not what is trained: left out of the trial digest and the study fingerprint
HOW_FIELDS = ("num_workers", "augment_on", "compile", "heartbeat")


@dataclass
class TrialConfig:
    """Everything that decides what one trial trains; its hash names reusable fold results."""

    backbone: str
    image_size: int
    augment: str
    loss: List[str]  # one per head
    imbalance: str
    lr: float
    weight_decay: float
    batch_size: int
    steps: int  # optimizer steps of one fold
    evals: int  # validations, evenly spaced over the steps
    patience: float  # share of the steps without a better validation metric that stops the fold
    pretrained: Union[bool, str]
    tta: bool
    seed: int
    channels: int
    orientation: str
    metric: str
    num_classes: int  # outputs of all heads together
    num_workers: int = 0
    model_family: str = "timm_classifier"
    augment_on: str = "auto"  # where batches are augmented: auto, device, workers (feed.py)
    compile: bool = False  # torch.compile the model for training and prediction
    aux_weight: float = 0.0  # weight of the auxiliary mask loss (train.masks); 0: no mask head
    keep: str = "last"  # the weights that predict: last (after the last step) or best (validation)
    pseudo: str = ""  # the pseudo-label set its folds also train on (training/pseudo.py); "": none

    def digest(self) -> str:
        # how the data is loaded and the model executed is not what is trained: a fold finished on
        # another machine (other workers, no GPU, no compiler) is reused
        fields = {k: v for k, v in dataclasses.asdict(self).items() if k not in HOW_FIELDS}
        if not self.pseudo:
            del fields["pseudo"]  # the digest of every trial trained before pseudo-labels existed
        text = json.dumps(fields, sort_keys=True, default=str)
        return hashlib.sha1(text.encode()).hexdigest()[:16]


# a small CPU-sized trial: what tests and benchmarks start from, changing what they measure
SMALL = dict(backbone="resnet10t", image_size=32, augment="none", loss=["ce"], imbalance="none", lr=1e-3,
             weight_decay=1e-5, batch_size=8, steps=4, evals=1, patience=1.0, pretrained=False, tta=False, seed=0,
             channels=1, orientation="hflip", metric="accuracy", num_classes=2)


def trial_config(**fields: Any) -> TrialConfig:
    """A `TrialConfig` of `fields`, the others those of a small CPU-sized trial (`SMALL`)."""
    return TrialConfig(**{**SMALL, **fields})
