"""uv: source UVs kept only when usable; xatlas unwraps in a child process whose crashes
become retries, never a dead test process."""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pytest
import trimesh
from scipy.spatial import cKDTree

from csd_texture import uv as uv_module
from csd_texture.errors import UnwrapError
from csd_texture.mesh_io import load_mesh
from csd_texture.uv import prepare_uv, unwrap, uv_problem

DATA = Path(__file__).parent / "data" / "meshes"


def _coverage(uv: np.ndarray, faces: np.ndarray, size: int) -> np.ndarray:
    """(size, size) count of UV triangles covering each texel centre."""
    counts = np.zeros((size, size), dtype=np.int32)
    corners = uv.astype(np.float64)[faces] * size
    for a, b, c in corners:
        low = np.floor(np.minimum(np.minimum(a, b), c)).astype(int).clip(0, size - 1)
        high = np.ceil(np.maximum(np.maximum(a, b), c)).astype(int).clip(0, size - 1)
        xs, ys = np.meshgrid(np.arange(low[0], high[0] + 1) + 0.5, np.arange(low[1], high[1] + 1) + 0.5)
        p = np.stack([xs.ravel(), ys.ravel()], axis=1)
        d = (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])
        if d == 0:
            continue
        w1 = ((p[:, 0] - a[0]) * (c[1] - a[1]) - (p[:, 1] - a[1]) * (c[0] - a[0])) / d
        w2 = ((b[0] - a[0]) * (p[:, 1] - a[1]) - (b[1] - a[1]) * (p[:, 0] - a[0])) / d
        inside = (w1 > 1e-9) & (w2 > 1e-9) & (w1 + w2 < 1 - 1e-9)
        np.add.at(counts, (p[inside, 1].astype(int), p[inside, 0].astype(int)), 1)
    return counts


def _uv_areas(uv: np.ndarray, faces: np.ndarray) -> np.ndarray:
    e = uv.astype(np.float64)[faces]
    e = e[:, 1:] - e[:, :1]
    return (e[:, 0, 0] * e[:, 1, 1] - e[:, 0, 1] * e[:, 1, 0]) / 2


@pytest.fixture(scope="module")
def duck():
    return load_mesh(DATA / "good" / "Duck.glb")


@pytest.fixture(scope="module")
def duck_unwrapped(duck):
    return prepare_uv(duck)


@pytest.fixture(scope="module")
def small_textured():
    """A box whose source UVs are a usable atlas (each face its own quarter-size square)."""
    box = trimesh.creation.box()
    vertices = box.vertices[box.faces].reshape(-1, 3)
    faces = np.arange(36).reshape(-1, 3)
    cells = np.repeat(np.arange(6), 6)
    offsets = np.stack([cells % 3, cells // 3], axis=1) / np.array([3.0, 2.0])
    corners = np.tile([[0.02, 0.02], [0.3, 0.02], [0.3, 0.45], [0.02, 0.02], [0.3, 0.45], [0.02, 0.45]], (6, 1))
    mesh = trimesh.Trimesh(vertices, faces, process=False)
    mesh.visual = trimesh.visual.TextureVisuals(uv=offsets + corners)
    return load_mesh(mesh, name="small")


def test_unwrap_keeps_geometry_and_metadata(duck, duck_unwrapped):
    new = duck_unwrapped
    assert new.vertices.dtype == np.float32 and new.normals.dtype == np.float32
    assert new.faces.dtype == np.int32 and new.uv.dtype == np.float32
    assert new.uv.shape == (len(new.vertices), 2) and new.normals.shape == new.vertices.shape
    assert new.num_faces == duck.num_faces
    assert 0.0 <= new.uv.min() and new.uv.max() <= 1.0
    # the same triangles, corner for corner, with the same normals: only the indexing changed
    np.testing.assert_array_equal(new.vertices[new.faces], duck.vertices[duck.faces])
    np.testing.assert_array_equal(new.normals[new.faces], duck.normals[duck.faces])
    assert cKDTree(duck.world_vertices()).query(new.world_vertices())[0].max() == 0.0
    assert new.to_source is duck.to_source
    assert (new.name, new.up_axis, new.part_names) == (duck.name, duck.up_axis, duck.part_names)
    assert duck.base_color_image is not None and new.base_color_image is None
    assert len(new.vertices) > len(duck.vertices) - 1  # split along chart seams, never fewer


def test_unwrap_charts_do_not_overlap(duck_unwrapped):
    mesh = duck_unwrapped
    areas = _uv_areas(mesh.uv, mesh.faces)
    assert (np.abs(areas) > 0).all()
    assert 0.3 < np.abs(areas).sum() < 1.0  # reasonably packed, and no overlap possible beyond 1
    counts = _coverage(mesh.uv, mesh.faces, 256)
    assert counts.max() == 1
    assert (counts > 0).mean() > 0.3


def test_keep_uv_returns_usable_source_uvs(duck, caplog):
    caplog.set_level(logging.WARNING)
    assert uv_problem(duck) is None
    assert prepare_uv(duck, keep_uv=True) is duck
    assert not caplog.records


@pytest.mark.parametrize("change, problem", [
    (lambda uv: None, "the mesh has no UVs"),
    (lambda uv: uv * 4.0, "lie outside [0, 1]"),
    (lambda uv: np.zeros_like(uv), "have zero area in UV space"),
    (lambda uv: np.where(np.arange(len(uv))[:, None] == 3, np.nan, uv).astype(np.float32), "NaN/inf"),
    (lambda uv: uv[:-1], "UV array has shape"),
])
def test_keep_uv_with_unusable_uvs_warns_and_unwraps(small_textured, caplog, change, problem):
    assert uv_problem(small_textured) is None
    mesh = dataclasses.replace(small_textured, uv=change(small_textured.uv))
    caplog.set_level(logging.WARNING)
    assert problem in uv_problem(mesh)
    unwrapped = prepare_uv(mesh, keep_uv=True)
    assert unwrapped is not mesh and unwrapped.uv.shape == (len(unwrapped.vertices), 2)
    assert uv_problem(unwrapped) is None
    assert [m for m in caplog.messages if m.startswith("small: cannot keep the source UVs") and problem in m]


def test_without_keep_uv_source_uvs_are_replaced(duck, duck_unwrapped):
    assert duck.uv is not None
    assert not np.array_equal(duck_unwrapped.vertices, duck.vertices)  # re-indexed by the atlas


def test_unwrap_function_contract():
    box = trimesh.creation.box()
    vmapping, faces, uv = unwrap(box.vertices, box.faces)
    assert vmapping.dtype == np.int64 and faces.dtype == np.int32 and uv.dtype == np.float32
    assert faces.shape == (12, 3) and uv.shape == (len(vmapping), 2)
    assert vmapping.min() >= 0 and vmapping.max() < 8 and set(vmapping.tolist()) == set(range(8))
    np.testing.assert_array_equal(box.vertices[vmapping][faces], box.vertices[box.faces])
    assert (np.abs(_uv_areas(uv, faces)) > 1e-4).all()


@pytest.mark.parametrize("vertices, faces, text", [
    (np.zeros((3, 3)), np.zeros((0, 3), dtype=int), "non-empty (F, 3) face array"),
    (np.full((3, 3), np.nan), np.array([[0, 1, 2]]), "finite (V, 3) vertices"),
    (np.eye(3), np.array([[0, 1, 3]]), "outside the vertex array"),
])
def test_unwrap_rejects_bad_input(vertices, faces, text):
    with pytest.raises(UnwrapError, match=text.replace("(", r"\(").replace(")", r"\)")):
        unwrap(vertices, faces)


# --- crash isolation -----------------------------------------------------------------------


def _fake_worker(tmp_path: Path, body: str) -> Path:
    """A worker script that runs `body` and then the real worker."""
    script = tmp_path / "fake_worker.py"
    real = Path(uv_module.__file__).with_name("_xatlas_worker.py")
    script.write_text(
        "import os, runpy, signal, sys, time\n"
        f"flag = {str(tmp_path / 'attempts')!r}\n"
        "attempt = len(open(flag).read()) if os.path.exists(flag) else 0\n"
        "open(flag, 'a').write('x')\n"
        f"{body}\n"
        f"runpy.run_path({str(real)!r}, run_name='__main__')\n"
    )
    return script


def test_crash_in_worker_is_retried_on_jittered_copy(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(uv_module, "_WORKER", _fake_worker(tmp_path, "if attempt == 0: os.kill(os.getpid(), signal.SIGSEGV)"))
    box = trimesh.creation.box()
    caplog.set_level(logging.WARNING)
    vmapping, faces, uv = unwrap(box.vertices, box.faces)
    assert (tmp_path / "attempts").read_text() == "xx"
    np.testing.assert_array_equal(box.vertices[vmapping][faces], box.vertices[box.faces])  # jitter not in output
    assert caplog.messages == ["xatlas crashed (SIGSEGV) on 12 faces; retrying on a slightly jittered copy"]


def test_worker_that_always_crashes_raises_unwrap_error(tmp_path, monkeypatch):
    monkeypatch.setattr(uv_module, "_WORKER", _fake_worker(tmp_path, "os.kill(os.getpid(), signal.SIGSEGV)"))
    box = trimesh.creation.box()
    with pytest.raises(UnwrapError, match=r"xatlas could not unwrap the mesh \(12 faces\) in 3 attempts \(crashed \(SIGSEGV\)\)"):
        unwrap(box.vertices, box.faces)
    assert (tmp_path / "attempts").read_text() == "xxx"


def test_worker_errors_and_hangs_become_unwrap_error(tmp_path, monkeypatch):
    box = trimesh.creation.box()
    monkeypatch.setattr(uv_module, "_WORKER", _fake_worker(tmp_path, "raise RuntimeError('bad input')"))
    with pytest.raises(UnwrapError, match=r"failed \(exit code 1: RuntimeError: bad input\)"):
        unwrap(box.vertices, box.faces)
    monkeypatch.setattr(uv_module, "_WORKER", _fake_worker(tmp_path, "time.sleep(30)"))
    monkeypatch.setattr(uv_module, "_timeout", lambda faces: 0.5)
    with pytest.raises(UnwrapError, match=r"timed out after 0 s|timed out after 1 s"):
        unwrap(box.vertices, box.faces)


@pytest.mark.parametrize("chunk_faces", [uv_module.CHUNK_FACES, 10**9])
def test_icosphere_that_crashes_xatlas_unwraps(monkeypatch, caplog, chunk_faces):
    """xatlas 0.0.11 segfaults on an exact 6-times subdivided icosphere given as one mesh;
    the retry on a jittered copy must succeed (and chunking must not break either)."""
    monkeypatch.setattr(uv_module, "CHUNK_FACES", chunk_faces)
    sphere = trimesh.creation.icosphere(subdivisions=6)
    caplog.set_level(logging.WARNING)
    mesh = prepare_uv(load_mesh(sphere, name="ico6"))
    assert mesh.num_faces == len(sphere.faces)
    assert 0.0 <= mesh.uv.min() and mesh.uv.max() <= 1.0
    assert (np.abs(_uv_areas(mesh.uv, mesh.faces)) > 0).mean() > 0.999
    assert all(m == "xatlas crashed (SIGSEGV) on 81920 faces; retrying on a slightly jittered copy"
               for m in caplog.messages)


def test_many_disconnected_parts_unwrap():
    rng = np.random.default_rng(0)
    boxes = []
    for _ in range(2000):
        box = trimesh.creation.box(extents=rng.uniform(0.2, 1.0, 3))
        box.apply_translation(rng.uniform(-30, 30, 3))
        boxes.append(box)
    mesh = prepare_uv(load_mesh(trimesh.util.concatenate(boxes), name="boxes"))
    assert mesh.num_faces == 24000
    assert len(mesh.vertices) >= 16000  # at least the 8 corners of every box
    assert 0.0 <= mesh.uv.min() and mesh.uv.max() <= 1.0
    areas = np.abs(_uv_areas(mesh.uv, mesh.faces))
    assert (areas > 0).all() and areas.sum() < 1.0


def test_big_meshes_are_unwrapped_in_chunks(monkeypatch):
    monkeypatch.setattr(uv_module, "CHUNK_FACES", 300)
    sphere = trimesh.creation.icosphere(subdivisions=3)
    vertices = sphere.vertices + np.random.default_rng(0).normal(0, 1e-3, sphere.vertices.shape)
    labels = uv_module._chunk_labels(vertices, sphere.faces, 300)
    assert labels.max() + 1 == 8 and np.bincount(labels).max() <= 300  # 1280 faces -> 8 chunks of 160
    vmapping, faces, uv = unwrap(vertices, sphere.faces)
    np.testing.assert_array_equal(vertices[vmapping][faces], vertices[sphere.faces])
    assert _coverage(uv, faces, 256).max() == 1
    assert 0.3 < np.abs(_uv_areas(uv, faces)).sum() < 1.0


def test_unwrap_welds_old_seams_but_keeps_hard_normals(small_textured, monkeypatch):
    seen = []

    def spy(vertices, faces, texture_size):
        seen.append(len(vertices))
        return unwrap(vertices, faces, texture_size)

    monkeypatch.setattr(uv_module, "unwrap", spy)
    # small_textured is split along its old UV seams: same positions, one normal per position
    assert len(small_textured.vertices) > 8
    welded = prepare_uv(small_textured)
    assert seen == [8]  # xatlas sees the closed cube, not six loose squares
    np.testing.assert_array_equal(welded.vertices[welded.faces], small_textured.vertices[small_textured.faces])
    # a hand-built cube with flat normals (split per face) keeps them
    box = trimesh.creation.box()
    flat = dataclasses.replace(
        small_textured,
        vertices=box.vertices[box.faces].reshape(-1, 3).astype(np.float32),
        faces=np.arange(36, dtype=np.int32).reshape(-1, 3),
        normals=np.repeat(box.face_normals, 3, axis=0).astype(np.float32),
        uv=None,
    )
    unwrapped = prepare_uv(flat)
    assert seen[-1] == 24  # welded only where position and normal agree
    np.testing.assert_array_equal(unwrapped.normals[unwrapped.faces], flat.normals[flat.faces])


def test_charts_leave_room_for_eight_texels_of_padding_at_the_texture_size() -> None:
    """Bilinear filtering and mipmaps need >= 8 texels of padding around every chart, so charts
    must be >= 16 texels apart in the texture the maps are baked at."""
    import scipy.sparse as sp
    import torch
    from scipy import ndimage

    from csd_texture.render.torch_rasterizer import TorchRasterizer

    size = 512
    mesh = prepare_uv(load_mesh(trimesh.creation.box()), texture_size=size)
    n, faces = len(mesh.uv), mesh.faces
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    graph = sp.coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n))
    charts, label = sp.csgraph.connected_components(graph, directed=False)
    assert charts >= 2
    pos = torch.tensor(np.c_[mesh.uv * 2 - 1, np.zeros(n), np.ones(n)], dtype=torch.float32)[None]
    triangle = TorchRasterizer().rasterize(pos, torch.from_numpy(faces), (size, size)).triangle_id[0].numpy()
    chart = np.where(triangle >= 0, label[faces[np.maximum(triangle, 0), 0]], -1)
    gaps = [ndimage.distance_transform_edt(chart != c)[(chart >= 0) & (chart != c)].min() for c in range(charts)]
    assert min(gaps) >= 16
