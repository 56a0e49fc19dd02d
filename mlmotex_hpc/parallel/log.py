"""Rank-0 log lines and the one progress/ETA helper of the long stages."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

#: Seconds between progress lines (``MLMOTEX_PROGRESS_INTERVAL`` overrides).
PROGRESS_INTERVAL = 10.0


class Log:
    """Messages from rank 0 only, flushed at once (cluster logs are files)."""

    def __init__(self, comm, stream=None, quiet: bool = False):
        self.root = comm.rank == 0
        self.enabled = self.root and not quiet
        self.stream = stream or sys.stdout

    def __call__(self, message: str) -> None:
        if self.enabled:
            print(message, file=self.stream, flush=True)

    def warning(self, message: str) -> None:
        """``mlmotex-hpc: warning: MESSAGE`` on stderr, from rank 0 (also when quiet)."""
        if self.root:
            print(f"mlmotex-hpc: warning: {message}", file=sys.stderr, flush=True)


def progress_interval() -> float:
    """Seconds between progress lines (``MLMOTEX_PROGRESS_INTERVAL`` overrides)."""
    try:
        return float(os.environ.get("MLMOTEX_PROGRESS_INTERVAL", PROGRESS_INTERVAL))
    except ValueError:
        return PROGRESS_INTERVAL


class Progress:
    """Says how far a stage is, at most every :func:`progress_interval` seconds.

    ``progress(done, total)`` returns ``(fraction done, seconds elapsed, ETA in s)``
    when a line is due, else None (also once the stage is finished).
    """

    def __init__(self):
        self.t0 = self.last = time.perf_counter()
        self.interval = progress_interval()

    def __call__(self, done: float, total: float) -> tuple[float, float, float] | None:
        now = time.perf_counter()
        if done >= total or now - self.last < self.interval:
            return None
        self.last = now
        elapsed = now - self.t0
        frac = done / total
        return frac, elapsed, elapsed * (1 - frac) / max(frac, 1e-9)


def progress_lines(log: Callable[[str], None], label: str) -> Callable[[int, int], None]:
    """A ``progress(done, total)`` callback that logs the rate and ETA of a rank's share of
    motifs (the log prints on rank 0 only, so the numbers are rank 0's share)."""
    progress = Progress()

    def report(done: int, total: int) -> None:
        state = progress(done, total)
        if state is not None:
            frac, elapsed, eta = state
            log(f"{label}: {100 * frac:5.1f} % of this rank's {total:,} motifs, "
                f"{done / elapsed:,.0f} motifs/s, ETA {eta:.0f} s")

    return report
