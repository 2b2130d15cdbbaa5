"""The competition spec and the run directory: what to do, and where everything lives."""
from .paths import Run, RunPaths, resolve_run
from .spec import Competition, load_competition

__all__ = ["Competition", "Run", "RunPaths", "load_competition", "resolve_run"]
