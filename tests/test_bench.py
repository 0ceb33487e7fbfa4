"""Benchmarks run on CPU with the tiny model, so their tables keep their shape."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def test_gpu_speed_table_on_cpu() -> None:
    proc = subprocess.run([sys.executable, str(BENCH / "gpu_speed.py"), "--arch", "tiny", "--device", "cpu",
                           "--render-size", "64", "--texture-size", "64", "--faces", "1000", "--steps", "2"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    header = lines[0].split()
    for column in ("render", "unet", "optim", "ms/step", "steps/s", "TFLOP/s", "GiB", "projected"):
        assert column in header, lines[0]
    rows = {line.split()[0]: line.split() for line in lines[1:3]}
    assert set(rows) == {"default", "reference"}
    assert all(float(rows[name][7]) > 0 for name in rows)  # total ms/step
    assert any(line.startswith("speed-up of the default loop over the reference:") for line in lines)
    assert any(line.startswith("mesh: ") and "unwrap" in line and "bake" in line for line in lines)
