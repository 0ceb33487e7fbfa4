"""Worker threads of the local web app: each loads the model once on its device and runs
queued jobs one at a time with `texture_mesh`, reporting step, ETA and a preview image."""
from __future__ import annotations

import logging
import queue
import threading
import time
import zipfile
from pathlib import Path

import torch

from ..api import StepProgress, load_guidance, texture_mesh
from ..config import Config
from ..errors import CSDTextureError
from ..export import encode_png, map_images, save_maps
from ..fileio import atomic_output, atomic_write_bytes
from .jobs import CANCELLED, JobStore

log = logging.getLogger(__name__)
RESULT = "result"
PREVIEW = "preview.png"
PREVIEW_SIZE = 256
PREVIEW_EVERY_S = 2.0
DOWNLOADS = {"result.glb": "result.glb", "result.gltf.zip": "gltf", "result.obj.zip": "obj", "maps.zip": "maps"}


class Cancelled(Exception):
    """Raised from the step callback when the job was cancelled."""


class JobWarnings(logging.Handler):
    """Collects csd-texture's warnings logged by one worker thread while it runs a job, so the
    job's record shows them (a dropped material or repaired face is never silent)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.thread = threading.get_ident()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:
            self.messages.append(record.getMessage())


def worker_devices(base: Config, workers: int) -> list[str]:
    """One device per worker: cuda:0..N-1 on a CUDA machine with device auto/cuda, else the
    configured device (CPU: one worker makes sense; more share the cores)."""
    if base.device in ("auto", "cuda") and torch.cuda.is_available():
        return [f"cuda:{i % torch.cuda.device_count()}" for i in range(workers)]
    return [base.device if base.device != "auto" else "cpu"] * workers


class Workers:
    """Start one thread per device; `submit(job_id)` queues a job."""

    def __init__(self, store: JobStore, base: Config, devices: list[str]) -> None:
        self.store, self.base = store, base
        self.queue: queue.Queue[str | None] = queue.Queue()
        # Load every model before serving: a bad --model fails the command, not each job.
        self.guidance = [load_guidance(base.updated(device=device), device) for device in devices]
        self.devices = devices
        self.threads = [threading.Thread(target=self._loop, args=(i,), daemon=True, name=f"csd-worker-{i}")
                        for i in range(len(devices))]
        for thread in self.threads:
            thread.start()

    def submit(self, job_id: str) -> None:
        self.queue.put(job_id)

    def stop(self) -> None:
        for _ in self.threads:
            self.queue.put(None)

    def _loop(self, index: int) -> None:
        while (job_id := self.queue.get()) is not None:
            job = self.store.get(job_id)
            if job is None or job.state != "queued":  # cancelled while queued
                continue
            try:
                self._run(job_id, index)
            except Exception:  # noqa: BLE001 - a dead worker would leave every later job queued
                log.exception("worker %d: job %s", index, job_id)

    def _run(self, job_id: str, index: int) -> None:
        store, folder = self.store, self.store.folder(job_id)
        job = store.update(job_id, state="running", started=time.time())
        last_preview = [0.0]
        started = [0.0]

        def on_step(progress: StepProgress) -> None:
            if store.is_cancelled(job_id):
                raise Cancelled
            now = time.perf_counter()
            if progress.step == 1:
                started[0] = now
            done = progress.step - 1
            eta = (now - started[0]) / done * (progress.total - progress.step) if done > 0 else None
            store.update(job_id, persist=False, step=progress.step, total=progress.total,
                         progress=progress.step / max(progress.total, 1), eta_s=eta)
            if now - last_preview[0] >= PREVIEW_EVERY_S or progress.step == progress.total:
                last_preview[0] = now
                self._write_preview(folder, progress.preview(PREVIEW_SIZE))
                store.update(job_id, persist=False, has_preview=True)

        warnings = JobWarnings()
        package = logging.getLogger("csd_texture")
        package.addHandler(warnings)
        def scrub(text: str) -> str:
            """Messages name the upload as the client did, not by its place on the server."""
            return text.replace(str(folder / job.mesh), job.input_name).replace(str(folder) + "/", "")

        # The job's end (state, error, warnings) is one update: a client that removes a job the moment
        # it reads "failed" or "done" must not find a half-finished record, nor leave the worker
        # updating a job that is gone.
        try:
            config = self.base.updated(**job.settings).updated(prompt=job.prompt, device=self.devices[index])
            result = texture_mesh(folder / job.mesh, config=config, guidance=self.guidance[index],
                                  progress=False, on_step=on_step)
            self._write_results(result, folder / RESULT)
            self._write_preview(folder, result.maps)
            end = dict(state="done", progress=1.0, eta_s=0.0, has_preview=True)
            log.info("job %s done", job_id)
        except Cancelled:
            end = dict(state="failed", error=CANCELLED)
            log.info("job %s cancelled", job_id)
        except CSDTextureError as exc:  # the CLI's one-line message
            end = dict(state="failed", error=scrub(str(exc)))
            log.warning("job %s failed: %s", job_id, exc)
        except Exception as exc:  # noqa: BLE001 - a job never takes the server down
            log.exception("job %s failed unexpectedly", job_id)
            end = dict(state="failed", error=scrub(f"unexpected failure: {type(exc).__name__}: {exc}"))
        finally:
            package.removeHandler(warnings)
        store.update(job_id, warnings=[scrub(message) for message in warnings.messages], finished=time.time(), **end)

    @staticmethod
    def _write_preview(folder: Path, maps) -> None:
        atomic_write_bytes(folder / PREVIEW, encode_png(map_images(maps)["basecolor"]))

    @staticmethod
    def _write_results(result, folder: Path) -> None:
        """result.glb, and zips of the glTF (+.bin, PNGs), the OBJ (+.mtl, PNGs) and the maps."""
        folder.mkdir(exist_ok=True)
        result.save(folder / "result.glb")
        for kind, suffix in (("gltf", ".gltf"), ("obj", ".obj")):
            (folder / kind).mkdir(exist_ok=True)
            result.save(folder / kind / f"result{suffix}")
        save_maps(result.maps, folder / "maps", bits=result.config.map_bits)
        for name, source in DOWNLOADS.items():
            if name.endswith(".zip"):
                with atomic_output(folder / name) as temp, zipfile.ZipFile(temp, "w", zipfile.ZIP_DEFLATED) as archive:
                    for path in sorted((folder / source).iterdir()):
                        archive.write(path, path.name)
