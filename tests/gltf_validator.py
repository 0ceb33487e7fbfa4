"""Run the pinned Khronos glTF-Validator (tools/gltf-validator) on files the tests write.

`assert_valid_gltf(*paths)` asserts zero errors and zero warnings and returns the reports.
When node or the validator is missing the calling test fails under CI (env CI set) and is
skipped otherwise, with the install command as the reason.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
VALIDATOR_DIR = ROOT / "tools" / "gltf-validator"
SCRIPT = VALIDATOR_DIR / "validate.mjs"
INSTALL_HINT = (
    "install it with `npm ci --prefix tools/gltf-validator` (or tools/install_test_deps.sh); needs Node.js >= 18"
)
ERROR, WARNING = 0, 1  # Khronos severities: 0 error, 1 warning, 2 info, 3 hint


def _missing_validator() -> str | None:
    """Why the validator cannot run here, or None when it can."""
    if shutil.which("node") is None:
        return f"node is not on PATH; {INSTALL_HINT}"
    if not (VALIDATOR_DIR / "node_modules" / "gltf-validator" / "package.json").is_file():
        return f"the Khronos glTF-Validator is not installed in {VALIDATOR_DIR}; {INSTALL_HINT}"
    return None


def require_validator() -> None:
    """Fail (under CI) or skip (locally) the current test when the validator is missing."""
    reason = _missing_validator()
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"glTF validator unavailable: {reason}", pytrace=False)
    pytest.skip(f"glTF validator unavailable: {reason}")


def _problems(report: dict[str, Any]) -> list[str]:
    """One line per error or warning in a Khronos report."""
    lines = []
    for m in report["issues"]["messages"]:
        if m["severity"] in (ERROR, WARNING):
            kind = "error" if m["severity"] == ERROR else "warning"
            lines.append(f"{report['uri']}: {kind} {m['code']} at {m.get('pointer', '?')}: {m['message']}")
    return lines


def validate_gltf(*paths: Path) -> list[dict[str, Any]]:
    """The validator's reports for `paths` (.glb or .gltf), without judging them."""
    require_validator()
    result = subprocess.run(
        ["node", str(SCRIPT), *map(str, paths)], capture_output=True, text=True, timeout=300, check=False
    )
    if result.returncode not in (0, 1):
        pytest.fail(f"glTF validator could not run (exit {result.returncode}): {result.stderr.strip()}", pytrace=False)
    return json.loads(result.stdout)["reports"]


def assert_valid_gltf(*paths: Path) -> list[dict[str, Any]]:
    """Assert the Khronos validator reports zero errors and zero warnings for each path."""
    reports = validate_gltf(*paths)
    assert len(reports) == len(paths)
    problems = [line for report in reports for line in _problems(report)]
    assert not problems, "glTF validator:\n" + "\n".join(problems)
    return reports
