"""Batch texturing: many meshes, the model loaded once per worker, a report, and resume.

Items come from a folder (every mesh inside, recursively; the prompt from a ``prompt.txt``
beside the mesh, else the run's prompt) or a manifest (``.csv`` or ``.jsonl`` rows with
``mesh``, ``prompt``, optional ``output`` and any Config field). Outputs mirror the input
tree under the output folder. Items run in this process, in spawned worker processes (one
per GPU with ``devices``), or on Ray actors; every worker loads the model once and keeps it.
A failing asset is recorded and the rest go on; ``OUTDIR/report.json`` is rewritten
atomically after every asset. Re-running skips outputs that are up to date (`is_up_to_date`).

Modules: `planning` (discovery, manifests, resume), `runners` (in-process, processes, Ray)
and `report` (results, report.json); this module puts them together.
"""
from __future__ import annotations

import logging
import typing
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

from ..config import Config
from ..errors import ConfigError
from .planning import (ERRORS_LOG, MANIFEST_SUFFIXES, PROMPT_FILE, REPORT_NAME, RESULT_NEUTRAL_SETTINGS, BatchItem, check_plan,
                       discover_items, find_meshes, is_up_to_date, output_suffix, row_item)
from .report import AssetResult, BatchReport, error_line, format_table
from .runners import Worker, import_ray, run_here, run_processes, run_ray

log = logging.getLogger(__name__)


def texture_many(items: Iterable[BatchItem | Mapping[str, Any]], output_dir: str | Path | None = None, *,
                 config: Config | None = None, force: bool = False, workers: int | None = None,
                 devices: Sequence[int | str] | None = None, ray: bool | str = False, progress: bool = True,
                 output_format: str = "glb", **settings: Any) -> Iterator[AssetResult]:
    """Texture many meshes; yields each AssetResult as it finishes (up-to-date ones first, as skipped).

    `items`: BatchItems, or mappings like manifest rows (`mesh`, `prompt`, optional `output`
    and Config fields; meshes relative to the current folder, outputs relative to
    `output_dir`, by default the mesh's name with `output_format`). `config` and `settings`
    are the defaults mappings override (BatchItems carry their own Config).
    Where: this process (default); `workers` spawned processes; one process per GPU in
    `devices` (`[0, 1]`: cuda:0 and cuda:1, cycled when `workers` is larger); or Ray actors
    (`ray=True` starts a local instance or joins an initialised one; a string is an address),
    `workers` actors or one per GPU (CPU for a CPU run) of the cluster. Each worker loads the
    model once. With `output_dir`, OUTDIR/report.json is rewritten atomically after each asset.
    """
    if ray and devices:
        raise ConfigError("devices are for local runs; on Ray every actor gets one GPU from the cluster")
    if ray:
        import_ray()
    base = (config or Config()).updated(**settings)
    suffix = output_suffix(output_format)
    folder = Path(output_dir).resolve() if output_dir is not None else None
    plan = [item if isinstance(item, BatchItem) else row_item(item, f"item {n}", Path.cwd(), folder, base, suffix)
            for n, item in enumerate(items, start=1)]
    report_path = folder / REPORT_NAME if folder is not None else None
    check_plan(plan, report_path)
    slots = _worker_devices(workers, devices)
    mode = "ray" if ray else "processes" if len(slots) > 1 or devices else "in-process"
    report = BatchReport(plan, mode, workers if ray else len(slots))
    yield from _run_plan(plan, report, report_path, force, progress,
                         lambda todo: _runner(todo, mode, slots, ray, workers, progress))


def _worker_devices(workers: int | None, devices: Sequence[int | str] | None) -> list[str | None]:
    """One entry per local worker: its device (cuda:N cycled over `devices`) or None."""
    if workers is not None and workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    if not devices:
        return [None] * (workers or 1)
    names = [f"cuda:{d}" if str(d).strip().isdigit() else str(d).strip() for d in devices]
    return [names[i % len(names)] for i in range(workers or len(names))]


def _runner(todo: Sequence[BatchItem], mode: str, slots: list[str | None], ray: bool | str,
            workers: int | None, progress: bool) -> Iterator[AssetResult]:
    if mode == "ray":
        return run_ray(todo, ray, workers)
    if mode == "processes":
        return run_processes(todo, slots)
    return run_here(todo, progress)


def _run_plan(plan: list[BatchItem], report: BatchReport, report_path: Path | None, force: bool, progress: bool,
              runner: typing.Callable[[Sequence[BatchItem]], Iterator[AssetResult]]) -> Iterator[AssetResult]:
    """Skip what is up to date, run the rest; record, log and report every result."""
    from tqdm.auto import tqdm

    bar = tqdm(total=len(plan), desc="assets", unit="asset", disable=not progress, dynamic_ncols=True)
    try:
        todo = []
        for item in plan:
            if force or not is_up_to_date(item):
                todo.append(item)
                continue
            yield _note(AssetResult.of(item, "skipped"), report, bar)
        if report_path is not None:
            report.write(report_path)
        todo.sort(key=lambda item: (item.config.model, item.config.model_revision or ""))  # one model at a time
        with closing(runner(todo)) as results:
            for result in results:
                _note(result, report, bar)
                if report_path is not None:
                    report.write(report_path)
                yield result
        report.state = "finished"
    except KeyboardInterrupt:
        report.state = "interrupted"
        raise
    except Exception as exc:
        report.state, report.error = "aborted", error_line(exc)
        raise
    finally:
        bar.close()
        if report.state == "running":  # the caller stopped iterating
            report.state = "interrupted"
        if report_path is not None:
            report.write(report_path)


def _note(result: AssetResult, report: BatchReport, bar: Any) -> AssetResult:
    report.record(result)
    bar.update(1)
    if result.status == "failed":
        log.warning("%s: failed: %s%s", result.asset, result.error,
                    f" (traceback in {ERRORS_LOG} beside the report)" if result.traceback else "")
    else:
        log.info("%s: %s%s", result.asset, result.status, f" in {result.seconds:.1f} s" if result.seconds else "")
    return result


def texture_folder(source: str | Path, output_dir: str | Path, prompt: str | None = None, *,
                   config: Config | None = None, force: bool = False, workers: int | None = None,
                   devices: Sequence[int | str] | None = None, ray: bool | str = False, progress: bool = True,
                   output_format: str = "glb", **settings: Any) -> Iterator[AssetResult]:
    """Texture every mesh of a folder (recursively) or manifest into `output_dir`, mirroring the
    tree; yields results as they finish (iterate to run, e.g. `list(texture_folder(...))`).
    Options as for `texture_many`; prompts from `prompt`, a prompt.txt beside each mesh or the
    manifest's prompt column."""
    base = (config or Config()).updated(**settings)
    items = discover_items(source, output_dir, prompt, config=base, output_format=output_format)
    yield from texture_many(items, output_dir, force=force, workers=workers, devices=devices, ray=ray,
                            progress=progress, output_format=output_format)




__all__ = ["ERRORS_LOG", "MANIFEST_SUFFIXES", "PROMPT_FILE", "REPORT_NAME", "RESULT_NEUTRAL_SETTINGS", "AssetResult", "BatchItem",
           "BatchReport", "Worker", "check_plan", "discover_items", "error_line", "find_meshes", "format_table",
           "import_ray", "is_up_to_date", "row_item", "texture_folder", "texture_many"]
