"""Batch results: one AssetResult per asset, the run's report.json (and errors.log with the
tracebacks of unexpected failures) and a plain-text table."""
from __future__ import annotations

import datetime
import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..fileio import atomic_write_text
from ..version import __version__
from .planning import ERRORS_LOG, BatchItem


@dataclass(frozen=True)
class AssetResult:
    """What happened to one asset. status: succeeded, skipped, failed or pending (not run).
    `traceback`: the full traceback of a failure that was not a CSDTextureError (a bug, not bad input)."""

    asset: str
    mesh: str
    output: str
    prompt: str
    status: str
    seconds: float = 0.0
    error: str | None = None
    timings_s: dict[str, float] = field(default_factory=dict)
    traceback: str | None = None

    @classmethod
    def of(cls, item: BatchItem, status: str, seconds: float = 0.0, error: str | None = None,
           timings: dict[str, float] | None = None, traceback: str | None = None) -> "AssetResult":
        return cls(item.asset, str(item.mesh), str(item.output), item.config.prompt, status,
                   round(seconds, 3), error, dict(timings or {}), traceback)


def error_line(exc: BaseException, limit: int = 300) -> str:
    """`Type: message` on one line, at most `limit` characters of message."""
    message = " ".join(str(exc).split())
    if len(message) > limit:
        message = message[: limit - 3] + "..."
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


class BatchReport:
    """Every item's latest result plus the run's state, written atomically as JSON."""

    def __init__(self, items: Sequence[BatchItem], mode: str, workers: int | None) -> None:
        self.results = [AssetResult.of(item, "pending") for item in items]
        self._index = {str(item.output): i for i, item in enumerate(items)}
        self.mode, self.workers = mode, workers
        self.state, self.error = "running", None
        self.started = datetime.datetime.now().astimezone()
        self._clock = time.perf_counter()

    def record(self, result: AssetResult) -> None:
        self.results[self._index[result.output]] = result

    def counts(self) -> dict[str, int]:
        statuses = [r.status for r in self.results]
        return {s: statuses.count(s) for s in ("succeeded", "skipped", "failed", "pending")}

    def to_dict(self) -> dict[str, Any]:
        return {
            "generator": f"csd-texture {__version__}",
            "state": self.state,
            "error": self.error,
            "mode": self.mode,
            "workers": self.workers,
            "started": self.started.isoformat(timespec="seconds"),
            "elapsed_s": round(time.perf_counter() - self._clock, 3),
            "counts": self.counts(),
            "assets": [asdict(r) for r in self.results],
        }

    def write(self, path: Path) -> None:
        """report.json at `path`, and errors.log beside it once an asset failed unexpectedly."""
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")
        tracebacks = [f"== {r.asset} ({r.mesh})\n{r.traceback}" for r in self.results if r.traceback]
        if tracebacks:
            atomic_write_text(path.with_name(ERRORS_LOG), "\n".join(tracebacks))


def format_table(results: Iterable[AssetResult]) -> str:
    """A plain-text table: asset, status, seconds, error."""
    rows = [("asset", "status", "seconds", "error")]
    rows += [(r.asset, r.status, f"{r.seconds:.1f}", r.error or "") for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join(f"{a:<{widths[0]}}  {s:<{widths[1]}}  {t:>{widths[2]}}  {e}".rstrip() for a, s, t, e in rows)
