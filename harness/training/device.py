"""Where training runs: the device, its DataLoader workers and its mixed precision."""
from __future__ import annotations

import os
from typing import Optional

import torch


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def cpu_share() -> int:
    """The CPU cores this process may use: all of them, or its share when it is one of several
    search workers (`HARNESS_CPUS`, set by `harness search --workers`)."""
    return max(1, int(os.environ.get("HARNESS_CPUS") or os.cpu_count() or 1))


def default_workers() -> int:
    """DataLoader workers: none on CPU (they would compete with training), up to 8 feeding a GPU."""
    return min(8, max(1, cpu_share() - 1)) if device().type == "cuda" else 0


def use_cpu_share() -> None:
    """Torch's threads to this process's share of the cores: several workers, each with threads for
    every core, would oversubscribe them. On a GPU, speed cuDNN up for the fixed training shapes."""
    if os.environ.get("HARNESS_CPUS"):
        torch.set_num_threads(cpu_share())
    if device().type == "cuda":
        torch.backends.cudnn.benchmark = True


def amp_dtype(dev: torch.device) -> Optional[torch.dtype]:
    """bf16 autocast where the GPU has it, else fp16; none on a CPU."""
    if dev.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
