"""Augmentation policies for training, built with albumentations on uint8 HxWxC arrays.

Flips follow the spec's `orientation`: `fixed` (no flips: digits, text), `hflip` (mirror
images are valid), `free` (all 8 D4 flips/rotations: micrographs, tiles). Images arrive
already resized, so policies never change the size. For segmentation the same policy is
applied to image and mask together, followed by a random crop.
"""
from __future__ import annotations

from typing import List

import albumentations as A

from .registry import Registry

AUGMENTS = Registry("augmentation policy")


def flips(orientation: str) -> List[A.BasicTransform]:
    return {"fixed": [], "hflip": [A.HorizontalFlip(p=0.5)], "free": [A.D4(p=1.0)]}[orientation]


@AUGMENTS.register("none")
def no_augmentation(orientation: str) -> A.Compose:
    """No augmentation."""
    return A.Compose([])


@AUGMENTS.register("light")
def light(orientation: str) -> A.Compose:
    """The flips the orientation allows."""
    return A.Compose(flips(orientation))


@AUGMENTS.register("medium")
def medium(orientation: str) -> A.Compose:
    """Flips + small affine jitter + brightness/contrast."""
    rotate = (-10, 10) if orientation != "fixed" else (-5, 5)
    return A.Compose(flips(orientation) + [
        A.Affine(scale=(0.9, 1.1), translate_percent=(-0.06, 0.06), rotate=rotate, p=0.7),
        A.RandomBrightnessContrast(brightness_limit=0.15, contrast_limit=0.15, p=0.5),
    ])


@AUGMENTS.register("heavy")
def heavy(orientation: str) -> A.Compose:
    """Medium + stronger affine, noise and cut-out."""
    rotate = (-20, 20) if orientation != "fixed" else (-8, 8)
    return A.Compose(flips(orientation) + [
        A.Affine(scale=(0.8, 1.2), translate_percent=(-0.1, 0.1), rotate=rotate, shear=(-5, 5), p=0.8),
        A.RandomBrightnessContrast(brightness_limit=0.25, contrast_limit=0.25, p=0.7),
        A.GaussNoise(std_range=(0.02, 0.08), p=0.3),
        A.CoarseDropout(num_holes_range=(1, 4), hole_height_range=(0.05, 0.15),
                        hole_width_range=(0.05, 0.15), p=0.5),
    ])


@AUGMENTS.register("elastic")
def elastic(orientation: str) -> A.Compose:
    """Flips + elastic deformation + brightness/contrast (EM and tissue images)."""
    return A.Compose(flips(orientation) + [
        A.ElasticTransform(alpha=30, sigma=6, p=0.5),
        A.RandomBrightnessContrast(brightness_limit=0.15, contrast_limit=0.15, p=0.5),
    ])


def tta_views(orientation: str) -> List[str]:
    """Flip views averaged at inference: only flips the orientation allows."""
    return {"fixed": ["id"], "hflip": ["id", "hflip"], "free": ["id", "hflip", "vflip"]}[orientation]
