"""Tasks: what a model predicts and how it is scored, one registered class each (`harness list tasks`).

`base.Task` is the interface every stage uses, with the traits they read; `rules` holds each task's
spec rules and label parsing; `classification` holds binary, multiclass and multihead,
`segmentation` binary masks. Metrics and losses are the tasks' registries.
"""
from . import classification, segmentation  # noqa: F401 - they register their tasks
from .base import TASKS, Head, Task, declares_aux_masks, searches_aux_head, task_type, uses_aux_masks
from .classification import ClassificationTask
from .segmentation import SegmentationTask

__all__ = ["TASKS", "ClassificationTask", "Head", "SegmentationTask", "Task", "declares_aux_masks",
           "searches_aux_head", "task_type", "uses_aux_masks"]
