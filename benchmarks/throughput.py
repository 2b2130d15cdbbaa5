"""Training throughput, side by side in one process, on one model, image size and data set.

(a) harness: the harness's own fit loop on a real competition; an epoch's time includes the data
    pipeline, augmentation and the validation metric
(b) ceiling: the same model training on random tensors already on the device (same batch, AMP)
(c) seed:    a seed-style loop: PIL decode per item, torchvision transforms, fp32, batch 4

    python benchmarks/throughput.py                       # GPU: resnet18 + efficientnet_b0 at 224 px on uhcs
    python benchmarks/throughput.py --models resnet10t --size 64 --epochs 2   # what a CPU can afford
    python benchmarks/throughput.py --augment-on workers    # albumentations in DataLoader workers instead
    python benchmarks/throughput.py --compile               # with torch.compile

Prints one JSON object: img/s of each loop per model, and the ratios a/b and a/c.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import timm
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from harness import open_run
from harness.config.paths import FoldPaths
from harness.data import prepare_data
from harness.data.images import load_resized
from harness.training import trial_config
from harness.training.device import amp_dtype, default_workers, device
from harness.training.feed import AUGMENT_ON, augments_on_device
from harness.training.fit import FoldData, FoldJob, fit_fold

ON_GPU = torch.cuda.is_available()


def harness_loop(run, data, model: str, size: int, batch: int, epochs: int, out: Path, augment_on: str,
                 compile: bool) -> float:
    """img/s of the harness's training epochs (median over epochs after the first): a fold of
    `epochs` epochs' steps, validated once per epoch."""
    cache = run.paths.cache_dir
    images = load_resized(data.samples.train["path"].tolist(), size, data.channels, cache)
    train_idx, val_idx = np.flatnonzero(data.fold != 0), np.flatnonzero(data.fold == 0)
    per_epoch = max(1, len(train_idx) // batch)  # full batches: the last partial one is dropped
    cfg = trial_config(backbone=model, image_size=size, augment="medium", loss=["ce"] * len(data.task.heads),
                       weight_decay=1e-4, batch_size=batch, steps=epochs * per_epoch, evals=epochs,
                       channels=data.channels,
                       orientation=run.spec.orientation, metric=run.spec.metric, num_classes=data.task.width,
                       num_workers=default_workers(), augment_on=augment_on, compile=compile)
    fit_fold(cfg, data.task, FoldData(images, data.samples.y, train_idx, val_idx), FoldJob(0, FoldPaths(out)))
    seconds = pd.read_csv(out / "history.csv")["seconds"].to_numpy()
    return per_epoch * batch / float(np.median(seconds[1:] if len(seconds) > 1 else seconds))


def ceiling_loop(model_name: str, size: int, channels: int, classes: int, batch: int, steps: int) -> float:
    """img/s of the same model on random tensors already on the device, with the harness's AMP."""
    dev = device()
    model = timm.create_model(model_name, num_classes=classes, in_chans=channels).to(
        dev, memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(batch, channels, size, size, device=dev).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (batch,), device=dev)
    amp = amp_dtype(dev)

    def step() -> None:
        with torch.autocast(dev.type, dtype=amp or torch.float32, enabled=amp is not None):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    _sync()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync()
    return batch * steps / (time.perf_counter() - start)


class SeedStyleDataset(Dataset):
    """What the seed scripts do: open and decode with PIL for every item, every epoch."""

    def __init__(self, paths, labels, size: int, channels: int) -> None:
        self.paths, self.labels, self.channels = paths, labels, channels
        self.transform = transforms.Compose([
            transforms.Resize((size, size)), transforms.RandomHorizontalFlip(), transforms.ToTensor(),
            transforms.Normalize([0.5] * channels, [0.5] * channels)])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        image = Image.open(self.paths[i]).convert("L" if self.channels == 1 else "RGB")
        return self.transform(image), int(self.labels[i])


def seed_loop(model_name: str, paths, labels, size: int, channels: int, classes: int, steps: int) -> float:
    """img/s of a PIL-per-item, fp32, batch-4 loop."""
    dev = device()
    model = timm.create_model(model_name, num_classes=classes, in_chans=channels).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loader = DataLoader(SeedStyleDataset(paths, labels, size, channels), batch_size=4, shuffle=True)
    seen, start = 0, None
    for i, (x, y) in enumerate(loader):
        if i == 2:
            _sync()
            start, seen = time.perf_counter(), 0
        loss = torch.nn.functional.cross_entropy(model(x.to(dev)), y.to(dev))
        opt.zero_grad()
        loss.backward()
        opt.step()
        seen += len(x)
        if i >= steps + 2:
            break
    _sync()
    return seen / (time.perf_counter() - start)


def _sync() -> None:
    if ON_GPU:
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--competition", default="competitions/uhcs-phase")
    parser.add_argument("--data-root")
    parser.add_argument("--models", default="resnet18,efficientnet_b0" if ON_GPU else "resnet10t")
    parser.add_argument("--size", type=int, default=224 if ON_GPU else 64)
    parser.add_argument("--batch", type=int, default=64 if ON_GPU else 32)
    parser.add_argument("--epochs", type=int, default=4 if ON_GPU else 2)
    parser.add_argument("--steps", type=int, default=50 if ON_GPU else 5, help="ceiling and seed-loop steps")
    parser.add_argument("--augment-on", default="auto", choices=AUGMENT_ON,
                        help="where the harness loop augments (auto: on the device on a GPU)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the harness loop's model")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        run = open_run(args.competition, data_root=args.data_root, run_dir=tmp)
        data = prepare_data(run)
        classes = data.task.width
        on_device = augments_on_device(args.augment_on, "medium", True, device())
        result = {"device": torch.cuda.get_device_name() if ON_GPU else "cpu", "competition": run.spec.name,
                  "size": args.size, "batch": args.batch, "augment": "medium",
                  "augment_on": "device" if on_device else "workers", "compile": args.compile, "models": {}}
        for model in args.models.split(","):
            a = harness_loop(run, data, model, args.size, args.batch, args.epochs, Path(tmp) / model,
                             args.augment_on, args.compile)
            b = ceiling_loop(model, args.size, data.channels, classes, args.batch, args.steps)
            c = seed_loop(model, data.samples.train["path"].tolist(), data.samples.y[:, 0], args.size,
                          data.channels, classes, args.steps)
            result["models"][model] = {"harness_img_s": round(a, 1), "ceiling_img_s": round(b, 1),
                                       "seed_img_s": round(c, 1), "a_over_b": round(a / b, 3),
                                       "a_over_c": round(a / c, 2)}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
