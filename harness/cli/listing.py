"""`harness list`: what a spec may name, a line on each; `list backbones PATTERN` searches timm.

Each registry is imported from its own module when asked for, so that listing the layouts does not
wait for torch (`preflight.REGISTRIES` holds the same registries, for checking a spec).
"""
from __future__ import annotations

import importlib
from typing import Optional

import click

from ..registry import Registry

# kind → "module:registry", as preflight.REGISTRIES names them
WHERE = {
    "tasks": "harness.tasks:TASKS", "layouts": "harness.data.layouts:LAYOUTS",
    "preparers": "harness.data.preparers:PREPARERS", "metrics": "harness.tasks.metrics:METRICS",
    "losses": "harness.tasks.losses:LOSSES", "segmentation_losses": "harness.tasks.pixels:SEG_LOSSES",
    "segmentation_metrics": "harness.tasks.pixels:SEG_METRICS", "augmentations": "harness.training.augment:AUGMENTS",
    "imbalance": "harness.training.sampling:IMBALANCE", "families": "harness.training.models:MODEL_FAMILIES",
    "pruners": "harness.search.pruners:PRUNERS", "formats": "harness.submit.formats:FORMATS",
    "recipes": "harness.training.recipes:RECIPES",
}
BACKBONES = "backbones"  # not a registry of ours: timm's models, searched by pattern


def registry(kind: str) -> Registry:
    module, _, name = WHERE[kind].partition(":")
    return getattr(importlib.import_module(module), name)


@click.command("list")
@click.argument("what", type=click.Choice(sorted([*WHERE, BACKBONES])))
@click.argument("pattern", required=False)
@click.option("--pretrained", is_flag=True, help="backbones: only those with pretrained weights (for a network).")
def list_choices(what: str, pattern: Optional[str], pretrained: bool) -> None:
    """List what a spec may name (tasks, layouts, metrics, losses, families, …) with a line on each;
    `list backbones 'resnet*'` lists the timm models a spec's search.backbones may name."""
    if what == BACKBONES:
        timm = importlib.import_module("timm")
        names = timm.list_models(pattern or "", pretrained=pretrained)
        for name in names:
            click.echo(name)
        click.echo(f"{len(names)} timm models" + (f" matching {pattern!r}" if pattern else ""), err=True)
        return
    if pattern is not None:
        raise click.UsageError(f"a pattern is for `list backbones`, not `list {what}`")
    entries = registry(what)
    for name in entries.names():
        click.echo(f"{name:18s} {entries.describe(name)}")
