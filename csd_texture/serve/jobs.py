"""Jobs of the local web app: one folder and one JSON record per job, under a server-owned folder.

Job ids are generated (uuid4 hex); nothing a client sends names a path here. Records are
rewritten atomically on every change, so a page reload or a restart finds them; a restart marks
jobs that were queued or running as failed.
"""
from __future__ import annotations

import json
import logging
import re
import shutil
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..fileio import atomic_write_text

log = logging.getLogger(__name__)
JOB_ID = re.compile(r"[0-9a-f]{32}")
RECORD = "job.json"
UNFINISHED = ("queued", "running")
INTERRUPTED = "the server stopped before this job finished; submit it again"
CANCELLED = "cancelled"


@dataclass
class Job:
    """One texturing job. state: queued | running | done | failed; progress 0..1 by step."""

    id: str
    prompt: str
    settings: dict[str, Any]
    input_name: str  # the client's file name, shown only (never a path)
    mesh: str  # path of the mesh relative to the job folder, chosen by the server
    state: str = "queued"
    progress: float = 0.0
    step: int = 0
    total: int = 0
    eta_s: float | None = None
    error: str | None = None
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    has_preview: bool = False
    warnings: list[str] = field(default_factory=list)  # what csd-texture warned about while running it

    def public(self) -> dict[str, Any]:
        """The record the API returns."""
        data = asdict(self)
        del data["mesh"]
        return data


class JobStore:
    """Thread-safe jobs in memory, each mirrored to `root/ID/job.json`."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}
        self._cancelled: set[str] = set()
        self._load()

    def _load(self) -> None:
        for record in sorted(self.root.glob(f"*/{RECORD}")):
            if not JOB_ID.fullmatch(record.parent.name):
                continue
            try:
                job = Job(**json.loads(record.read_text(encoding="utf-8")))
            except (OSError, ValueError, TypeError) as exc:
                log.warning("%s: unreadable job record skipped (%s)", record, exc)
                continue
            if job.state in UNFINISHED:
                job.state, job.error, job.finished = "failed", INTERRUPTED, time.time()
                self._write(job)
            self._jobs[job.id] = job

    def folder(self, job_id: str) -> Path:
        if not JOB_ID.fullmatch(job_id):
            raise KeyError(job_id)
        return self.root / job_id

    def new_id(self) -> str:
        return uuid.uuid4().hex

    def add(self, job: Job) -> Job:
        with self._lock:
            self._jobs[job.id] = job
            self._write(job)
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def recent(self, limit: int = 50) -> list[Job]:
        with self._lock:
            return sorted(self._jobs.values(), key=lambda j: j.created, reverse=True)[:limit]

    def update(self, job_id: str, persist: bool = True, **changes: Any) -> Job:
        """Change fields of a job; `persist=False` for frequent progress updates."""
        with self._lock:
            job = self._jobs[job_id]
            for name, value in changes.items():
                setattr(job, name, value)
            if persist:
                self._write(job)
            return job

    def cancel(self, job_id: str) -> Job:
        """Queued: failed at once; running: the worker stops at its next step."""
        with self._lock:
            job = self._jobs[job_id]
            self._cancelled.add(job_id)
            if job.state == "queued":
                job.state, job.error, job.finished = "failed", CANCELLED, time.time()
                self._write(job)
            return job

    def is_cancelled(self, job_id: str) -> bool:
        with self._lock:
            return job_id in self._cancelled

    def remove(self, job_id: str) -> None:
        """Forget a finished job and delete its folder."""
        with self._lock:
            if self._jobs[job_id].state in UNFINISHED:
                raise ValueError(f"job {job_id} is {self._jobs[job_id].state}")
            self._jobs.pop(job_id)
        shutil.rmtree(self.folder(job_id), ignore_errors=True)

    def _write(self, job: Job) -> None:
        folder = self.folder(job.id)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / RECORD, json.dumps(asdict(job), indent=1))
