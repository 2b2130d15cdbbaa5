"""Where a backbone's pretrained weights come from, decided before any training.

`search.pretrained` is one of:

- `auto` (default): the backbone's weights from this machine (timm's Hugging Face or torch-hub
  cache), else training from scratch; the search says once which backbone gets which. Never
  touches the network, so a first run offline works.
- `true`: the weights must be used: from the cache, else downloaded from the hub. `validate` and
  `search` check in seconds that they are cached or the hub answers, before any training.
- `false`: from scratch.
- a path: a local weights file (one backbone); or a mapping `backbone: file`, one per backbone
  (a file cannot fit several), the backbones it leaves out following `auto`.

Each trial's configuration holds what was resolved (a file, true or false), so its digest says
which weights its folds were trained from.
"""
from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple, Union

from ..errors import SpecError
from .models import check_buildable
from .names import ModelName
from .predict import checkpoint_problem

if TYPE_CHECKING:
    from ..config.spec import SearchSpace
    from ..tasks import Task

Pretrained = Union[bool, str, Dict[str, str]]  # as the spec writes it
Resolved = Union[bool, str]  # what one model loads: false, true (the hub) or a weights file
HUB_HOST, HUB_TIMEOUT = "huggingface.co", 3.0


@dataclass(frozen=True)
class Weights:
    """`search.pretrained`, read once: auto, true, false, one weights file, or a mapping backbone → file."""

    mode: str  # "auto", "true", "false", "file" or "mapping"
    file: Optional[str] = None
    files: Tuple[Tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, value: Union[Pretrained, "Weights"]) -> "Weights":
        if isinstance(value, Weights):
            return value
        if isinstance(value, dict):
            return cls("mapping", files=tuple((str(k), str(v)) for k, v in value.items()))
        if isinstance(value, bool):
            return cls("true" if value else "false")
        text = str(value)
        return cls(text.lower()) if text.lower() in ("auto", "true", "false") else cls("file", file=text)

    @property
    def chooses(self) -> bool:
        """Whether the weights are chosen per backbone (auto, a file, a mapping): said once by the search."""
        return self.mode not in ("true", "false")

    def resolve(self, backbone: str) -> Resolved:
        """What one model loads. `backbone` is a timm name, or 'arch/encoder' for the decoder families."""
        encoder = ModelName(backbone).encoder
        if self.mode == "mapping":
            file = dict(self.files).get(encoder) or dict(self.files).get(backbone)
            return _existing(file) if file else Weights("auto").resolve(backbone)
        if self.mode == "false":
            return False
        if self.mode in ("true", "auto"):
            return cached_weights(encoder) or self.mode == "true"
        return _existing(self.file)


def cached_weights(backbone: str) -> Optional[str]:
    """The local file of the backbone's default pretrained weights, if a hub download left one here."""
    import timm
    import torch

    try:
        cfg = timm.models.get_pretrained_cfg(ModelName(backbone).encoder)
    except Exception:  # noqa: BLE001 - an unknown name has no weights to find
        return None
    if cfg is None:
        return None
    if getattr(cfg, "hf_hub_id", None):
        from huggingface_hub import try_to_load_from_cache

        for filename in ("model.safetensors", "pytorch_model.bin", getattr(cfg, "hf_hub_filename", None)):
            if filename:
                found = try_to_load_from_cache(cfg.hf_hub_id, filename)
                if isinstance(found, str):
                    return found
    url = getattr(cfg, "url", None)
    if url:
        path = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
        if path.is_file():
            return str(path)
    return None


def resolve_weights(pretrained: Union[Pretrained, Weights], backbone: str) -> Resolved:
    """What one model loads: a weights file, true (download from the hub), or false (from scratch)."""
    return Weights.parse(pretrained).resolve(backbone)


def _existing(file: str) -> str:
    path = Path(file).expanduser()
    if not path.is_file():
        raise SpecError(f"'search.pretrained': weights file {path} does not exist: give an existing file, "
                        "or auto / true / false")
    return str(path)


def weights_plan(pretrained: Union[Pretrained, Weights], backbones: List[str]) -> Dict[str, Resolved]:
    """Each backbone's resolved weights; with `true`, a backbone neither cached nor downloadable (the
    hub does not answer within seconds) is a SpecError, said before any training."""
    weights = Weights.parse(pretrained)
    encoders = {b: ModelName(b).encoder for b in backbones}
    if weights.mode == "file" and len(set(encoders.values())) > 1:
        raise SpecError(f"'search.pretrained': one weights file ({weights.file}) for several backbones "
                        f"({', '.join(backbones)}): a file fits one; give a mapping backbone: file")
    plan = {b: weights.resolve(b) for b in backbones}
    for backbone, resolved in plan.items():
        if isinstance(resolved, str) and resolved != cached_weights(encoders[backbone]):
            check_fits(encoders[backbone], resolved)
    needs_hub = [b for b, w in plan.items() if w is True]
    if needs_hub and not hub_reachable():
        raise SpecError(f"'search.pretrained': true, but the weights of {', '.join(needs_hub)} are not in this "
                        f"machine's cache and {HUB_HOST} cannot be reached: set it to auto (cached weights, "
                        "else from scratch), false, or a weights file (a mapping backbone: file for several)")
    return plan


def check_fits(backbone: str, file: str) -> None:
    """The weights file loads into the backbone (timm adapts the head and input channels), or one line
    says it does not: a trial would fail on it at once, and so would every other."""
    import timm

    try:  # without a head: a checkpoint with or without one (a segmentation encoder's) loads alike
        timm.create_model(backbone, pretrained=True, num_classes=0, pretrained_cfg_overlay={"file": file})
    except Exception as err:  # noqa: BLE001 - a mismatch shows as several error types
        first = checkpoint_problem(err)  # never timm's advice to retry with weights_only=False
        raise SpecError(f"'search.pretrained': weights file {file} does not load into {backbone} ({first}): "
                        "give that backbone's checkpoint (a mapping backbone: file for several)") from None


def hub_reachable() -> bool:
    """Whether the weights hub answers a connection within seconds (no retries)."""
    try:
        socket.create_connection((HUB_HOST, 443), timeout=HUB_TIMEOUT).close()
        return True
    except OSError:
        return False


def plan_lines(pretrained: Union[Pretrained, Weights], plan: Dict[str, Resolved]) -> List[str]:
    """What `auto` (or a mapping) chose, in a line each, as the search says it once."""
    if not Weights.parse(pretrained).chooses:
        return []
    return [f"weights of {b}: " + ("from scratch (none on this machine)" if w is False else
                                   "downloaded from the hub" if w is True else w) for b, w in plan.items()]


def uses_weights(pretrained: Union[Pretrained, Weights], backbones: List[str]) -> bool:
    """Whether any backbone starts from pretrained weights (which recipe `auto` takes)."""
    weights = Weights.parse(pretrained)
    return any(weights.resolve(b) is not False for b in backbones)


def check_trainable(search: "SearchSpace", task: "Task", channels: int) -> List[str]:
    """What only training needs, checked before any trial: every backbone's weights are there, and
    the task's models build. Returns what `auto` (or a mapping) chose for each backbone, a line each."""
    plan = weights_plan(search.pretrained, search.backbones)
    check_buildable(search, task, channels)
    return plan_lines(search.pretrained, plan)
