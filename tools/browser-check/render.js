// Load ?model=URL with GLTFLoader, frame it from the front, render one frame on black.
// Logs one console line: "rendered ..." (with the WebGL version and device) or "cannot load ...".
import * as THREE from "three";
import { GLTFLoader } from "three/addons/loaders/GLTFLoader.js";

const size = Math.min(window.innerWidth, window.innerHeight);
const renderer = new THREE.WebGLRenderer({ antialias: false, preserveDrawingBuffer: true });
renderer.setPixelRatio(1);
renderer.setSize(size, size);
renderer.setClearColor(0x000000, 1);
document.body.appendChild(renderer.domElement);

const scene = new THREE.Scene();
// Ambient light of intensity pi gives an unlit Lambertian surface its base colour; a weak
// headlight adds some shading.
scene.add(new THREE.AmbientLight(0xffffff, Math.PI * 0.8));
const camera = new THREE.PerspectiveCamera(40, 1, 0.01, 1000);
const headlight = new THREE.DirectionalLight(0xffffff, 0.5);
camera.add(headlight);
scene.add(camera);

function frame(object) {
  const box = new THREE.Box3().setFromObject(object);
  const sphere = box.getBoundingSphere(new THREE.Sphere());
  const distance = (sphere.radius * 1.1) / Math.sin(THREE.MathUtils.degToRad(camera.fov / 2));
  const direction = new THREE.Vector3(0, Math.sin(0.35), Math.cos(0.35));
  camera.position.copy(sphere.center).addScaledVector(direction, distance);
  camera.near = distance / 100;
  camera.far = distance * 10;
  camera.lookAt(sphere.center);
  camera.updateProjectionMatrix();
}

const model = new URLSearchParams(window.location.search).get("model");
new GLTFLoader().load(
  model,
  (gltf) => {
    scene.add(gltf.scene);
    frame(gltf.scene);
    renderer.render(scene, camera);
    const gl = renderer.getContext();
    const info = gl.getExtension("WEBGL_debug_renderer_info");
    const device = info ? gl.getParameter(info.UNMASKED_RENDERER_WEBGL) : gl.getParameter(gl.RENDERER);
    console.log(`rendered ${model} at ${size}px with ${gl.getParameter(gl.VERSION)} on ${device}`);
  },
  undefined,
  (error) => {
    console.error(`cannot load ${model}: ${error}`);
  },
);
