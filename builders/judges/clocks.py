"""Wall time per judge stage in a build: the union of its runs' intervals, so that runs of one
stage that overlap (the next chunk's calls going out while this chunk finishes, RLHN's stage-2
runs) count once. ``builders.build`` sets a ``StageClocks`` in ``STAGE_CLOCKS``; the annotator and
``builders.judges.scoring`` clock their runs with ``stage_clock``."""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections import Counter


class StageClocks:
    """Wall time per stage as the union of its runs' intervals: runs of one stage that overlap
    (the next chunk's calls going out while this chunk finishes) count once. A build sets one
    in ``STAGE_CLOCKS``; the annotator and ``builders.judges.scoring`` clock their runs into it."""

    def __init__(self):
        self._open: dict[str, tuple[int, float]] = {}  # stage -> (runs under way, since when)
        self.wall_s: Counter = Counter()

    def enter(self, stage: str) -> None:
        runs, since = self._open.get(stage, (0, time.monotonic()))
        self._open[stage] = (runs + 1, since)

    def exit(self, stage: str) -> None:
        runs, since = self._open[stage]
        if runs > 1:
            self._open[stage] = (runs - 1, since)
            return
        del self._open[stage]
        self.wall_s[stage] += time.monotonic() - since

    @contextlib.contextmanager
    def clocking(self, stage: str):
        self.enter(stage)
        try:
            yield
        finally:
            self.exit(stage)


STAGE_CLOCKS: contextvars.ContextVar[StageClocks | None] = contextvars.ContextVar("STAGE_CLOCKS", default=None)


def stage_clock(stage: str):
    """The build's clock for ``stage`` as a context manager (a no-op outside a build)."""
    clocks = STAGE_CLOCKS.get()
    return clocks.clocking(stage) if clocks is not None else contextlib.nullcontext()
