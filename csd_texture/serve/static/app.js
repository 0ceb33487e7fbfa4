// The csd-texture page: submits jobs to /api/jobs, lists them, follows the selected one
// (progress, ETA, live preview of the base colour atlas) and shows its result in three.js.
import * as THREE from "three";
import { GLTFLoader } from "three/addons/loaders/GLTFLoader.js";
import { OrbitControls } from "three/addons/controls/OrbitControls.js";
import { RoomEnvironment } from "three/addons/environments/RoomEnvironment.js";

const $ = (id) => document.getElementById(id);
const DOWNLOADS = [["result.glb", "GLB"], ["result.gltf.zip", "glTF (zip)"], ["result.obj.zip", "OBJ (zip)"],
                   ["maps.zip", "maps"]];
let selected = new URLSearchParams(location.search).get("job");
let shown = null;  // the job whose result is in the viewer

// ---------------------------------------------------------------- viewer
const canvas = $("viewer");
const renderer = new THREE.WebGLRenderer({ canvas, antialias: true, preserveDrawingBuffer: true });
renderer.setPixelRatio(1);
const scene = new THREE.Scene();
scene.background = new THREE.Color(0x202020);
scene.environment = new THREE.PMREMGenerator(renderer).fromScene(new RoomEnvironment(), 0.04).texture;
const camera = new THREE.PerspectiveCamera(40, 1, 0.01, 1000);
const controls = new OrbitControls(camera, canvas);
controls.addEventListener("change", render);
let model = null;
const original = new Map();  // mesh -> its MeshStandardMaterial

function resize() {
  const { clientWidth: w, clientHeight: h } = canvas.parentElement;
  renderer.setSize(w, h, false);
  camera.aspect = w / Math.max(h, 1);
  camera.updateProjectionMatrix();
  render();
}
function render() { renderer.render(scene, camera); }
new ResizeObserver(resize).observe(canvas.parentElement);

function frame(object) {
  const sphere = new THREE.Box3().setFromObject(object).getBoundingSphere(new THREE.Sphere());
  const distance = (sphere.radius * 1.2) / Math.sin(THREE.MathUtils.degToRad(camera.fov / 2));
  camera.position.copy(sphere.center).add(new THREE.Vector3(0, Math.sin(0.35), Math.cos(0.35)).multiplyScalar(distance));
  camera.near = distance / 100; camera.far = distance * 10;
  controls.target.copy(sphere.center);
  camera.updateProjectionMatrix();
  controls.update();
}

// One channel of the metallicRoughness texture (glTF: G roughness, B metallic) as grey.
function channelMaterial(texture, channel) {
  return new THREE.ShaderMaterial({
    uniforms: { map: { value: texture } },
    vertexShader: "varying vec2 vUv; void main() { vUv = uv; gl_Position = projectionMatrix * modelViewMatrix * vec4(position, 1.0); }",
    fragmentShader: `uniform sampler2D map; varying vec2 vUv;
      void main() { float v = texture2D(map, vUv).${channel}; gl_FragColor = vec4(vec3(v), 1.0); }`,
    side: THREE.DoubleSide,
  });
}

function showChannel(view) {
  if (!model) return;
  for (const [mesh, material] of original) {
    if (view === "lit") mesh.material = material;
    else if (view === "basecolor") mesh.material = new THREE.MeshBasicMaterial({ map: material.map, side: THREE.DoubleSide });
    else mesh.material = channelMaterial(material.roughnessMap, view === "roughness" ? "g" : "b");
  }
  render();
  console.log(`rendered ${shown} as ${view}`);
}
for (const radio of document.querySelectorAll("input[name=view]")) radio.addEventListener("change", () => showChannel(radio.value));

function showResult(job) {
  const url = `/api/jobs/${job.id}/result.glb`;
  new GLTFLoader().load(url, (gltf) => {
    if (model) scene.remove(model);
    model = gltf.scene;
    original.clear();
    model.traverse((o) => { if (o.isMesh) original.set(o, o.material); });
    scene.add(model);
    frame(model);
    $("toggles").hidden = false;
    $("preview").style.display = "none";
    const view = document.querySelector("input[name=view]:checked").value;
    showChannel(view);
  }, undefined, (error) => console.error(`cannot load ${url}: ${error}`));
}

// ---------------------------------------------------------------- jobs
function describe(job) {
  if (job.state === "running") {
    if (!job.total) return "preparing (loading, unwrapping)";
    const eta = job.eta_s == null ? "" : `, about ${Math.ceil(job.eta_s)} s left`;
    return `step ${job.step}/${job.total}${eta}`;
  }
  if (job.state === "failed") return `failed: ${job.error}`;
  return job.state;
}

function follow(job) {
  $("status").textContent = `${job.input_name}: "${job.prompt}": ${describe(job)}`;
  $("warnings").textContent = job.warnings.map((w) => `warning: ${w}`).join("\n");
  const preview = $("preview");
  if (job.state === "running" && job.has_preview) {
    preview.src = `/api/jobs/${job.id}/preview.png?t=${Date.now()}`;
    preview.style.display = "block";
  }
  $("downloads").innerHTML = job.state !== "done" ? "" : DOWNLOADS.map(([name, label]) =>
    `<a href="/api/jobs/${job.id}/${name}" download>${label}</a>`).join("");
  if (job.state === "done" && shown !== job.id) {
    shown = job.id;
    showResult(job);
  }
}

function listJobs(jobs) {
  const list = $("jobs");
  list.replaceChildren(...jobs.map((job) => {
    const item = document.createElement("li");
    item.className = job.id === selected ? "selected" : "";
    const state = document.createElement("span");
    state.className = `state ${job.state}`;
    state.textContent = job.state;
    const title = document.createElement("div");
    title.textContent = `${job.input_name}: ${job.prompt}`;
    item.append(state, title);
    if (job.state === "running") {
      const bar = document.createElement("progress");
      bar.max = 1; bar.value = job.progress;
      item.append(bar);
    }
    if (job.state === "queued" || job.state === "running") {
      const cancel = document.createElement("button");
      cancel.textContent = "Cancel";
      cancel.onclick = (event) => { event.stopPropagation(); fetch(`/api/jobs/${job.id}`, { method: "DELETE" }).then(refresh); };
      item.append(cancel);
    }
    item.onclick = () => { selected = job.id; history.replaceState(null, "", `?job=${job.id}`); refresh(); };
    return item;
  }));
}

async function refresh() {
  const response = await fetch("/api/jobs");
  const { jobs } = await response.json();
  listJobs(jobs);
  const job = jobs.find((j) => j.id === selected);
  if (job) follow(job);
  clearTimeout(refresh.timer);
  refresh.timer = setTimeout(refresh, jobs.some((j) => j.state === "queued" || j.state === "running") ? 500 : 3000);
}

// ---------------------------------------------------------------- submit
$("form").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("message").textContent = "";
  const settings = {};
  for (const name of ["steps", "texture_size", "render_size", "seed", "guidance_scale"]) {
    if ($(name).value !== "") settings[name] = Number($(name).value);
  }
  if ($("negative_prompt").value) settings.negative_prompt = $("negative_prompt").value;
  if ($("keep_uv").checked) settings.keep_uv = true;
  const parts = $("parts").value.split("\n").map((line) => line.trim()).filter(Boolean);
  if (parts.length) settings.parts = parts;
  const file = $("mesh").files[0];
  const { max_upload_bytes: limit } = await (await fetch("/api/info")).json();
  if (file.size > limit) {  // the server would refuse it; say so before sending it
    $("message").textContent = `${file.name}: ${(file.size / 2 ** 20).toFixed(1)} MB is over this server's ` +
      `${Math.floor(limit / 2 ** 20)} MB upload limit (csd-texture serve --max-upload-mb)`;
    return;
  }
  const body = new FormData();
  body.append("mesh", file);
  body.append("prompt", $("prompt").value);
  body.append("preset", $("preset").value);
  body.append("settings", JSON.stringify(settings));
  const response = await fetch("/api/jobs", { method: "POST", body });
  const reply = await response.json();
  if (response.status !== 202) { $("message").textContent = reply.error; return; }
  selected = reply.id;
  history.replaceState(null, "", `?job=${reply.id}`);
  console.log(`submitted ${reply.id}`);
  refresh();
});

refresh();
