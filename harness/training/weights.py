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
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from ..errors import SpecError

Pretrained = Union[bool, str, Dict[str, str]]
HUB_HOST, HUB_TIMEOUT = "huggingface.co", 3.0


def cached_weights(backbone: str) -> Optional[str]:
    """The local file of the backbone's default pretrained weights, if a hub download left one here."""
    import timm
    import torch

    try:
        cfg = timm.models.get_pretrained_cfg(backbone.split("/")[-1])
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


def resolve_weights(pretrained: Pretrained, backbone: str) -> Union[bool, str]:
    """What one model loads: a weights file, true (download from the hub), or false (from scratch).
    `backbone` is a timm name, or 'arch/encoder' for the decoder families."""
    encoder = backbone.split("/")[-1]
    if isinstance(pretrained, dict):
        file = pretrained.get(encoder) or pretrained.get(backbone)
        return _existing(file) if file else resolve_weights("auto", backbone)
    if pretrained is False or str(pretrained).lower() == "false":
        return False
    if pretrained is True or str(pretrained).lower() in ("true", "auto"):
        cached = cached_weights(encoder)
        if cached:
            return cached
        return True if pretrained is True or str(pretrained).lower() == "true" else False
    return _existing(pretrained)


def _existing(file: str) -> str:
    path = Path(file).expanduser()
    if not path.is_file():
        raise SpecError(f"'search.pretrained': weights file {path} does not exist: give an existing file, "
                        "or auto / true / false")
    return str(path)


def weights_plan(pretrained: Pretrained, backbones: List[str]) -> Dict[str, Union[bool, str]]:
    """Each backbone's resolved weights; with `true`, a backbone neither cached nor downloadable (the
    hub does not answer within seconds) is a SpecError, said before any training."""
    if isinstance(pretrained, str) and _is_file_value(pretrained) and len({b.split("/")[-1] for b in backbones}) > 1:
        raise SpecError(f"'search.pretrained': one weights file ({pretrained}) for several backbones "
                        f"({', '.join(backbones)}): a file fits one; give a mapping backbone: file")
    plan = {b: resolve_weights(pretrained, b) for b in backbones}
    for backbone, weights in plan.items():
        if isinstance(weights, str) and weights != cached_weights(backbone.split("/")[-1]):
            check_fits(backbone.split("/")[-1], weights)
    needs_hub = [b for b, w in plan.items() if w is True]
    if needs_hub and not hub_reachable():
        raise SpecError(f"'search.pretrained': true, but the weights of {', '.join(needs_hub)} are not in this "
                        f"machine's cache and {HUB_HOST} cannot be reached: set it to auto (cached weights, "
                        "else from scratch), false, or a weights file (a mapping backbone: file for several)")
    return plan


def _is_file_value(value: str) -> bool:
    return value.lower() not in ("auto", "true", "false")


def check_fits(backbone: str, file: str) -> None:
    """The weights file loads into the backbone (timm adapts the head and input channels), or one line
    says it does not: a trial would fail on it at once, and so would every other."""
    import timm

    from .predict import checkpoint_problem

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


def plan_lines(pretrained: Pretrained, plan: Dict[str, Union[bool, str]]) -> List[str]:
    """What `auto` (or a mapping) chose, in a line each, as the search says it once."""
    if isinstance(pretrained, bool) or str(pretrained).lower() in ("true", "false"):
        return []
    return [f"weights of {b}: " + ("from scratch (none on this machine)" if w is False else
                                   "downloaded from the hub" if w is True else w) for b, w in plan.items()]


def uses_weights(pretrained: Any, backbones: List[str]) -> bool:
    """Whether any backbone starts from pretrained weights (which recipe `auto` takes)."""
    return any(resolve_weights(pretrained, b) is not False for b in backbones)
