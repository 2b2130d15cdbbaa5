"""Where training runs: the device, its DataLoader workers and its mixed precision."""
from __future__ import annotations

import os
from typing import Optional

import torch


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_workers() -> int:
    """DataLoader workers: none on CPU (they would compete with training), up to 8 feeding a GPU."""
    return min(8, max(1, (os.cpu_count() or 2) - 1)) if device().type == "cuda" else 0


def amp_dtype(dev: torch.device) -> Optional[torch.dtype]:
    """bf16 autocast where the GPU has it, else fp16; none on a CPU."""
    if dev.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
