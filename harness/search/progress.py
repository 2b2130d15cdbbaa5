"""Feedback inside a fold: where it is, its last validation, and about how long it has left.

On a terminal one line is redrawn at each validation; elsewhere (a log file, CI, a worker's relayed
output) a plain line is printed at each quarter of the fold, so a log stays short.
"""
from __future__ import annotations

import sys
import time
from typing import Callable, Optional

QUARTER = 25  # percent between the plain lines of a fold


class FoldProgress:
    """`progress(share_done, score)` after each validation of one fold; `close()` when it ends."""

    def __init__(self, echo: Callable[[str], None], prefix: str, steps: int, metric: str,
                 live: Optional[bool] = None) -> None:
        self.echo, self.prefix, self.steps, self.metric = echo, prefix, steps, metric
        self.live = sys.stdout.isatty() if live is None else live
        self.start, self.next_mark, self.drawn = time.time(), QUARTER, False

    def __call__(self, done: float, score: float) -> None:
        percent = int(round(100 * done))
        elapsed = time.time() - self.start
        left = elapsed * (1 - done) / done if done > 0 else 0.0
        text = (f"{self.prefix}: {percent:3d}% (step {round(done * self.steps)} of {self.steps}), "
                f"{self.metric} {score:.4f}, {elapsed:.0f} s, about {left:.0f} s left")
        if self.live:
            sys.stdout.write("\r\033[K" + text)
            sys.stdout.flush()
            self.drawn = True
        elif percent >= self.next_mark and percent < 100:  # the fold's own line says 100 %
            self.echo(text)
            while self.next_mark <= percent:
                self.next_mark += QUARTER

    def close(self) -> None:
        """Clear the redrawn line: the fold's result line takes its place."""
        if self.drawn:
            sys.stdout.write("\r\033[K")
            sys.stdout.flush()
