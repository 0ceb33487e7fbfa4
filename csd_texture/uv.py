"""Keep usable source UVs, or unwrap with xatlas in a child process.

xatlas segfaults on some inputs (an exact subdivided icosphere, for one), so it runs in a
child process (`_xatlas_worker.py`); a crash is retried on a copy whose vertices are jittered
by a tiny fraction of an edge, and only then reported as UnwrapError.
"""
from __future__ import annotations

import dataclasses
import logging
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .datatypes import MeshData
from .errors import UnwrapError
from .mesh_io.scene import PrimitiveUV, SceneSource, SceneUV, SourcePrimitive

log = logging.getLogger(__name__)

CHART_PADDING = 10  # xatlas padding: charts end up about 2x this apart in its atlas, which is rescaled to the
# texture size: >= 16 texels apart, so the bake can pad every chart by >= 8 (bilinear, 3 mip levels).
# Textures under 512 texels get proportionally less, so small test textures keep room for charts.
MAX_CHART_FRACTION = 1 / 16  # no chart larger than this share of the surface ...
MAX_CHART_FACES = 500  # ... or than the area of this many average faces. xatlas slows down
# sharply on big charts: on a 260k-face scan, caps of 2000 / 500 / 250 faces gave 956 / 1315 /
# 2183 charts in 26 / 11 / 7 CPU seconds.
CHUNK_FACES = 50_000  # bigger meshes are cut into spatial chunks that xatlas charts in parallel
JITTERS = (0.0, 1e-2, 5e-2)  # per attempt, as a fraction of the median edge length
MIN_INSIDE = 0.95  # keep source UVs only if this share of them lies in [0, 1]
MAX_DEGENERATE = 0.1  # ... and at most this share of faces has zero area in UV space
_UV_EPS = 1e-3
_WORKER = Path(__file__).with_name("_xatlas_worker.py")
# Run the worker as a script without putting its folder (csd_texture/) or the cwd on sys.path.
_BOOTSTRAP = "import runpy, sys; sys.path[:] = [p for p in sys.path if p]; runpy.run_path(sys.argv[1], run_name='__main__')"


def prepare_uv(mesh: MeshData, keep_uv: bool = False, texture_size: int = 1024) -> MeshData:
    """The mesh with UVs: its own when `keep_uv` and they are usable, else a fresh xatlas atlas.

    Unwrapping returns a new MeshData: vertices/normals re-indexed (split along chart seams),
    uv (V, 2) float32 in [0, 1]; to_source, name, up_axis, part_names unchanged; the old
    base_color_image dropped (it belongs to the old UVs). Charts are packed for a texture of
    `texture_size` texels with >= 16 texels between charts (from 512 texels up), so each can be padded by 8."""
    if keep_uv:
        problem = uv_problem(mesh)
        if problem is None:
            return mesh
        log.warning(f"{mesh.name}: cannot keep the source UVs ({problem}); unwrapping with xatlas instead")
    return _unwrapped(mesh, texture_size)


def uv_problem(mesh: MeshData) -> str | None:
    """Why `mesh.uv` is unusable as a texture atlas, or None if it is usable."""
    uv = mesh.uv
    if uv is None:
        return "the mesh has no UVs"
    if uv.shape != (len(mesh.vertices), 2):
        return f"UV array has shape {uv.shape}, expected ({len(mesh.vertices)}, 2)"
    return atlas_problem(uv, mesh.faces)


def atlas_problem(uv: np.ndarray, faces: np.ndarray) -> str | None:
    """Why (V, 2) `uv` on (F, 3) `faces` is unusable as a texture atlas, or None if it is usable."""
    if not np.isfinite(uv).all():
        return "UVs contain NaN/inf values"
    inside = ((uv >= -_UV_EPS) & (uv <= 1 + _UV_EPS)).all(axis=1).mean()
    if inside < MIN_INSIDE:
        return f"{100 * (1 - inside):.0f}% of UVs lie outside [0, 1] (tiled or UDIM layout)"
    corners = uv.astype(np.float64)[faces]
    edges = corners[:, 1:] - corners[:, :1]
    area = np.abs(edges[:, 0, 0] * edges[:, 1, 1] - edges[:, 0, 1] * edges[:, 1, 0])
    degenerate = (area <= 1e-12).mean()
    if degenerate > MAX_DEGENERATE:
        return f"{100 * degenerate:.0f}% of faces have zero area in UV space"
    return None


def _unwrapped(mesh: MeshData, texture_size: int) -> MeshData:
    """Weld vertices with identical position and normal (old UV seams would cut charts),
    unwrap, re-index."""
    _, first, inverse = np.unique(np.hstack([mesh.vertices, mesh.normals]), axis=0, return_index=True,
                                  return_inverse=True)
    faces = inverse.reshape(-1)[mesh.faces]
    vmapping, new_faces, uv = unwrap(mesh.vertices[first], faces, texture_size)
    keep = first[vmapping]
    return dataclasses.replace(
        mesh,
        vertices=np.ascontiguousarray(mesh.vertices[keep], dtype=np.float32),
        normals=np.ascontiguousarray(mesh.normals[keep], dtype=np.float32),
        faces=new_faces,
        uv=uv,
        base_color_image=None,
    )


def unwrap(vertices: np.ndarray, faces: np.ndarray, texture_size: int = 1024) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unwrap a triangle mesh with xatlas, isolated in a child process.

    vertices: (V, 3) float; faces: (F, 3) int. Returns vmapping (N,) int64 (new vertex ->
    input vertex), faces (F, 3) int32 into the new vertices, uv (N, 2) float32 in [0, 1].
    A crash is retried on jittered copies; UnwrapError if every attempt fails."""
    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces)
    _check_input(vertices, faces)
    edge = _median_edge(vertices, faces)
    rng = np.random.default_rng(0)
    failures = []
    for attempt, jitter in enumerate(JITTERS):
        moved = vertices if jitter == 0 else vertices + rng.normal(0.0, jitter * edge, vertices.shape)
        try:
            return _run_worker(moved, faces, texture_size)
        except _WorkerFailure as failure:
            failures.append(str(failure))
            if attempt + 1 < len(JITTERS):
                log.warning(f"xatlas {failure} on {len(faces)} faces; retrying on a slightly jittered copy")
    raise UnwrapError(
        f"xatlas could not unwrap the mesh ({len(faces)} faces) in {len(JITTERS)} attempts ({failures[-1]}); "
        "remesh or simplify it, or pass --keep-uv if it has usable UVs"
    )


class _WorkerFailure(Exception):
    """One failed attempt of the xatlas child process."""


def _check_input(vertices: np.ndarray, faces: np.ndarray) -> None:
    if vertices.ndim != 2 or vertices.shape[1] != 3 or not np.isfinite(vertices).all():
        raise UnwrapError(f"unwrap needs finite (V, 3) vertices, got shape {vertices.shape}")
    if faces.ndim != 2 or faces.shape[1] != 3 or len(faces) == 0:
        raise UnwrapError(f"unwrap needs a non-empty (F, 3) face array, got shape {faces.shape}")
    if faces.min() < 0 or faces.max() >= len(vertices):
        raise UnwrapError("unwrap got face indices outside the vertex array")


def _median_edge(vertices: np.ndarray, faces: np.ndarray) -> float:
    sample = faces[:: max(1, len(faces) // 10000)]
    lengths = np.linalg.norm(vertices[sample[:, 1]] - vertices[sample[:, 0]], axis=1)
    positive = lengths[lengths > 0]
    if len(positive):
        return float(np.median(positive))
    return float(np.ptp(vertices, axis=0).max()) * 1e-3


def _surface_area(vertices: np.ndarray, faces: np.ndarray) -> float:
    a, b, c = (vertices[faces[:, i]] for i in range(3))
    return float(np.linalg.norm(np.cross(b - a, c - a), axis=1).sum() / 2)


def _chunk_labels(vertices: np.ndarray, faces: np.ndarray, size: int) -> np.ndarray:
    """(F,) int32 chunk of each face: recursive median splits of face centres along the
    longest axis until no chunk has more than `size` faces."""
    labels = np.zeros(len(faces), dtype=np.int32)
    if len(faces) <= size:
        return labels
    centres = vertices[faces].mean(axis=1)
    pending, count = [np.arange(len(faces))], 0
    while pending:
        ids = pending.pop()
        if len(ids) <= size:
            labels[ids] = count
            count += 1
            continue
        points = centres[ids]
        order = np.argsort(points[:, int(np.ptp(points, axis=0).argmax())], kind="stable")
        pending += [ids[order[: len(ids) // 2]], ids[order[len(ids) // 2 :]]]
    return labels


def _timeout(faces: int) -> float:
    """Generous wall-clock limit for one attempt: xatlas needs about a minute per 100k faces
    on a slow CPU, so this only catches hangs."""
    return 300.0 + faces / 250.0


def _run_worker(vertices: np.ndarray, faces: np.ndarray, texture_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One xatlas run in a child process; _WorkerFailure if it crashes, fails or misbehaves."""
    with tempfile.TemporaryDirectory(prefix="csd-xatlas-") as folder:
        source, target = Path(folder, "in.npz"), Path(folder, "out.npz")
        np.savez(
            source,
            vertices=vertices.astype(np.float32),
            faces=faces.astype(np.uint32),
            chunks=_chunk_labels(vertices, faces, CHUNK_FACES),
            padding=max(1, min(CHART_PADDING, texture_size * CHART_PADDING // 512)),
            resolution=texture_size,
            max_chart_area=_surface_area(vertices, faces) * min(MAX_CHART_FRACTION, MAX_CHART_FACES / len(faces)),
        )
        command = [sys.executable, "-c", _BOOTSTRAP, str(_WORKER), str(source), str(target)]
        start = time.perf_counter()
        try:
            done = subprocess.run(command, capture_output=True, timeout=_timeout(len(faces)), check=False)
        except subprocess.TimeoutExpired as exc:
            raise _WorkerFailure(f"timed out after {exc.timeout:.0f} s") from exc
        if done.returncode != 0:
            raise _WorkerFailure(_describe_exit(done.returncode, done.stderr))
        with np.load(target) as result:
            checked = _checked_result(result, len(vertices), len(faces))
            peak_mb = float(result["peak_rss_mb"])
        seconds = time.perf_counter() - start
        log.debug(
            f"xatlas unwrapped {len(faces)} faces into {len(checked[0])} vertices in {seconds:.1f} s"
            f" (peak memory {peak_mb:.0f} MB)",
            extra={"unwrap_seconds": seconds, "unwrap_peak_mb": peak_mb},
        )
        return checked


def _describe_exit(code: int, stderr: bytes) -> str:
    if code < 0:
        try:
            return f"crashed ({signal.Signals(-code).name})"
        except ValueError:
            return f"crashed (signal {-code})"
    lines = stderr.decode("utf-8", "replace").strip().splitlines()
    return f"failed (exit code {code}{': ' + lines[-1] if lines else ''})"


def _checked_result(result: np.lib.npyio.NpzFile, vertex_count: int, face_count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(vmapping int64, faces int32, uv float32) after checking the worker's output."""
    vmapping = result["vmapping"].astype(np.int64)
    faces = result["faces"].astype(np.int64).reshape(-1, 3)
    uv = result["uv"].astype(np.float32)
    if int(result["atlas_count"]) != 1:
        raise _WorkerFailure(f"produced {int(result['atlas_count'])} atlases instead of 1")
    if len(faces) != face_count or len(uv) != len(vmapping) or faces.min() < 0 or faces.max() >= len(vmapping):
        raise _WorkerFailure("returned inconsistent arrays")
    if vmapping.min() < 0 or vmapping.max() >= vertex_count:
        raise _WorkerFailure("returned a vertex mapping outside the input")
    if not np.isfinite(uv).all() or uv.min() < -_UV_EPS or uv.max() > 1 + _UV_EPS:
        raise _WorkerFailure("returned UVs outside [0, 1]")
    return vmapping, faces.astype(np.int32), np.clip(uv, 0.0, 1.0)


def scene_uv(scene: SceneSource, keep_uv: bool = False, shared: bool = False, texture_size: int = 1024) -> SceneUV:
    """UVs for every textured primitive of a glTF scene, made once per source primitive (so
    every instance of a mesh shares them).

    One map per textured material, or one for all when `shared`. With `keep_uv`, a material's
    own UVs (the TEXCOORD set its base colour texture uses, else 0) are kept when usable, and
    its vertices are left untouched; shared atlases need fresh UVs, since each material's UVs
    fill [0, 1] on their own. Otherwise the material's primitives are unwrapped together
    with xatlas, each new vertex a copy of one source vertex (split along the new seams)."""
    if keep_uv and shared and len(scene.textured) > 1:
        log.warning("--keep-uv: every material's own UVs fill [0, 1], so they cannot share one atlas;"
                    " giving each material its own maps instead of --atlas shared")
        shared = False
    groups = (scene.textured,) if shared else tuple((m,) for m in scene.textured)
    layouts: dict[tuple[int, int], PrimitiveUV] = {}
    for group, materials in enumerate(groups):
        primitives = [p for p in scene.primitives if p.material in materials]
        kept = _kept_uvs(scene, primitives, materials[0], group) if keep_uv else None
        layouts.update(kept if kept is not None else _unwrapped_group(scene, primitives, group, texture_size))
    return SceneUV(scene, layouts, groups)


def _kept_uvs(scene: SceneSource, primitives: list[SourcePrimitive], material: int | None,
              group: int) -> dict[tuple[int, int], PrimitiveUV] | None:
    """The material's own UVs, untouched, or None (with a warning) when they are unusable."""
    document = scene.document
    source_material = document["materials"][material] if material is not None else {}
    texcoord = int(source_material.get("pbrMetallicRoughness", {}).get("baseColorTexture", {}).get("texCoord", 0))
    name = scene.material_name(material)
    layouts = {}
    for primitive in primitives:
        attributes = document["meshes"][primitive.mesh]["primitives"][primitive.index]["attributes"]
        if f"TEXCOORD_{texcoord}" not in attributes:
            problem = f"a primitive of mesh {primitive.mesh} has no TEXCOORD_{texcoord}"
        else:
            stored = scene.source.accessor_float(attributes[f"TEXCOORD_{texcoord}"])
            uv = np.stack([stored[:, 0], 1.0 - stored[:, 1]], axis=1)  # glTF's UV origin is top-left
            problem = atlas_problem(uv, primitive.triangles)
        if problem is not None:
            log.warning(f"material {name!r}: cannot keep its UVs ({problem}); unwrapping it with xatlas instead")
            return None
        layouts[primitive.key] = PrimitiveUV(np.arange(primitive.vertex_count), primitive.triangles,
                                             np.clip(uv, 0.0, 1.0).astype(np.float32), False, group, texcoord)
    return layouts


def _unwrapped_group(scene: SceneSource, primitives: list[SourcePrimitive], group: int,
                     texture_size: int) -> dict[tuple[int, int], PrimitiveUV]:
    """Unwrap primitives into one map. Each is placed beside the previous one (positions only
    shape the charts), and source vertices are not welded: a vertex whose normal, colour or
    skin weights differ across an edge must stay a separate vertex, so charts also end there."""
    pieces, faces, offset, shift = [], [], 0, 0.0
    for primitive in primitives:
        attributes = scene.document["meshes"][primitive.mesh]["primitives"][primitive.index]["attributes"]
        positions = scene.source.accessor_float(attributes["POSITION"])
        low, high = positions.min(axis=0), positions.max(axis=0)
        pieces.append(positions + np.array([shift - low[0], 0.0, 0.0]))
        shift += float(high[0] - low[0]) * 1.1 + 1e-3
        faces.append(primitive.triangles + offset)
        offset += len(positions)
    vmapping, new_faces, uv = unwrap(np.concatenate(pieces), np.concatenate(faces), texture_size)
    layouts, face_start, vertex_start = {}, 0, 0
    for primitive in primitives:
        mine = new_faces[face_start : face_start + len(primitive.triangles)].astype(np.int64)
        used, local = np.unique(mine, return_inverse=True)
        layouts[primitive.key] = PrimitiveUV(vmapping[used] - vertex_start, local.reshape(-1, 3), uv[used], True, group)
        face_start += len(primitive.triangles)
        vertex_start += primitive.vertex_count
    return layouts
