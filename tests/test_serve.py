"""`csd-texture serve`: the job API end to end over real HTTP (uvicorn) with the tiny trained
prior, the safety of uploads (size, names, zips, bad meshes), cancel, and persistence."""
from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("starlette", reason="needs the serve extra: pip install -e '.[serve]'")
import uvicorn  # noqa: E402

from csd_texture.config import preset  # noqa: E402
from csd_texture.errors import CSDTextureError  # noqa: E402
from csd_texture.mesh_io import load_mesh  # noqa: E402
from csd_texture.serve.app import create_app  # noqa: E402
from csd_texture.serve.jobs import INTERRUPTED, Job, JobStore  # noqa: E402
from csd_texture.serve.worker import Workers  # noqa: E402

DATA = Path(__file__).parent / "data"
FUZE = DATA / "meshes" / "good" / "fuze.obj"
DUCK = DATA / "meshes" / "good" / "Duck.glb"
TINY_PRIOR = DATA / "tiny-prior"
FAST = {"steps": 3, "texture_size": 64, "render_size": 64}
MAX_UPLOAD_MB = 2
TIMEOUT_S = 180


class Client:
    """A few lines of urllib: JSON in and out, multipart uploads."""

    def __init__(self, base: str) -> None:
        self.base = base

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        req = urllib.request.Request(self.base + path, data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=60) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def json(self, method: str, path: str, **kwargs) -> tuple[int, dict]:
        status, body = self.request(method, path, **kwargs)
        return status, json.loads(body) if body else {}

    def submit(self, data: bytes, filename: str, prompt: str = "a red can", settings: dict | None = None
               ) -> tuple[int, dict]:
        boundary = uuid.uuid4().hex
        fields = [("prompt", None, prompt.encode())]
        if settings is not None:
            fields.append(("settings", None, json.dumps(settings).encode()))
        fields.append(("mesh", filename, data))
        body = b""
        for name, file_name, value in fields:
            disposition = f'form-data; name="{name}"' + (f'; filename="{file_name}"' if file_name else "")
            body += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + value + b"\r\n"
        body += f"--{boundary}--\r\n".encode()
        return self.json("POST", "/api/jobs", body=body,
                         headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})

    def wait(self, job_id: str, states: tuple[str, ...] = ("done", "failed")) -> dict:
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline:
            status, job = self.json("GET", f"/api/jobs/{job_id}")
            assert status == 200, job
            if job["state"] in states:
                return job
            time.sleep(0.2)
        pytest.fail(f"job {job_id} still {job['state']} after {TIMEOUT_S} s")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Client, JobStore]]:
    """A real uvicorn server in a thread over a fresh job folder, one CPU worker, the tiny prior."""
    root = tmp_path_factory.mktemp("serve")
    store = JobStore(root / "jobs")
    workers = Workers(store, preset("fast", model=str(TINY_PRIOR), device="cpu"), ["cpu"])
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(store, workers, MAX_UPLOAD_MB * 2**20), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        yield Client(f"http://127.0.0.1:{sock.getsockname()[1]}"), store
    finally:
        server.should_exit = True
        thread.join(10)
        workers.stop()


def zip_bytes(members: dict[str, bytes], symlinks: tuple[str, ...] = ()) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            info = zipfile.ZipInfo(name)
            if name in symlinks:
                info.external_attr = (0o120777 << 16)
            archive.writestr(info, data)
    return buffer.getvalue()


def files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*")}


def test_job_end_to_end_writes_valid_outputs(served, gltf_validator, tmp_path: Path) -> None:
    client, store = served
    outside = store.root.parent
    before = files_under(outside) - files_under(store.root)
    status, reply = client.submit(FUZE.read_bytes(), "../../x.obj", settings=FAST)
    assert status == 202, reply
    job = client.wait(reply["id"])
    assert job["state"] == "done", job
    assert job["progress"] == 1.0 and job["step"] == job["total"] == FAST["steps"] and job["error"] is None
    assert job["input_name"] == "x.obj"
    assert any("fuze.obj.mtl" in w for w in job["warnings"]), job  # its material file was not uploaded
    assert not any(str(store.root) in w for w in job["warnings"]), job  # no server paths in messages
    # the client's name decided nothing: the upload is the job folder's input/mesh.obj
    assert (store.folder(job["id"]) / "input" / "mesh.obj").read_bytes() == FUZE.read_bytes()
    assert files_under(outside) - files_under(store.root) == before and not (outside / "x.obj").exists()

    status, glb = client.request("GET", f"/api/jobs/{job['id']}/result.glb")
    assert status == 200 and glb[:4] == b"glTF"
    (tmp_path / "result.glb").write_bytes(glb)
    for kind, suffix in (("gltf", ".gltf"), ("obj", ".obj")):
        status, data = client.request("GET", f"/api/jobs/{job['id']}/result.{kind}.zip")
        assert status == 200, data
        zipfile.ZipFile(io.BytesIO(data)).extractall(tmp_path / kind)
        assert (tmp_path / kind / f"result{suffix}").is_file()
    gltf_validator(tmp_path / "result.glb", tmp_path / "gltf" / "result.gltf")
    status, data = client.request("GET", f"/api/jobs/{job['id']}/maps.zip")
    assert status == 200 and {"basecolor.png", "roughness.png", "metallic.png", "orm.png"} <= set(
        zipfile.ZipFile(io.BytesIO(data)).namelist())
    status, png = client.request("GET", f"/api/jobs/{job['id']}/maps/basecolor.png")
    assert status == 200 and png[:8] == b"\x89PNG\r\n\x1a\n"
    status, png = client.request("GET", f"/api/jobs/{job['id']}/preview.png")
    assert status == 200 and png[:8] == b"\x89PNG\r\n\x1a\n"
    status, listing = client.json("GET", "/api/jobs")
    assert job["id"] in [j["id"] for j in listing["jobs"]]


def test_three_concurrent_jobs_all_finish(served) -> None:
    client, _ = served
    ids = []
    for prompt in ("a red can", "a blue can", "a green can"):
        status, reply = client.submit(FUZE.read_bytes(), "fuze.obj", prompt=prompt, settings={**FAST, "steps": 2})
        assert status == 202, reply
        ids.append(reply["id"])
    assert len(set(ids)) == 3
    jobs = [client.wait(job_id) for job_id in ids]
    assert [j["state"] for j in jobs] == ["done"] * 3, jobs
    assert [j["prompt"] for j in jobs] == ["a red can", "a blue can", "a green can"]


def test_a_normal_map_job_serves_its_normal_map(served) -> None:
    client, _ = served
    status, reply = client.submit(FUZE.read_bytes(), "fuze.obj", settings={**FAST, "steps": 2, "normal_map": True})
    assert status == 202, reply
    job = client.wait(reply["id"])
    assert job["state"] == "done", job
    status, png = client.request("GET", f"/api/jobs/{job['id']}/maps/normal.png")
    assert status == 200 and png[:8] == b"\x89PNG\r\n\x1a\n", png[:200]
    status, data = client.request("GET", f"/api/jobs/{job['id']}/maps.zip")
    assert status == 200 and "normal.png" in zipfile.ZipFile(io.BytesIO(data)).namelist()


def test_a_bad_mesh_fails_its_job_with_the_cli_message(served, tmp_path: Path) -> None:
    client, store = served
    garbage = b"v 0 0 0\nv nan 1 0\nf 1 2 3\n"
    status, reply = client.submit(garbage, "broken.obj", settings=FAST)
    assert status == 202, reply
    job = client.wait(reply["id"])
    (tmp_path / "mesh.obj").write_bytes(garbage)
    with pytest.raises(CSDTextureError) as expected:
        load_mesh(tmp_path / "mesh.obj")
    assert job["state"] == "failed" and str(expected.value).split(": ", 1)[1] in job["error"], job
    assert job["error"].startswith("broken.obj") and str(store.root) not in job["error"], job
    assert client.json("GET", "/api/jobs")[0] == 200  # the server lives on
    status, reply = client.json("GET", f"/api/jobs/{job['id']}/result.glb")
    assert status == 409 and "failed" in reply["error"]


@pytest.mark.parametrize("filename, settings, prompt, fragment", [
    ("notes.txt", FAST, "a can", "unsupported upload"),
    ("fuze.obj", FAST, "  ", "prompt is required"),
    ("fuze.obj", {"stepz": 3}, "a can", "stepz"),
    ("fuze.obj", {"model": "/elsewhere"}, "a can", "model cannot be set per job"),
    ("fuze.obj", {"edit": True, "region": "/etc/hostname"}, "a can", "region cannot be set per job"),
    ("fuze.obj", {"texture_size": 2}, "a can", "texture_size"),
])
def test_bad_requests_are_refused_in_one_line(served, filename, settings, prompt, fragment) -> None:
    client, store = served
    jobs = len(store.recent(1000))
    status, reply = client.submit(FUZE.read_bytes(), filename, prompt=prompt, settings=settings)
    assert status == 400 and fragment in reply["error"] and "\n" not in reply["error"], reply
    assert len(store.recent(1000)) == jobs


def test_uploads_over_the_limit_are_refused(served) -> None:
    """Refused from the headers, before the body is sent (a client waiting on Expect:
    100-continue sends nothing), so a large upload costs nothing."""
    import http.client

    client, store = served
    folders = set(store.root.iterdir())
    connection = http.client.HTTPConnection(client.base.removeprefix("http://"), timeout=30)
    connection.putrequest("POST", "/api/jobs")
    connection.putheader("Content-Type", "multipart/form-data; boundary=x")
    connection.putheader("Content-Length", str(MAX_UPLOAD_MB * 2**20 + 1))
    connection.putheader("Expect", "100-continue")
    connection.endheaders()
    response = connection.getresponse()
    reply = json.loads(response.read())
    connection.close()
    assert response.status == 413 and "--max-upload-mb" in reply["error"], reply
    assert set(store.root.iterdir()) == folders


@pytest.mark.parametrize("members, symlinks, fragment", [
    ({"../evil.obj": b"v 0 0 0\n"}, (), "unsafe path"),
    ({"/tmp/evil.obj": b"v 0 0 0\n"}, (), "unsafe path"),
    ({"a/../../evil.obj": b"v 0 0 0\n"}, (), "unsafe path"),
    ({"C:/evil.obj": b"v 0 0 0\n"}, (), "unsafe path"),
    ({"mesh.obj": b"v 0 0 0\n", "link.png": b"/etc/passwd"}, ("link.png",), "symbolic links"),
    ({"a.obj": b"v 0 0 0\n", "b.obj": b"v 0 0 0\n"}, (), "exactly one mesh"),
])
def test_zip_members_stay_inside(served, members, symlinks, fragment) -> None:
    client, store = served
    outside = store.root.parent
    before = files_under(outside)
    status, reply = client.submit(zip_bytes(members, symlinks), "../../asset.zip", settings=FAST)
    assert status == 400 and fragment in reply["error"], reply
    assert files_under(outside) == before  # nothing written, nothing left behind
    assert not Path("/tmp/evil.obj").exists()


def test_zipped_gltf_with_its_files_is_textured(served, tmp_path: Path) -> None:
    """A .gltf in a subfolder of the zip, its buffer and image beside it: references resolve
    inside the upload."""
    import trimesh

    client, _ = served
    trimesh.load(DUCK, force="scene").export(tmp_path / "duck.gltf")
    members = {f"asset/{p.name}": p.read_bytes() for p in tmp_path.iterdir()}
    assert len(members) > 1  # the .gltf and its separate files
    status, reply = client.submit(zip_bytes(members), "duck.zip", settings=FAST)
    assert status == 202, reply
    assert client.wait(reply["id"])["state"] == "done"


def test_a_gltf_reference_leaving_its_upload_fails_the_job(served) -> None:
    client, _ = served
    document = {"asset": {"version": "2.0"}, "buffers": [{"uri": "../../../secret.bin", "byteLength": 36}]}
    status, reply = client.submit(json.dumps(document).encode(), "scene.gltf", settings=FAST)
    assert status == 202, reply
    job = client.wait(reply["id"])
    assert job["state"] == "failed" and "secret.bin" in job["error"], job


def test_per_part_prompts_by_material(served) -> None:
    """`parts` in the settings reach the run: a material prompt is used, and one that matches no
    material fails the job with the CLI's message naming the materials there are."""
    client, _ = served
    arm = (DATA / "meshes" / "scenes" / "skinned_arm.glb").read_bytes()
    status, reply = client.submit(arm, "arm.glb", settings={**FAST, "parts": ["Sleeve=a blue sleeve"]})
    assert status == 202, reply
    assert client.wait(reply["id"])["state"] == "done"
    status, reply = client.submit(arm, "arm.glb", settings={**FAST, "parts": ["Nope=a blue sleeve"]})
    job = client.wait(reply["id"])
    assert job["state"] == "failed" and "'Nope' match no material" in job["error"] and "Sleeve" in job["error"], job


def test_cancel_stops_a_running_job(served) -> None:
    client, _ = served
    status, reply = client.submit(FUZE.read_bytes(), "fuze.obj", settings={**FAST, "steps": 5000})
    assert status == 202
    client.wait(reply["id"], states=("running",))
    while client.json("GET", f"/api/jobs/{reply['id']}")[1]["step"] < 1:
        time.sleep(0.1)
    status, _ = client.json("DELETE", f"/api/jobs/{reply['id']}")
    assert status == 200
    job = client.wait(reply["id"])
    assert job["state"] == "failed" and job["error"] == "cancelled" and job["step"] < 5000, job
    status, _ = client.json("DELETE", f"/api/jobs/{reply['id']}")  # a finished job is removed
    assert status == 204 and client.json("GET", f"/api/jobs/{reply['id']}")[0] == 404


class ImpatientStore(JobStore):
    """A client that removes each job the instant it reads it finished, as a script polling and
    deleting does; before the fix, the worker still updated the job afterwards and died."""

    def update(self, job_id: str, persist: bool = True, **changes) -> Job:
        job = super().update(job_id, persist, **changes)
        if job.state in ("done", "failed"):
            self.remove(job_id)
        return job


def test_worker_survives_a_job_removed_the_moment_it_ends(tmp_path: Path) -> None:
    store = ImpatientStore(tmp_path)
    workers = Workers(store, preset("fast", model=str(TINY_PRIOR), device="cpu"), ["cpu"])
    try:
        ids = []
        for mesh in (b"not a mesh", FUZE.read_bytes()):  # one fails, the next must still run
            job = Job(id=store.new_id(), prompt="a red can", settings=FAST, input_name="a.obj", mesh="input/mesh.obj")
            (tmp_path / job.id / "input").mkdir(parents=True)
            (tmp_path / job.id / "input" / "mesh.obj").write_bytes(mesh)
            ids.append(store.add(job).id)
            workers.submit(job.id)
        deadline = time.monotonic() + TIMEOUT_S
        while any(store.get(i) is not None for i in ids):
            assert time.monotonic() < deadline, [store.get(i) for i in ids]
            time.sleep(0.1)
        assert all(thread.is_alive() for thread in workers.threads)
    finally:
        workers.stop()


def test_a_running_job_is_not_removed(tmp_path: Path) -> None:
    store = JobStore(tmp_path)
    job = store.add(Job(id=store.new_id(), prompt="p", settings={}, input_name="a.obj", mesh="input/mesh.obj"))
    store.update(job.id, state="running")
    with pytest.raises(ValueError, match="running"):
        store.remove(job.id)
    assert store.get(job.id) is not None and (tmp_path / job.id / "job.json").is_file()


def test_jobs_outlive_a_restart_and_unfinished_ones_fail(tmp_path: Path) -> None:
    store = JobStore(tmp_path)
    done = store.add(Job(id=store.new_id(), prompt="p", settings={}, input_name="a.obj", mesh="input/mesh.obj"))
    store.update(done.id, state="done", progress=1.0)
    running = store.add(Job(id=store.new_id(), prompt="q", settings={}, input_name="b.obj", mesh="input/mesh.obj"))
    store.update(running.id, state="running")
    (tmp_path / "not-a-job").mkdir()
    reloaded = JobStore(tmp_path)
    assert reloaded.get(done.id).state == "done"
    assert reloaded.get(running.id).state == "failed" and reloaded.get(running.id).error == INTERRUPTED
    assert json.loads((tmp_path / running.id / "job.json").read_text())["state"] == "failed"
    assert reloaded.get("../" + done.id) is None


def test_unknown_jobs_and_downloads_are_404(served) -> None:
    client, _ = served
    assert client.json("GET", "/api/jobs/0123")[0] == 404
    assert client.json("GET", "/api/jobs/..%2F..%2Fetc/result.glb")[0] == 404


@pytest.mark.slow
def test_serve_refuses_a_missing_model_in_one_line(tmp_path: Path) -> None:
    cli = Path(sys.executable).with_name("csd-texture")
    proc = subprocess.run([str(cli), "serve", "--model", str(tmp_path / "nothing"), "--data-dir", str(tmp_path / "d"),
                           "--port", "1"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error:") and "nothing" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


# ----------------------------------------------------------------------------- the page
STATIC = Path(__file__).resolve().parents[1] / "csd_texture" / "serve" / "static"
PINNED_THREE = Path(__file__).resolve().parents[1] / "tools" / "browser-check" / "node_modules" / "three"


def test_page_and_vendored_three_are_served(served) -> None:
    client, _ = served
    status, page = client.request("GET", "/")
    assert status == 200 and b'type="importmap"' in page and b"/static/app.js" in page
    assert b"https://" not in page  # nothing from a CDN
    for path in ("/static/app.js", "/static/vendor/three/build/three.module.js",
                 "/static/vendor/three/examples/jsm/loaders/GLTFLoader.js"):
        assert client.request("GET", path)[0] == 200, path
    assert client.request("GET", "/static/../jobs")[0] == 404
    assert client.json("GET", "/api/info")[1] == {"max_upload_bytes": MAX_UPLOAD_MB * 2**20,
                                                  "presets": ["fast", "balanced", "quality"]}


def test_vendored_three_matches_the_pinned_copy() -> None:
    """The page's three.js files are the pinned npm release, unchanged (MIT licence kept)."""
    if not (PINNED_THREE / "package.json").is_file():
        pytest.skip("three.js is not installed in tools/browser-check; run tools/install_test_deps.sh")
    vendored = STATIC / "vendor" / "three"
    files = [p for p in vendored.rglob("*") if p.is_file() and p.name != "README.md"]
    assert (vendored / "LICENSE").read_text().startswith("The MIT License")
    for path in files:
        assert path.read_bytes() == (PINNED_THREE / path.relative_to(vendored)).read_bytes(), path


class DevTools:
    """Chromium driven over the DevTools protocol on a pipe (--remote-debugging-pipe: JSON
    messages ended by NUL, commands on fd 3, replies and events on fd 4); stdlib only."""

    def __init__(self, executable: str, flags: tuple[str, ...], profile: Path) -> None:
        import fcntl
        import os

        to_browser, self._write = os.pipe()
        self._read, from_browser = os.pipe()
        # Above 4, so that placing them on 3 and 4 in the child cannot clobber one another.
        child_in, child_out = (fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_browser, from_browser))
        for fd in (to_browser, from_browser):
            os.close(fd)

        def place() -> None:
            os.dup2(child_in, 3)
            os.dup2(child_out, 4)

        self.process = subprocess.Popen(
            [executable, *flags, "--remote-debugging-pipe", f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=place, pass_fds=(3, 4),
            start_new_session=True)
        os.close(child_in)
        os.close(child_out)
        self._next_id = 0
        self._buffer = b""
        self.events: list[dict] = []
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "DOM"):
            self.send(f"{domain}.enable", session=True)

    def send(self, method: str, params: dict | None = None, session: bool = False) -> dict:
        import os

        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = self.session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._receive()
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def _receive(self) -> dict:
        import os
        import select

        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._read], [], [], 60)
            chunk = os.read(self._read, 1 << 20) if ready else b""
            if not chunk:
                raise RuntimeError("chromium stopped answering")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def evaluate(self, expression: str):
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True}, session=True)
        return result["result"].get("value")

    def console(self) -> list[str]:
        self.evaluate("0")  # collect pending events
        return [" ".join(str(a.get("value", "")) for a in e["params"]["args"]) for e in self.events
                if e.get("method") == "Runtime.consoleAPICalled"]

    def close(self) -> None:
        import os
        import signal

        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()
        os.close(self._read)
        os.close(self._write)


@pytest.mark.slow
def test_page_uploads_follows_progress_and_renders_the_result(served, tmp_path: Path) -> None:
    """Headless Chromium: choose a file, type a prompt, submit; the page shows steps and a live
    preview, then the result in the three.js viewer; the base colour view shows the baked map."""
    import numpy as np
    from PIL import Image

    from test_browser import CHROMIUM_FLAGS, chromaticity, require_browser

    client, _ = served
    flags = tuple(f for f in CHROMIUM_FLAGS if not f.startswith(("--virtual-time-budget", "--window-size")))
    browser = DevTools(require_browser(), (*flags, "--window-size=900,600"), tmp_path / "profile")
    try:
        browser.send("Page.navigate", {"url": client.base + "/"}, session=True)
        deadline = time.monotonic() + 60
        while browser.evaluate("document.readyState === 'complete' && !!document.getElementById('mesh')") is not True:
            assert time.monotonic() < deadline, "the page did not load"
            time.sleep(0.2)
        root = browser.send("DOM.getDocument", session=True)["root"]["nodeId"]
        node = browser.send("DOM.querySelector", {"nodeId": root, "selector": "#mesh"}, session=True)["nodeId"]
        browser.send("DOM.setFileInputFiles", {"files": [str(FUZE)], "nodeId": node}, session=True)
        browser.evaluate("""
            document.getElementById('prompt').value = 'a red can';
            document.getElementById('preset').value = 'fast';
            document.getElementById('steps').value = '40';
            document.getElementById('texture_size').value = '64';
            document.getElementById('render_size').value = '64';
            document.getElementById('submit').click();""")
        seen, previews, deadline = set(), 0, time.monotonic() + TIMEOUT_S
        while not any(line.endswith("as lit") for line in browser.console()):
            assert time.monotonic() < deadline, f"no result rendered; status: {seen}; console: {browser.console()}"
            seen.add(browser.evaluate("document.getElementById('status').textContent"))
            previews += browser.evaluate("document.getElementById('preview').style.display === 'block'") is True
            time.sleep(0.1)
        assert any("step " in text for text in seen), seen
        assert previews > 0, "the live preview never showed"
        job_id = browser.evaluate("new URLSearchParams(location.search).get('job')")
        assert client.json("GET", f"/api/jobs/{job_id}")[1]["state"] == "done"
        assert "GLB" in browser.evaluate("document.getElementById('downloads').textContent")

        browser.evaluate("const r = document.querySelector('input[value=basecolor]'); r.checked = true; "
                         "r.dispatchEvent(new Event('change'));")
        deadline = time.monotonic() + 30
        while not any(line.endswith("as basecolor") for line in browser.console()):
            assert time.monotonic() < deadline, browser.console()
            time.sleep(0.1)
        box = browser.evaluate("JSON.stringify(document.getElementById('viewer').getBoundingClientRect())")
        shot = browser.send("Page.captureScreenshot", {"format": "png"}, session=True)["data"]
    finally:
        browser.close()
    import base64

    (tmp_path / "shot.png").write_bytes(base64.b64decode(shot))
    image = np.asarray(Image.open(tmp_path / "shot.png").convert("RGB")).astype(float)
    box = {k: int(round(v)) for k, v in json.loads(box).items()}
    canvas = image[box["top"]:box["bottom"], box["left"]:box["right"]]
    assert canvas.size > 0, box
    foreground = np.abs(canvas - 32).max(axis=-1) > 12  # the viewer clears to #202020
    assert foreground.mean() > 0.02, f"model not visible ({foreground.mean():.1%})"
    status, png = client.request("GET", f"/api/jobs/{job_id}/maps/basecolor.png")
    texels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).reshape(-1, 3).astype(float)
    seen_colour, baked = canvas[foreground].mean(0), texels.mean(0)
    assert np.abs(chromaticity(seen_colour) - chromaticity(baked)).max() < 0.08, (seen_colour, baked)
    assert 0.5 < seen_colour.mean() / baked.mean() < 1.5, (seen_colour, baked)
