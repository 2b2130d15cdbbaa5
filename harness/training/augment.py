"""Augmentation policies for training, built with albumentations on uint8 HxWxC arrays.

Flips follow the spec's `orientation`: `fixed` (no flips: digits, text), `hflip` (mirror
images are valid), `free` (all 8 D4 flips/rotations: micrographs, tiles). Images arrive
already resized, so policies never change the size. For segmentation the same policy is
applied to image and mask together, followed by a random crop.

A policy may also have a batch form (the `batch` attribute of its registry entry): the same
transforms on a float N×C×H×W batch in [0, 1], run on the training device by `feed.py` so a
GPU need not wait for CPU workers. Both forms read one parameter table, so they cannot drift.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional

import albumentations as A
import torch
import torch.nn.functional as F

from ..registry import Registry

AUGMENTS = Registry("augmentation policy")

BatchAugment = Callable[[torch.Tensor, str, torch.Generator], torch.Tensor]

# shared by the albumentations and the batch forms; rotate_fixed applies when flips are not allowed
MEDIUM = dict(scale=(0.9, 1.1), translate=0.06, rotate=10, rotate_fixed=5, shear=0, affine_p=0.7,
              contrast=0.15, brightness=0.15, colour_p=0.5)
HEAVY = dict(scale=(0.8, 1.2), translate=0.1, rotate=20, rotate_fixed=8, shear=5, affine_p=0.8,
             contrast=0.25, brightness=0.25, colour_p=0.7, noise=(0.02, 0.08), noise_p=0.3,
             holes=(1, 4), hole_size=(0.05, 0.15), holes_p=0.5)


def flips(orientation: str) -> List[A.BasicTransform]:
    return {"fixed": [], "hflip": [A.HorizontalFlip(p=0.5)], "free": [A.D4(p=1.0)]}[orientation]


def _rotation(p: Dict, orientation: str) -> float:
    return p["rotate"] if orientation != "fixed" else p["rotate_fixed"]


def _affine_and_colour(p: Dict, orientation: str) -> List[A.BasicTransform]:
    rotate = _rotation(p, orientation)
    return [
        A.Affine(scale=p["scale"], keep_ratio=True, translate_percent=(-p["translate"], p["translate"]),
                 rotate=(-rotate, rotate), shear={"x": (-p["shear"], p["shear"]), "y": (0, 0)}, p=p["affine_p"]),
        A.RandomBrightnessContrast(brightness_limit=p["brightness"], contrast_limit=p["contrast"],
                                   p=p["colour_p"]),
    ]


# ---------------------------------------------------------------- batch forms (on the device)

def _chance(n: int, p: float, g: torch.Generator, dev: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=g, device=dev) < p


def _uniform(n: int, low: float, high: float, g: torch.Generator, dev: torch.device) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=g, device=dev)


def random_d4(x: torch.Tensor, g: torch.Generator, rows: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Each image (of `rows`, if given) gets one of the 8 flips/rotations, uniformly."""
    n, dev = x.shape[0], x.device
    square = x.shape[2] == x.shape[3]
    flip = _chance(n, 0.5, g, dev)
    turns = torch.randint(0, 4 if square else 1, (n,), generator=g, device=dev)
    vflip = torch.zeros_like(flip) if square else _chance(n, 0.5, g, dev)
    if rows is not None:
        flip, turns, vflip = flip & rows, turns * rows, vflip & rows
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    x = torch.where(vflip[:, None, None, None], x.flip(2), x)
    if not square:  # quarter turns would change the shape: hflip × vflip is all of the group
        return x
    out = x
    for k in (1, 2, 3):
        out = torch.where((turns == k)[:, None, None, None], torch.rot90(x, k, (2, 3)), out)
    return out


def batch_flips(x: torch.Tensor, orientation: str, g: torch.Generator) -> torch.Tensor:
    if orientation == "hflip":
        return torch.where(_chance(len(x), 0.5, g, x.device)[:, None, None, None], x.flip(3), x)
    return random_d4(x, g) if orientation == "free" else x


def batch_affine(x: torch.Tensor, p: Dict, orientation: str, g: torch.Generator) -> torch.Tensor:
    """Random scale, translation, rotation and shear (zero fill) for a `affine_p` share of the batch."""
    n, dev = len(x), x.device
    on = _chance(n, p["affine_p"], g, dev)
    rotate = _rotation(p, orientation)
    angle = torch.deg2rad(_uniform(n, -rotate, rotate, g, dev)) * on
    shear = torch.deg2rad(_uniform(n, -p["shear"], p["shear"], g, dev)) * on
    scale = torch.where(on, _uniform(n, *p["scale"], g, dev), torch.ones(n, device=dev))
    shift = _uniform(2 * n, -p["translate"], p["translate"], g, dev).view(n, 2) * 2 * on[:, None]
    cos, sin, tan = torch.cos(angle), torch.sin(angle), torch.tan(shear)
    # forward = scale · rotate · shear = s·[[a, b], [c, d]]; affine_grid maps output to input
    # coordinates, so theta holds its inverse, written out for 2×2 (det(rotate · shear) = 1)
    a, b, c, d = cos, cos * tan - sin, sin, sin * tan + cos
    inverse = torch.stack([torch.stack([d, -b], 1), torch.stack([-c, a], 1)], 1) / scale[:, None, None]
    theta = torch.cat([inverse, -(inverse @ shift[:, :, None])], dim=2)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def batch_colour(x: torch.Tensor, p: Dict, g: torch.Generator) -> torch.Tensor:
    """Brightness and contrast as albumentations does it (x·α + β, by the maximum value)."""
    n, dev = len(x), x.device
    on = _chance(n, p["colour_p"], g, dev)
    alpha = torch.where(on, 1 + _uniform(n, -p["contrast"], p["contrast"], g, dev), torch.ones(n, device=dev))
    beta = _uniform(n, -p["brightness"], p["brightness"], g, dev) * on
    return (x * alpha[:, None, None, None] + beta[:, None, None, None]).clamp_(0, 1)


def batch_noise(x: torch.Tensor, p: Dict, g: torch.Generator) -> torch.Tensor:
    n, dev = len(x), x.device
    std = _uniform(n, *p["noise"], g, dev) * _chance(n, p["noise_p"], g, dev)
    noise = torch.randn(x.shape, generator=g, device=dev, dtype=x.dtype)
    return (x + noise * std[:, None, None, None]).clamp_(0, 1)


def batch_holes(x: torch.Tensor, p: Dict, g: torch.Generator) -> torch.Tensor:
    """Up to `holes[1]` zero rectangles per image, each `hole_size` of the height and width."""
    n, _, h, w = x.shape
    dev = x.device
    count = torch.randint(p["holes"][0], p["holes"][1] + 1, (n,), generator=g, device=dev)
    count = count * _chance(n, p["holes_p"], g, dev)
    ys, xs = torch.arange(h, device=dev), torch.arange(w, device=dev)
    keep = torch.ones(n, 1, h, w, dtype=torch.bool, device=dev)
    for j in range(p["holes"][1]):
        hh = (_uniform(n, *p["hole_size"], g, dev) * h).long().clamp_(min=1)
        ww = (_uniform(n, *p["hole_size"], g, dev) * w).long().clamp_(min=1)
        y0 = (torch.rand(n, generator=g, device=dev) * (h - hh + 1)).long()
        x0 = (torch.rand(n, generator=g, device=dev) * (w - ww + 1)).long()
        inside_y = (ys[None] >= y0[:, None]) & (ys[None] < (y0 + hh)[:, None])
        inside_x = (xs[None] >= x0[:, None]) & (xs[None] < (x0 + ww)[:, None])
        hole = inside_y[:, :, None] & inside_x[:, None, :] & (j < count)[:, None, None]
        keep &= ~hole[:, None]
    return x * keep


def _light_batch(x: torch.Tensor, orientation: str, g: torch.Generator) -> torch.Tensor:
    return batch_flips(x, orientation, g)


def _medium_batch(x: torch.Tensor, orientation: str, g: torch.Generator) -> torch.Tensor:
    x = batch_affine(batch_flips(x, orientation, g), MEDIUM, orientation, g)
    return batch_colour(x, MEDIUM, g)


def _heavy_batch(x: torch.Tensor, orientation: str, g: torch.Generator) -> torch.Tensor:
    x = batch_affine(batch_flips(x, orientation, g), HEAVY, orientation, g)
    return batch_holes(batch_noise(batch_colour(x, HEAVY, g), HEAVY, g), HEAVY, g)


# ---------------------------------------------------------------- the policies

@AUGMENTS.register("none", batch=lambda x, orientation, g: x)
def no_augmentation(orientation: str) -> A.Compose:
    """No augmentation."""
    return A.Compose([])


@AUGMENTS.register("light", batch=_light_batch)
def light(orientation: str) -> A.Compose:
    """The flips the orientation allows."""
    return A.Compose(flips(orientation))


@AUGMENTS.register("medium", batch=_medium_batch)
def medium(orientation: str) -> A.Compose:
    """Flips + small affine jitter + brightness/contrast."""
    return A.Compose(flips(orientation) + _affine_and_colour(MEDIUM, orientation))


@AUGMENTS.register("heavy", batch=_heavy_batch)
def heavy(orientation: str) -> A.Compose:
    """Medium + stronger affine, noise and cut-out."""
    p = HEAVY
    return A.Compose(flips(orientation) + _affine_and_colour(p, orientation) + [
        A.GaussNoise(std_range=p["noise"], p=p["noise_p"]),
        A.CoarseDropout(num_holes_range=p["holes"], hole_height_range=p["hole_size"],
                        hole_width_range=p["hole_size"], p=p["holes_p"]),
    ])


@AUGMENTS.register("elastic")
def elastic(orientation: str) -> A.Compose:
    """Flips + elastic deformation + brightness/contrast (EM and tissue images)."""
    return A.Compose(flips(orientation) + [
        A.ElasticTransform(alpha=30, sigma=6, p=0.5),
        A.RandomBrightnessContrast(brightness_limit=0.15, contrast_limit=0.15, p=0.5),
    ])


def batch_form(policy: str) -> Optional[BatchAugment]:
    """The policy's form for float N×C×H×W batches on the device, or None (albumentations only)."""
    return getattr(AUGMENTS.get(policy), "batch", None)


def tta_views(orientation: str) -> List[str]:
    """Flip views averaged at inference: only flips the orientation allows."""
    return {"fixed": ["id"], "hflip": ["id", "hflip"], "free": ["id", "hflip", "vflip"]}[orientation]
