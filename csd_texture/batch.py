"""Batch texturing: many meshes, the model loaded once per worker, a report, and resume.

Items come from a folder (every mesh inside, recursively; the prompt from a ``prompt.txt``
beside the mesh, else the run's prompt) or a manifest (``.csv`` or ``.jsonl`` rows with
``mesh``, ``prompt``, optional ``output`` and any Config field). Outputs mirror the input
tree under the output folder. Items run in this process, in spawned worker processes (one
per GPU with ``devices``), or on Ray actors; every worker loads the model once and keeps it.
A failing asset is recorded and the rest go on; ``OUTDIR/report.json`` is rewritten
atomically after every asset. Re-running skips outputs that are up to date (`is_up_to_date`).
"""
from __future__ import annotations

import csv
import datetime
import json
import logging
import multiprocessing
import os
import signal
import time
import typing
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from contextlib import closing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .api import load_guidance, texture_mesh
from .config import Config, Schedule
from .errors import BackendUnavailableError, ConfigError, CSDTextureError, InputError
from .export import SUPPORTED_SUFFIXES, output_files, read_metadata, to_jsonable
from .fileio import atomic_write_text
from .guidance.csd import CSDGuidance
from .mesh_io import SUPPORTED_EXTENSIONS, is_mesh_file
from .version import __version__

log = logging.getLogger(__name__)

REPORT_NAME = "report.json"
PROMPT_FILE = "prompt.txt"
MANIFEST_SUFFIXES = (".csv", ".jsonl")
# Settings that decide where and how a texture is computed, not what it is: the device and
# rasterizer (a run moved from cuda:0 to cuda:1, or onto Ray, is the same job) and the bit
# depth of --save-maps PNGs (outputs always embed 8-bit maps). Resume ignores them.
RESULT_NEUTRAL_SETTINGS = frozenset({"device", "renderer", "map_bits"})
_SETTING_TYPES = typing.get_type_hints(Config)
_ROW_KEYS = ("mesh", "output")
_RAY_HINT = "--ray needs Ray: pip install 'csd-texture[ray]'"


@dataclass(frozen=True)
class BatchItem:
    """One asset: the mesh, where its output goes, its whole Config and its label in reports."""

    mesh: Path
    output: Path
    config: Config
    asset: str


@dataclass(frozen=True)
class AssetResult:
    """What happened to one asset. status: succeeded, skipped, failed or pending (not run)."""

    asset: str
    mesh: str
    output: str
    prompt: str
    status: str
    seconds: float = 0.0
    error: str | None = None
    timings_s: dict[str, float] = field(default_factory=dict)

    @classmethod
    def of(cls, item: BatchItem, status: str, seconds: float = 0.0, error: str | None = None,
           timings: dict[str, float] | None = None) -> "AssetResult":
        return cls(item.asset, str(item.mesh), str(item.output), item.config.prompt, status,
                   round(seconds, 3), error, dict(timings or {}))


# ----------------------------------------------------------------------------- discovery


def discover_items(source: str | Path, output_dir: str | Path, prompt: str | None = None, *,
                   config: Config | None = None, output_format: str = "glb") -> list[BatchItem]:
    """The items of a folder (recursively) or a manifest (.csv/.jsonl), outputs under `output_dir`.

    Raises InputError/ConfigError naming the file (and manifest line) for anything unusable:
    no meshes, a mesh without a prompt, a bad manifest row, two items writing the same file.
    """
    source, output_dir = Path(source), Path(output_dir).resolve()
    base = (config or Config()).updated(prompt=prompt)
    suffix = _output_suffix(output_format)
    if source.is_dir():
        items = _folder_items(source, output_dir, base, suffix)
    elif source.is_file() and source.suffix.lower() in MANIFEST_SUFFIXES:
        items = _manifest_items(source, output_dir, base, suffix)
    elif not source.exists():
        raise InputError(f"{source}: no such folder or manifest")
    else:
        raise InputError(f"{source}: not a folder or a manifest ({', '.join(MANIFEST_SUFFIXES)})")
    check_plan(items, output_dir / REPORT_NAME)
    return items


def _output_suffix(output_format: str) -> str:
    suffix = "." + output_format.lower().lstrip(".")
    if suffix not in SUPPORTED_SUFFIXES:
        raise ConfigError(f"unsupported output format {output_format!r}; use one of {', '.join(SUPPORTED_SUFFIXES)}")
    return suffix


def _folder_items(root: Path, output_dir: Path, base: Config, suffix: str) -> list[BatchItem]:
    """Every mesh under `root` with its prompt (prompt.txt beside it, else the base prompt)."""
    meshes = find_meshes(root, exclude=output_dir)
    if not meshes:
        raise InputError(f"{root}: no mesh files ({', '.join(SUPPORTED_EXTENSIONS)}) in this folder or below")
    items, unprompted = [], []
    for mesh in meshes:
        relative = mesh.relative_to(root)
        prompt = _read_prompt(mesh.parent / PROMPT_FILE) or base.prompt
        if not prompt.strip():
            unprompted.append(relative.as_posix())
            continue
        output = (output_dir / relative).with_suffix(suffix)
        items.append(BatchItem(mesh.resolve(), output, base.updated(prompt=prompt), relative.as_posix()))
    if unprompted:
        listed = ", ".join(unprompted[:3]) + (f" and {len(unprompted) - 3} more" if len(unprompted) > 3 else "")
        raise InputError(f"{root}: no prompt for {listed}; pass --prompt or put a {PROMPT_FILE} beside them")
    return items


def find_meshes(root: Path, exclude: Path | None = None) -> list[Path]:
    """Mesh files under `root`, sorted; hidden files and folders and the `exclude` folder are skipped."""
    exclude = exclude.resolve() if exclude is not None else None
    found = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders
                               if not d.startswith(".") and (Path(folder) / d).resolve() != exclude)
        found += [Path(folder) / f for f in files if not f.startswith(".") and is_mesh_file(Path(folder) / f)]
    return sorted(found)


def _read_prompt(path: Path) -> str | None:
    """The stripped text of a prompt file, or None when it is missing or empty."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read prompt file: {exc}") from None
    return text or None


def _manifest_items(manifest: Path, output_dir: Path, base: Config, suffix: str) -> list[BatchItem]:
    """One item per manifest row; meshes relative to the manifest's folder."""
    rows = _csv_rows(manifest) if manifest.suffix.lower() == ".csv" else _jsonl_rows(manifest)
    items = [row_item(row, f"{manifest}:{line}", manifest.parent, output_dir, base, suffix) for line, row in rows]
    if not items:
        raise InputError(f"{manifest}: the manifest has no rows")
    return items


def _csv_rows(manifest: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, row) of a CSV with a header line; blank rows skipped."""
    with _open_manifest(manifest) as handle:
        reader = csv.DictReader(handle)
        columns = [_column(name) for name in reader.fieldnames or []]
        if "mesh" not in columns:
            raise ConfigError(f"{manifest}:1: the header needs a 'mesh' column (and usually 'prompt')")
        _check_columns(columns, f"{manifest}:1")
        for row in reader:
            if None in row:
                raise ConfigError(f"{manifest}:{reader.line_num}: more values than header columns")
            if any((value or "").strip() for value in row.values()):
                yield reader.line_num, row


def _jsonl_rows(manifest: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) of a JSON-lines file; blank lines skipped."""
    with _open_manifest(manifest) as handle:
        for line, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except ValueError as exc:
                raise ConfigError(f"{manifest}:{line}: not valid JSON: {exc}") from None
            if not isinstance(row, dict):
                raise ConfigError(f"{manifest}:{line}: expected a JSON object like {{\"mesh\": ..., \"prompt\": ...}}")
            yield line, row


def _open_manifest(manifest: Path) -> typing.TextIO:
    try:
        return manifest.open(encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise InputError(f"{manifest}: cannot read manifest: {exc.strerror}") from None


def row_item(row: Mapping[str, Any], where: str, root: Path, output_dir: Path | None, base: Config,
             suffix: str) -> BatchItem:
    """A manifest row (or a mapping given to texture_many) as a BatchItem; errors name `where`."""
    values = {_column(k): v for k, v in row.items() if v is not None and v != ""}
    _check_columns(values, where)
    mesh_text = str(values.pop("mesh", "")).strip()
    if not mesh_text:
        raise ConfigError(f"{where}: no mesh given")
    mesh = (root / mesh_text).resolve()
    output = _row_output(values.pop("output", None), mesh, root, output_dir, suffix, where)
    try:
        config = base.updated(**{name: _convert(name, value, where) for name, value in values.items()})
    except (TypeError, ValueError, ConfigError) as exc:
        raise ConfigError(f"{where}: {exc}") from None
    if not config.prompt.strip():
        raise ConfigError(f"{where}: no prompt; add a prompt column or pass --prompt")
    return BatchItem(mesh, output, config, mesh_text)


def _column(name: Any) -> str:
    return str(name).strip().replace("-", "_")


def _check_columns(names: Iterable[str], where: str) -> None:
    unknown = sorted(set(names) - set(_SETTING_TYPES) - set(_ROW_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown column(s) {', '.join(unknown)}; use mesh, prompt, output "
                          "or setting names such as negative_prompt, seed, steps")


def _row_output(text: Any, mesh: Path, root: Path, output_dir: Path | None, suffix: str, where: str) -> Path:
    """The row's `output` (relative to the output folder), else the mesh's path mirrored there."""
    if text is not None:
        output = Path(str(text).strip())
        if output.suffix.lower() not in SUPPORTED_SUFFIXES:
            raise ConfigError(f"{where}: output {str(text)!r} must end in {', '.join(SUPPORTED_SUFFIXES)}")
    else:
        try:
            output = mesh.relative_to(root.resolve()).with_suffix(suffix)
        except ValueError:  # a mesh outside the manifest's folder lands at the top
            output = Path(mesh.name).with_suffix(suffix)
    if output.is_absolute():
        return output.resolve()
    if output_dir is None:
        raise ConfigError(f"{where}: a relative output needs an output folder")
    return (Path(output_dir) / output).resolve()


def _convert(name: str, value: Any, where: str) -> Any:
    """A manifest value as the type of Config field `name` (CSV values are all strings)."""
    kind = _SETTING_TYPES[name]
    if kind in (int, float, bool):
        value = str(value).strip()
    elif kind is Schedule or typing.get_origin(kind) is tuple:
        return value if not isinstance(value, str) else [v.strip() for v in value.split(",")]
    elif not isinstance(value, str):
        raise ConfigError(f"{where}: {name}: expected text, got {json.dumps(value)}")
    try:
        if kind is bool:
            return {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}[value.lower()]
        return kind(value) if kind in (int, float) else value
    except (KeyError, ValueError):
        expected = {bool: "true or false", int: "a whole number", float: "a number"}[kind]
        raise ConfigError(f"{where}: {name}: expected {expected}, got {value!r}") from None


def check_plan(items: Sequence[BatchItem], report_path: Path | None = None) -> None:
    """Refuse a plan in which two items (or an item and the report) write the same file, or an
    output would replace an input mesh."""
    inputs = {item.mesh for item in items}
    owners: dict[Path, str] = {report_path.resolve(): "the batch report"} if report_path else {}
    for item in items:
        *companions, main = output_files(item.output)
        for target in (main, *companions):
            target = target.resolve()
            if target in inputs:
                raise InputError(f"{item.asset}: its output {target} would replace an input mesh; "
                                 "choose another output folder or format")
            if target in owners:
                raise InputError(f"{item.asset}: its output {target} is also written by {owners[target]}; "
                                 "give them different outputs (a manifest's output column)")
            owners[target] = item.asset


# ----------------------------------------------------------------------------- resume


def is_up_to_date(item: BatchItem) -> bool:
    """True when the item's output exists, was made from the same mesh file with the same
    settings (all but RESULT_NEUTRAL_SETTINGS), and is not older than the mesh."""
    try:
        record = read_metadata(item.output)
        newer = item.output.stat().st_mtime >= item.mesh.stat().st_mtime
    except (InputError, OSError):
        return False
    recorded = record.get("settings")
    if not isinstance(recorded, dict) or record.get("input") != str(item.mesh):
        return False
    return newer and _comparable(recorded) == _comparable(to_jsonable(item.config.to_dict()))


def _comparable(settings: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in settings.items() if k not in RESULT_NEUTRAL_SETTINGS}


# ----------------------------------------------------------------------------- one worker


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
            return AssetResult.of(item, "failed", time.perf_counter() - start, error_line(exc))
        return AssetResult.of(item, "succeeded", time.perf_counter() - start, timings=result.timings)


def error_line(exc: BaseException, limit: int = 300) -> str:
    """`Type: message` on one line, at most `limit` characters of message."""
    message = " ".join(str(exc).split())
    if len(message) > limit:
        message = message[: limit - 3] + "..."
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


# ----------------------------------------------------------------------------- runners


def _run_here(items: Sequence[BatchItem], progress: bool) -> Iterator[AssetResult]:
    """In this process, with the current asset's step bar."""
    worker = Worker(progress=progress)
    for item in items:
        yield worker.run(item)


_PROCESS_WORKER: Worker | None = None


def _run_processes(items: Sequence[BatchItem], devices: Sequence[str | None]) -> Iterator[AssetResult]:
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


def _run_ray(items: Sequence[BatchItem], address: bool | str, actors: int | None) -> Iterator[AssetResult]:
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


# ----------------------------------------------------------------------------- report


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
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")


def format_table(results: Iterable[AssetResult]) -> str:
    """A plain-text table: asset, status, seconds, error."""
    rows = [("asset", "status", "seconds", "error")]
    rows += [(r.asset, r.status, f"{r.seconds:.1f}", r.error or "") for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join(f"{a:<{widths[0]}}  {s:<{widths[1]}}  {t:>{widths[2]}}  {e}".rstrip() for a, s, t, e in rows)


# ----------------------------------------------------------------------------- public API


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
    suffix = _output_suffix(output_format)
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
        return _run_ray(todo, ray, workers)
    if mode == "processes":
        return _run_processes(todo, slots)
    return _run_here(todo, progress)


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
        log.warning("%s: failed: %s", result.asset, result.error)
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


__all__ = ["AssetResult", "BatchItem", "BatchReport", "discover_items", "format_table", "is_up_to_date",
           "texture_folder", "texture_many"]
