"""The HTTP side of the local web app (Starlette): the page, its static files and the job API.

    POST   /api/jobs                 multipart: mesh (file), prompt, optional preset (fast,
                                     balanced, quality) and settings (JSON of Config fields,
                                     over the preset) -> 202 {"id": ...}
    GET    /api/info                 {"max_upload_bytes", "presets"}
    GET    /api/jobs                 recent jobs, newest first
    GET    /api/jobs/{id}            {"state", "progress", "error", "step", "total", "eta_s", ...}
    GET    /api/jobs/{id}/preview.png   base colour atlas, refreshed during the run
    GET    /api/jobs/{id}/result.glb    also result.gltf.zip, result.obj.zip, maps.zip, maps/NAME.png
    DELETE /api/jobs/{id}            cancel a queued or running job; remove a finished one
"""
from __future__ import annotations

import json
import logging
import shutil
import tempfile
from importlib import resources
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..config import PRESETS, Config
from ..errors import ConfigError, InputError
from ..export import MAP_NAMES
from .jobs import Job, JobStore
from .uploads import store_upload, upload_suffix
from .worker import DOWNLOADS, PREVIEW, RESULT, Workers

log = logging.getLogger(__name__)
# Settings a client may not change: the server loaded its model once, on its devices; and `region`
# names a file on the server, which a client must never choose (it could probe any path).
SERVER_SETTINGS = frozenset({"model", "model_revision", "model_family", "model_config", "loras", "controlnet",
                             "device", "renderer", "prompt", "region"})
STATIC = resources.files(__package__) / "static"


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def parse_settings(text: str | None, preset: str | None = None) -> dict:
    """The `preset` and `settings` form fields: the preset's fields overridden by a JSON object
    of Config fields, checked by Config itself."""
    if preset and preset not in PRESETS:
        raise ConfigError(f"preset: unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    base = dict(PRESETS[preset]) if preset else {}
    if not text:
        return base
    try:
        settings = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"settings: not valid JSON ({exc})") from exc
    if not isinstance(settings, dict):
        raise ConfigError("settings: expected a JSON object of setting names to values")
    fixed = sorted(SERVER_SETTINGS & set(settings))
    if fixed:
        raise ConfigError(f"settings: {', '.join(fixed)} cannot be set per job (the server chose them at start)")
    Config().updated(**{**base, **settings})  # unknown names and bad values fail here, before queueing
    return {**base, **settings}


def create_app(store: JobStore, workers: Workers, max_upload_bytes: int) -> Starlette:
    """The ASGI app over a job store and its workers."""

    async def create_job(request: Request) -> Response:
        length = request.headers.get("content-length", "")
        if not length.isdigit():
            return error(411, "uploads need a Content-Length")
        if int(length) > max_upload_bytes:
            return error(413, f"upload too large: {int(length) / 2**20:.1f} MB > {max_upload_bytes // 2**20} MB "
                              "(csd-texture serve --max-upload-mb)")
        async with request.form(max_files=1, max_fields=20) as form:
            upload, prompt = form.get("mesh"), str(form.get("prompt") or "")
            if upload is None or isinstance(upload, str):
                return error(400, "mesh: send the mesh file as the multipart field 'mesh'")
            try:
                if not prompt.strip():
                    raise ConfigError('prompt: a prompt is required: describe the texture, e.g. "a wooden chair"')
                settings = parse_settings(form.get("settings"), form.get("preset"))
                upload_suffix(upload.filename or "")
            except InputError as exc:
                return error(400, str(exc))
            job_id = store.new_id()
            folder = store.folder(job_id)
            folder.mkdir()
            with tempfile.NamedTemporaryFile(dir=folder, delete=False) as sink:  # a server-chosen name
                while chunk := await upload.read(1 << 20):
                    sink.write(chunk)
        try:
            mesh = await run_in_threadpool(store_upload, Path(sink.name), upload.filename, folder, max_upload_bytes)
        except InputError as exc:
            shutil.rmtree(folder, ignore_errors=True)
            return error(400, str(exc))
        display = Path((upload.filename or "").replace("\\", "/")).name[:200]
        store.add(Job(id=job_id, prompt=prompt, settings=settings, input_name=display, mesh=mesh))
        workers.submit(job_id)
        return JSONResponse({"id": job_id}, status_code=202)

    def find(request: Request) -> Job | JSONResponse:
        job = store.get(request.path_params["job_id"])
        return job if job is not None else error(404, f"no job {request.path_params['job_id']!r}")

    async def list_jobs(request: Request) -> Response:
        return JSONResponse({"jobs": [job.public() for job in store.recent()]})

    async def get_job(request: Request) -> Response:
        job = find(request)
        return job if isinstance(job, Response) else JSONResponse(job.public())

    async def delete_job(request: Request) -> Response:
        job = find(request)
        if isinstance(job, Response):
            return job
        if job.state in ("queued", "running"):
            return JSONResponse(store.cancel(job.id).public())
        store.remove(job.id)
        return Response(status_code=204)

    async def download(request: Request) -> Response:
        job = find(request)
        if isinstance(job, Response):
            return job
        name = request.path_params["name"]
        folder = store.folder(job.id)
        if name == PREVIEW:  # replaced while the job runs: read it whole, not streamed by its old size
            try:
                data = (folder / PREVIEW).read_bytes()
            except FileNotFoundError:
                return error(404, f"job {job.id} has no preview yet")
            return Response(data, media_type="image/png", headers={"Cache-Control": "no-store"})
        elif job.state != "done":
            return error(409, f"job {job.id} is {job.state}: no result yet" + (f" ({job.error})" if job.error else ""))
        elif name in DOWNLOADS:
            path, headers = folder / RESULT / name, {}
        elif name.startswith("maps/") and name[5:-4] in MAP_NAMES and name.endswith(".png"):
            path, headers = folder / RESULT / "maps" / name[5:], {}
        else:
            return error(404, f"no download {name!r}; try result.glb, result.gltf.zip, result.obj.zip, maps.zip")
        if not path.is_file():
            return error(404, f"job {job.id} has no {name} yet")
        return FileResponse(path, headers=headers, filename=f"{Path(job.input_name).stem or 'mesh'}-{Path(name).name}")

    async def info(request: Request) -> Response:
        return JSONResponse({"max_upload_bytes": max_upload_bytes, "presets": list(PRESETS)})

    async def index(request: Request) -> Response:
        return FileResponse(str(STATIC / "index.html"), headers={"Cache-Control": "no-cache"})

    routes = [
        Route("/", index),
        Route("/api/info", info),
        Route("/api/jobs", create_job, methods=["POST"]),
        Route("/api/jobs", list_jobs, methods=["GET"]),
        Route("/api/jobs/{job_id}", get_job, methods=["GET"]),
        Route("/api/jobs/{job_id}", delete_job, methods=["DELETE"]),
        Route("/api/jobs/{job_id}/{name:path}", download, methods=["GET"]),
        Mount("/static", StaticFiles(directory=str(STATIC)), name="static"),
    ]
    return Starlette(routes=routes)
