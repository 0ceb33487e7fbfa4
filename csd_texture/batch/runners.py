"""Batch runners: one Worker (one loaded model) per process, run here, in spawned processes
(one per GPU with ``devices``) or on Ray actors. Each yields AssetResults as assets finish.
A model that cannot load fails the whole run; any other failure of an asset is recorded and
the rest go on.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import time
import traceback
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import torch

from ..api import load_guidance, texture_mesh
from ..config import Config
from ..errors import BackendUnavailableError, CSDTextureError
from ..guidance.csd import CSDGuidance
from .planning import BatchItem
from .report import AssetResult, error_line

log = logging.getLogger(__name__)

_RAY_HINT = "--ray needs Ray: pip install 'csd-texture[ray]'"


class _ModelCache:
    """The guidance of one process: loaded when first needed, kept for the next asset."""

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._guidance: CSDGuidance | None = None

    def get(self, config: Config) -> CSDGuidance:
        key = (config.model, config.model_revision, config.device)
        if key != self._key:
            self._guidance = None  # free the previous model before loading the next
            start = time.perf_counter()
            self._guidance = load_guidance(config)
            self._key = key
            log.info("model %s loaded in %.1f s", config.model, time.perf_counter() - start)
        return self._guidance


class Worker:
    """Textures items one by one with one loaded model; used in-process, in pool processes and
    by Ray actors. A model that cannot load raises (the whole run fails); anything else that
    goes wrong with an asset becomes a failed AssetResult."""

    def __init__(self, device: str | None = None, progress: bool = False) -> None:
        self.device = device
        self.progress = progress
        self.models = _ModelCache()

    def run(self, item: BatchItem) -> AssetResult:
        config = item.config if self.device is None else item.config.updated(device=self.device)
        guidance = self.models.get(config)
        start = time.perf_counter()
        try:
            item.output.parent.mkdir(parents=True, exist_ok=True)
            result = texture_mesh(item.mesh, output=item.output, config=config, guidance=guidance,
                                  progress=self.progress)
        except Exception as exc:  # noqa: BLE001 - one bad asset (file, xatlas, OOM) must not stop the rest
            if isinstance(exc, torch.cuda.OutOfMemoryError):
                torch.cuda.empty_cache()
            trace = None if isinstance(exc, CSDTextureError) else traceback.format_exc()  # a bug: keep the trace
            if trace is not None:
                log.debug("%s failed:\n%s", item.asset, trace)
            return AssetResult.of(item, "failed", time.perf_counter() - start, error_line(exc), traceback=trace)
        return AssetResult.of(item, "succeeded", time.perf_counter() - start, timings=result.timings)



def run_here(items: Sequence[BatchItem], progress: bool) -> Iterator[AssetResult]:
    """In this process, with the current asset's step bar."""
    worker = Worker(progress=progress)
    for item in items:
        yield worker.run(item)


_PROCESS_WORKER: Worker | None = None


def run_processes(items: Sequence[BatchItem], devices: Sequence[str | None]) -> Iterator[AssetResult]:
    """In spawned processes, one per entry of `devices` (None: the item's own device)."""
    context = multiprocessing.get_context("spawn")
    slots = context.Queue()
    for device in devices:
        slots.put(device)
    threads = max(1, (os.cpu_count() or 1) // len(devices))
    level = logging.getLogger("csd_texture").getEffectiveLevel()
    before = set(multiprocessing.active_children())
    executor = ProcessPoolExecutor(len(devices), mp_context=context, initializer=_init_process,
                                   initargs=(slots, threads, level))
    futures = {executor.submit(_run_in_process, item): item for item in items}
    try:
        for future in as_completed(futures):
            result = _process_result(future, futures[future])
            if result is not None:
                yield result
    except BaseException:  # Ctrl-C, a whole-run failure or the caller stopped: stop current assets too
        for process in set(multiprocessing.active_children()) - before:
            if process.pid is not None:
                os.kill(process.pid, signal.SIGINT)
        raise
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


def _process_result(future: Future, item: BatchItem) -> AssetResult | None:
    try:
        return future.result()
    except BrokenProcessPool as exc:
        return AssetResult.of(item, "failed", error=f"worker process died: {exc}")


def _init_process(slots: Any, threads: int, level: int) -> None:
    """Pool worker start: its device, CPU threads and log level; Ctrl-C only while working."""
    global _PROCESS_WORKER
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    logging.getLogger("csd_texture").setLevel(level)
    torch.set_num_threads(threads)
    quiet_libraries()
    _PROCESS_WORKER = Worker(device=slots.get(), progress=False)


def quiet_libraries() -> None:
    """No weight-loading bars from diffusers/transformers in workers: the driver shows progress."""
    import diffusers
    import transformers

    for library in (diffusers, transformers):
        library.utils.logging.disable_progress_bar()


def _run_in_process(item: BatchItem) -> AssetResult | None:
    """One item in a pool worker; None when interrupted (the item stays pending)."""
    signal.signal(signal.SIGINT, _interrupt_once)
    try:
        return _PROCESS_WORKER.run(item)
    except KeyboardInterrupt:
        return None
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _interrupt_once(signum: int, frame: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def import_ray() -> Any:
    """The ray module, or BackendUnavailableError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise BackendUnavailableError(_RAY_HINT) from None
    return ray


class RayWorker:
    """A Ray actor's state: one Worker, so the model stays loaded between tasks."""

    def __init__(self, device: str) -> None:
        quiet_libraries()
        self.worker = Worker(device=device, progress=False)

    def run(self, item: BatchItem) -> AssetResult:
        return self.worker.run(item)


def run_ray(items: Sequence[BatchItem], address: bool | str, actors: int | None) -> Iterator[AssetResult]:
    """Each item a task on a pool of actors asking for one GPU each (one CPU each on a CPU run)."""
    ray = import_ray()
    started = not ray.is_initialized()
    if started:
        ray.init(address=None if address in (True, "local") else address)
    handles: list = []
    try:
        gpus = int(ray.cluster_resources().get("GPU", 0))
        use_gpu = gpus > 0 and any(item.config.device != "cpu" for item in items)
        if not use_gpu and any(item.config.device.startswith("cuda") for item in items):
            raise BackendUnavailableError("--device cuda asked for, but the Ray cluster has no GPU; use --device cpu")
        count = actors or (gpus if use_gpu else int(ray.cluster_resources().get("CPU", 1)))
        resources = {"num_gpus": 1} if use_gpu else {"num_cpus": 1}
        actor_class = ray.remote(max_restarts=1, max_task_retries=1, **resources)(RayWorker)
        handles = [actor_class.remote("cuda" if use_gpu else "cpu") for _ in range(max(1, min(count, len(items))))]
        log.info("Ray: %d actor(s), one %s each", len(handles), "GPU" if use_gpu else "CPU")
        yield from _dispatch_ray(ray, handles, items)
    finally:
        for handle in handles:
            ray.kill(handle)
        if started:
            ray.shutdown()


def _dispatch_ray(ray: Any, actors: list, items: Sequence[BatchItem]) -> Iterator[AssetResult]:
    """Keep every live actor busy; an actor that died (after Ray's retries) gets no more work."""
    queue, idle, running = list(reversed(items)), list(actors), {}
    try:
        while queue or running:
            while idle and queue:
                actor, item = idle.pop(), queue.pop()
                running[actor.run.remote(item)] = (item, actor)
            if not running:  # every actor died
                yield from (AssetResult.of(item, "failed", error="no Ray worker left") for item in reversed(queue))
                return
            (done,), _ = ray.wait(list(running), num_returns=1)
            item, actor = running.pop(done)
            result, alive = _ray_result(ray, done, item)
            if alive:
                idle.append(actor)
            yield result
    except BaseException:
        for ref in running:
            ray.cancel(ref)
        raise


def _ray_result(ray: Any, ref: Any, item: BatchItem) -> tuple[AssetResult, bool]:
    """The task's result and whether its actor is still usable."""
    try:
        return ray.get(ref), True
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, CSDTextureError):  # the model could not load: the whole run fails
            raise exc.cause from None
        raise
    except ray.exceptions.RayActorError as exc:
        return AssetResult.of(item, "failed", error=error_line(exc)), False
