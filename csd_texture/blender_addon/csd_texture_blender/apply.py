"""Put a csd-texture result onto Blender objects: their UV map and their own materials' nodes.

Nothing here changes the scene until `apply_result`, which runs only after every UV map has
been computed, so a failure leaves the file as it was.
"""
from __future__ import annotations

import logging
from pathlib import Path

import bpy
import numpy as np
from mathutils import Vector
from mathutils.bvhtree import BVHTree
from mathutils.geometry import barycentric_transform

from .glb import read_triangles

log = logging.getLogger(__name__)
UV_NAME = "csd_texture"
NODE_PREFIX = "csd-texture "
NUDGE = 0.02  # how far each face corner moves towards its face's centre before the look-up


def corner_uvs(objects: list, result: Path) -> dict[str, np.ndarray]:
    """Object name -> (loops, 2) UVs of its mesh's face corners, looked up on the output GLB's
    triangles: each corner, nudged into its own face, takes the UV of the nearest output
    surface point (the output is the same surface, triangulated, merged and re-indexed)."""
    corners, uvs = read_triangles(result)
    tree = BVHTree.FromPolygons([Vector(p) for p in corners.reshape(-1, 3)],
                                [(3 * i, 3 * i + 1, 3 * i + 2) for i in range(len(corners))])
    found = {}
    for obj in objects:
        mesh, matrix = obj.data, obj.matrix_world
        world = [matrix @ v.co for v in mesh.vertices]
        values = np.zeros((len(mesh.loops), 2))
        for polygon in mesh.polygons:
            centre = matrix @ polygon.center
            for loop in polygon.loop_indices:
                corner = world[mesh.loops[loop].vertex_index]
                point, _, index, _ = tree.find_nearest(corner.lerp(centre, NUDGE))
                if index is None:
                    raise ValueError(f"{obj.name}: no output surface near its face {polygon.index}")
                a, b, c = (Vector(p) for p in corners[index])
                ua, ub, uc = (Vector((u, v, 0.0)) for u, v in uvs[index])
                values[loop] = barycentric_transform(point, a, b, c, ua, ub, uc).to_2d()
        found[obj.name] = values
    return found


def load_images(maps: Path) -> dict[str, "bpy.types.Image"]:
    """basecolor (sRGB), orm (Non-Color) and, if present, normal (Non-Color), packed into the
    .blend so they outlive the temporary folder."""
    images = {}
    for name, colour_space in (("basecolor", "sRGB"), ("orm", "Non-Color"), ("normal", "Non-Color")):
        path = maps / f"{name}.png"
        if not path.is_file():
            continue
        image = bpy.data.images.load(str(path), check_existing=False)
        image.name = f"csd_texture_{name}"
        image.colorspace_settings.name = colour_space
        image.pack()
        image.filepath_raw = ""  # packed: no link to the deleted temporary file
        images[name] = image
    return images


def _principled(material: "bpy.types.Material") -> "bpy.types.Node":
    material.use_nodes = True
    nodes, links = material.node_tree.nodes, material.node_tree.links
    bsdf = next((n for n in nodes if n.type == "BSDF_PRINCIPLED"), None)
    if bsdf is None:
        bsdf = nodes.new("ShaderNodeBsdfPrincipled")
        output = next((n for n in nodes if n.type == "OUTPUT_MATERIAL"), None) or nodes.new("ShaderNodeOutputMaterial")
        links.new(bsdf.outputs["BSDF"], output.inputs["Surface"])
    return bsdf


def _separate_kind() -> str:
    """Separate Color (Blender >= 3.3), else the older Separate RGB; both output R, G, B first."""
    return "ShaderNodeSeparateColor" if hasattr(bpy.types, "ShaderNodeSeparateColor") else "ShaderNodeSeparateRGB"


def wire_material(material: "bpy.types.Material", images: dict, uv_name: str = UV_NAME) -> None:
    """Principled BSDF <- Base Color image; ORM image -> Separate Color -> Roughness (G),
    Metallic (B); Normal Map if a normal image exists; all on the `uv_name` UV map. Replaces
    the nodes of a previous run."""
    bsdf = _principled(material)
    nodes, links = material.node_tree.nodes, material.node_tree.links
    for node in [n for n in nodes if n.name.startswith(NODE_PREFIX)]:
        nodes.remove(node)

    def add(kind: str, name: str, x: float, y: float) -> "bpy.types.Node":
        node = nodes.new(kind)
        node.name = node.label = NODE_PREFIX + name
        node.location = (bsdf.location.x + x, bsdf.location.y + y)
        return node

    uv = add("ShaderNodeUVMap", "uv", -900, -150)
    uv.uv_map = uv_name
    textures = {}
    for row, key in enumerate(k for k in ("basecolor", "orm", "normal") if k in images):
        texture = add("ShaderNodeTexImage", key, -600, -300 * row)
        texture.image = images[key]
        links.new(uv.outputs["UV"], texture.inputs["Vector"])
        textures[key] = texture
    links.new(textures["basecolor"].outputs["Color"], bsdf.inputs["Base Color"])
    separate = add(_separate_kind(), "orm split", -300, -300)
    links.new(textures["orm"].outputs["Color"], separate.inputs[0])
    links.new(separate.outputs[1], bsdf.inputs["Roughness"])
    links.new(separate.outputs[2], bsdf.inputs["Metallic"])
    if "normal" in textures:
        normal_map = add("ShaderNodeNormalMap", "normal map", -300, -600)
        normal_map.uv_map = uv_name
        links.new(textures["normal"].outputs["Color"], normal_map.inputs["Color"])
        links.new(normal_map.outputs["Normal"], bsdf.inputs["Normal"])


def apply_result(objects: list, uvs: dict[str, np.ndarray], maps: Path) -> list[str]:
    """Write each object's UV map (active for display and render) and wire its materials (a new
    one where it has none); returns warnings (e.g. a material shared with unselected objects)."""
    images = load_images(maps)
    chosen = {obj.name for obj in objects}
    warnings, materials = [], {}
    meshes: dict[str, str] = {}
    for obj in objects:
        mesh = obj.data
        if mesh.name in meshes:
            warnings.append(f"{obj.name} shares its mesh with {meshes[mesh.name]}: one UV map for both, "
                            f"which follows {obj.name}")
        meshes[mesh.name] = obj.name
        layer = mesh.uv_layers.get(UV_NAME) or mesh.uv_layers.new(name=UV_NAME)
        layer.data.foreach_set("uv", uvs[obj.name].astype(np.float32).reshape(-1))
        mesh.uv_layers.active = layer
        layer.active_render = True
        if not obj.material_slots:
            obj.data.materials.append(bpy.data.materials.new(f"{obj.name}_csd_texture"))
        for slot in obj.material_slots:
            if slot.material is None:
                slot.material = bpy.data.materials.new(f"{obj.name}_csd_texture")
            materials[slot.material.name] = slot.material
        mesh.update()
    for material in materials.values():
        wire_material(material, images)
        users = {o.name for o in bpy.data.objects if o.type == "MESH" and material.name in
                 {s.material.name for s in o.material_slots if s.material}}
        if users - chosen:
            warnings.append(f"material {material.name!r} is also used by unselected "
                            f"{', '.join(sorted(users - chosen))}, which have no {UV_NAME!r} UV map")
    return warnings
