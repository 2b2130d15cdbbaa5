"""A model name as the spec and a trial write it, read in one place."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class ModelName:
    """A timm backbone (`resnet18`), or `architecture/encoder` (`unet/resnet18`) for the decoder families."""

    text: str

    @property
    def encoder(self) -> str:
        """The timm model: the backbone itself, or the decoder's encoder (whose weights are loaded)."""
        return self.text.rsplit("/", 1)[-1]

    @property
    def architecture(self) -> Optional[str]:
        """The smp decoder, or None for a plain backbone."""
        return self.text.split("/", 1)[0] if "/" in self.text else None
