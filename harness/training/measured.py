"""A measured speed, as the run dir keeps it (`speed.json`): read by the plan and by `status`, which
must not wait for torch to say it (`speed.py` measures)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Dict

if TYPE_CHECKING:
    from .config import TrialConfig


@dataclass(frozen=True)
class Speed:
    step: float  # seconds an optimizer step takes
    image: float  # seconds a validation or test image takes to predict, one view
    setup: float  # seconds a fold takes to set up: model, batches, optimiser

    def line(self, cfg: "TrialConfig") -> str:
        return (f"{cfg.backbone} at {cfg.image_size} px, batch {cfg.batch_size}: {self.step:.3g} s a step, "
                f"{1000 * self.image:.3g} ms an image to predict, {self.setup:.2g} s to set up a fold")


def read_speeds(cache: Path) -> Dict[str, dict]:
    """Measured speeds by `speed_key`; none when the file is missing or not what was written."""
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        return {}
    ok = isinstance(known, dict) and all(isinstance(v, dict) and set(v) == {"step", "image", "setup"}
                                         for v in known.values())
    return known if ok else {}
