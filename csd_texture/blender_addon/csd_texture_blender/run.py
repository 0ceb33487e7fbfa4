"""Run the `csd-texture` command in a subprocess and follow its progress (no bpy, no torch).

The command's progress bar (tqdm on stderr: ``texturing:  40%|...| 8/20 [...]``) gives the
step; its last ``error: ...`` line is the one-line message shown when it fails.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path

STEP = re.compile(r"texturing:.*?(\d+)/(\d+)")
# Blender's own Python settings must not leak into the csd-texture interpreter.
BLENDER_PYTHON_VARIABLES = ("PYTHONPATH", "PYTHONHOME", "PYTHONNOUSERSITE", "PYTHONSTARTUP")


def glob_literal(name: str) -> str:
    """`name` as a glob that matches only itself (csd-texture's --part patterns are globs)."""
    return re.sub(r"([*?[])", r"[\1]", name)


def find_executable() -> str:
    """`csd-texture` on PATH, or "" when it is not there."""
    return shutil.which("csd-texture") or ""


@dataclass
class Settings:
    """What the panel asks for; `command` turns it into csd-texture arguments."""

    prompt: str
    negative_prompt: str = ""
    preset: str = "balanced"
    steps: int = 0  # 0: the preset's
    seed: int = 0
    texture_size: int = 0  # 0: the preset's
    keep_uv: bool = False
    model: str = ""
    device: str = "auto"
    parts: list[tuple[str, str]] = field(default_factory=list)  # (material name, prompt)
    extra_args: list[str] = field(default_factory=list)

    def command(self, executable: str, mesh: Path, output: Path, maps: Path) -> list[str]:
        # One atlas for every material: the add-on wires the same maps into each of them.
        args = [executable, "texture", str(mesh), self.prompt, "-o", str(output), "--save-maps", str(maps),
                "--preset", self.preset, "--seed", str(self.seed), "--atlas", "shared"]
        if self.negative_prompt:
            args += ["--negative-prompt", self.negative_prompt]
        if self.steps > 0:
            args += ["--steps", str(self.steps)]
        if self.texture_size > 0:
            args += ["--texture-size", str(self.texture_size)]
        if self.keep_uv:
            args.append("--keep-uv")
        if self.model:
            args += ["--model", self.model]
        if self.device and self.device != "auto":
            args += ["--device", self.device]
        for material, prompt in self.parts:
            if "=" in material:
                raise ValueError(f"material {material!r}: a per-material prompt needs a name without '='")
            args += ["--part", f"{glob_literal(material)}={prompt}"]
        return args + list(self.extra_args)


class Run:
    """One csd-texture subprocess: `poll()` while it runs, `cancel()` to stop it."""

    def __init__(self, command: list[str]) -> None:
        env = {k: v for k, v in os.environ.items() if k not in BLENDER_PYTHON_VARIABLES}
        self.command = command
        self.step, self.total = 0, 0
        self.lines: list[str] = []
        self.cancelled = False
        try:
            self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                            stderr=subprocess.PIPE, env=env, start_new_session=True)
        except OSError as exc:
            raise RuntimeError(f"cannot run {command[0]!r}: {exc.strerror}; set the csd-texture executable "
                               "in the add-on preferences") from exc
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        """Collect stderr lines (tqdm separates its updates with carriage returns)."""
        buffer = b""
        while chunk := self.process.stderr.read1(4096):
            buffer += chunk
            *done, buffer = re.split(rb"[\r\n]", buffer)
            for raw in done:
                self._line(raw.decode("utf-8", "replace").strip())
        self._line(buffer.decode("utf-8", "replace").strip())

    def _line(self, line: str) -> None:
        if not line:
            return
        match = STEP.search(line)
        if match:
            self.step, self.total = int(match.group(1)), int(match.group(2))
        else:
            self.lines.append(line)

    @property
    def progress(self) -> float:
        """0..1 by optimisation step (0 while the model loads)."""
        return self.step / self.total if self.total else 0.0

    def poll(self) -> int | None:
        """The exit code once finished (stderr fully read), else None."""
        code = self.process.poll()
        if code is not None:
            self._reader.join()
        return code

    def wait(self) -> int:
        code = self.process.wait()
        self._reader.join()
        return code

    def cancel(self) -> None:
        """Stop the subprocess and its children (SIGTERM, then SIGKILL after 5 s)."""
        self.cancelled = True
        if self.process.poll() is not None:
            return
        if not hasattr(os, "killpg"):  # Windows: no process groups
            self.process.kill()
            self.wait()
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.wait()

    def error_message(self) -> str:
        """The CLI's one-line error, or the last line it wrote."""
        errors = [line for line in self.lines if line.startswith("error:")]
        if errors:
            return errors[-1]
        return self.lines[-1] if self.lines else f"csd-texture exited with code {self.process.returncode}"
