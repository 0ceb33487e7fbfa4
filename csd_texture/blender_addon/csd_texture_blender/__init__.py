"""csd-texture for Blender: paint PBR textures onto the selected meshes from a text prompt.

The add-on exports the selected meshes to a temporary GLB, runs the `csd-texture` command on it
in a subprocess (Blender's Python cannot import torch), follows its progress in the status bar,
and on success loads the result's maps into the objects' own materials on a new `csd_texture`
UV map. Objects, modifiers, armatures and animation stay as they are; on failure or cancel
nothing in the file changes.
"""
from __future__ import annotations

import shlex
import shutil
import tempfile
from pathlib import Path

import bpy
from bpy.props import BoolProperty, CollectionProperty, EnumProperty, IntProperty, PointerProperty, StringProperty

from .run import Run, Settings, find_executable

bl_info = {
    "name": "csd-texture",
    "author": "csd-texture authors",
    "version": (0, 1, 0),
    "blender": (3, 4, 0),
    "location": "View3D > Sidebar > csd-texture",
    "description": "Paint PBR textures onto the selected meshes from a text prompt (Classifier Score Distillation)",
    "category": "Material",
}

PRESETS = [("fast", "Fast", "300 steps, 512 px texture"),
           ("balanced", "Balanced", "600 steps, 1024 px texture"),
           ("quality", "Quality", "1500 steps, 2048 px texture")]
DEVICES = [("auto", "Auto", "CUDA when available, else CPU"), ("cpu", "CPU", ""), ("cuda", "CUDA", "")]


class CSDTexturePreferences(bpy.types.AddonPreferences):
    bl_idname = __package__

    executable: StringProperty(name="csd-texture executable", subtype="FILE_PATH", default=find_executable(),
                               description="The csd-texture command (default: found on PATH)")
    model: StringProperty(name="Model", default="",
                          description="Diffusers Stable Diffusion repo id or folder (empty: csd-texture's default)")
    device: EnumProperty(name="Device", items=DEVICES, default="auto")
    extra_args: StringProperty(name="Extra arguments", default="",
                               description="More csd-texture options, e.g. --render-size 256")

    def draw(self, context):
        for name in ("executable", "model", "device", "extra_args"):
            self.layout.prop(self, name)


class CSDTexturePart(bpy.types.PropertyGroup):
    material: StringProperty(name="Material", description="Faces with this material get their own prompt")
    prompt: StringProperty(name="Prompt", description="What this material's faces show")


class CSDTextureSettings(bpy.types.PropertyGroup):
    prompt: StringProperty(name="Prompt", description="Describe the texture, e.g. a weathered oak chair")
    negative_prompt: StringProperty(name="Negative", description="What to keep out of the texture")
    preset: EnumProperty(name="Preset", items=PRESETS, default="balanced")
    steps: IntProperty(name="Steps", default=0, min=0, description="Optimisation steps (0: the preset's)")
    seed: IntProperty(name="Seed", default=0, min=0)
    texture_size: IntProperty(name="Texture size", default=0, min=0, max=8192,
                              description="Square texture size in pixels (0: the preset's)")
    keep_uv: BoolProperty(name="Keep UVs", default=False,
                          description="Use the meshes' own UVs when valid instead of unwrapping")
    parts: CollectionProperty(type=CSDTexturePart, name="Per-material prompts")


def _settings(context) -> Settings:
    props = context.scene.csd_texture
    prefs = context.preferences.addons[__package__].preferences
    return Settings(prompt=props.prompt, negative_prompt=props.negative_prompt, preset=props.preset,
                    steps=props.steps, seed=props.seed, texture_size=props.texture_size, keep_uv=props.keep_uv,
                    model=bpy.path.abspath(prefs.model) if prefs.model.startswith("//") else prefs.model,
                    device=prefs.device, extra_args=shlex.split(prefs.extra_args),
                    parts=[(p.material, p.prompt) for p in props.parts if p.material and p.prompt.strip()])


class CSDTEXTURE_OT_texture_selected(bpy.types.Operator):
    """Texture the selected meshes with csd-texture (Esc cancels)"""

    bl_idname = "csd_texture.texture_selected"
    bl_label = "Texture"
    bl_options = {"REGISTER"}

    running = None  # the Run in progress (one at a time)

    @classmethod
    def poll(cls, context):
        return cls.running is None and any(o.type == "MESH" for o in context.selected_objects)

    def execute(self, context):
        return self.invoke(context, None)

    def invoke(self, context, event):
        self.objects = [o for o in context.selected_objects if o.type == "MESH"]
        settings = _settings(context)
        executable = bpy.path.abspath(context.preferences.addons[__package__].preferences.executable)
        if context.mode != "OBJECT":
            self.report({"ERROR"}, "csd-texture: switch to Object Mode first (edits in Edit Mode are not saved yet)")
            return {"CANCELLED"}
        if not settings.prompt.strip():
            self.report({"ERROR"}, "csd-texture: enter a prompt first")
            return {"CANCELLED"}
        if not executable or shutil.which(executable) is None:
            self.report({"ERROR"}, f"csd-texture: executable {executable!r} not found; "
                                   "set it in the add-on preferences")
            return {"CANCELLED"}
        self.folder = Path(tempfile.mkdtemp(prefix="csd_texture_"))
        mesh, self.output, self.maps = self.folder / "input.glb", self.folder / "output.glb", self.folder / "maps"
        cls = type(self)
        try:
            bpy.ops.export_scene.gltf(filepath=str(mesh), export_format="GLB", use_selection=True,
                                      export_apply=False, export_skins=False, export_animations=False,
                                      export_morph=False, export_materials="EXPORT",  # names, for --part
                                      export_image_format="NONE")
            cls.running = Run(settings.command(executable, mesh, self.output, self.maps))
        except Exception as exc:  # noqa: BLE001 - shown to the user, file unchanged
            return self._fail(f"csd-texture: {exc}")
        if bpy.app.background:  # no event loop: wait here
            cls.running.wait()
            return self._finish(context)
        wm = context.window_manager
        self.timer = wm.event_timer_add(0.25, window=context.window)
        wm.progress_begin(0, 100)
        wm.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def modal(self, context, event):
        run = type(self).running
        if event.type == "ESC" or (run is not None and run.cancelled):
            run.cancel()
            self._stop_ui(context)
            return self._fail("csd-texture: cancelled", level="WARNING")
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        if run.poll() is None:
            context.window_manager.progress_update(int(100 * run.progress))
            status = f"step {run.step}/{run.total}" if run.total else "loading the model"
            context.workspace.status_text_set(f"csd-texture: {status} (Esc cancels)")
            return {"PASS_THROUGH"}
        self._stop_ui(context)
        return self._finish(context)

    def _stop_ui(self, context) -> None:
        wm = context.window_manager
        wm.event_timer_remove(self.timer)
        wm.progress_end()
        context.workspace.status_text_set(None)

    def _finish(self, context):
        from .apply import apply_result, corner_uvs

        run = type(self).running
        if run.process.returncode != 0:
            return self._fail(f"csd-texture: {run.error_message()}")
        try:
            uvs = corner_uvs(self.objects, self.output)  # everything computed before the file changes
            warnings = apply_result(self.objects, uvs, self.maps)
        except Exception as exc:  # noqa: BLE001 - shown to the user
            return self._fail(f"csd-texture: cannot apply the result: {exc}")
        for warning in warnings:
            self.report({"WARNING"}, f"csd-texture: {warning}")
        self.report({"INFO"}, f"csd-texture: textured {', '.join(o.name for o in self.objects)}")
        self._cleanup()
        return {"FINISHED"}

    def _fail(self, message: str, level: str = "ERROR"):
        self.report({level}, message)
        self._cleanup()
        return {"CANCELLED"}

    def _cleanup(self) -> None:
        type(self).running = None
        shutil.rmtree(self.folder, ignore_errors=True)


class CSDTEXTURE_OT_part_add(bpy.types.Operator):
    """Give the faces of one material their own prompt"""

    bl_idname = "csd_texture.part_add"
    bl_label = "Add material prompt"

    def execute(self, context):
        context.scene.csd_texture.parts.add()
        return {"FINISHED"}


class CSDTEXTURE_OT_part_remove(bpy.types.Operator):
    """Remove this material prompt"""

    bl_idname = "csd_texture.part_remove"
    bl_label = "Remove material prompt"
    index: IntProperty()

    def execute(self, context):
        context.scene.csd_texture.parts.remove(self.index)
        return {"FINISHED"}


class CSDTEXTURE_OT_cancel(bpy.types.Operator):
    """Stop the running csd-texture job"""

    bl_idname = "csd_texture.cancel"
    bl_label = "Cancel"

    @classmethod
    def poll(cls, context):
        return CSDTEXTURE_OT_texture_selected.running is not None

    def execute(self, context):
        CSDTEXTURE_OT_texture_selected.running.cancelled = True  # the modal operator stops it
        return {"FINISHED"}


class CSDTEXTURE_PT_panel(bpy.types.Panel):
    bl_label = "csd-texture"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "csd-texture"

    def draw(self, context):
        props, layout = context.scene.csd_texture, self.layout
        for name in ("prompt", "negative_prompt", "preset", "steps", "seed", "texture_size", "keep_uv"):
            layout.prop(props, name)
        box = layout.box()
        box.label(text="Per-material prompts")
        for index, part in enumerate(props.parts):
            row = box.row(align=True)
            row.prop_search(part, "material", bpy.data, "materials", text="")
            row.prop(part, "prompt", text="")
            row.operator(CSDTEXTURE_OT_part_remove.bl_idname, text="", icon="X").index = index
        box.operator(CSDTEXTURE_OT_part_add.bl_idname, icon="ADD")
        run = CSDTEXTURE_OT_texture_selected.running
        if run is None:
            layout.operator(CSDTEXTURE_OT_texture_selected.bl_idname, icon="BRUSH_DATA")
        else:
            layout.label(text=f"step {run.step}/{run.total}" if run.total else "loading the model")
            layout.operator(CSDTEXTURE_OT_cancel.bl_idname, icon="CANCEL")


CLASSES = (CSDTexturePreferences, CSDTexturePart, CSDTextureSettings, CSDTEXTURE_OT_texture_selected,
           CSDTEXTURE_OT_part_add, CSDTEXTURE_OT_part_remove, CSDTEXTURE_OT_cancel, CSDTEXTURE_PT_panel)


def register():
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    bpy.types.Scene.csd_texture = PointerProperty(type=CSDTextureSettings)


def unregister():
    del bpy.types.Scene.csd_texture
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
