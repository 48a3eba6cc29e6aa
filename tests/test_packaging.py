"""The wheel carries everything the package needs: code, bundled weights and models, assets, csrc."""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_holds_every_package_file_and_the_csrc_sources(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q", "-w", str(tmp_path)],
                   check=True, capture_output=True)
    wheel = next(tmp_path.glob("compsrt-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    want = {p.relative_to(ROOT).as_posix() for p in (ROOT / "compsrt").rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and "_csrc" not in p.parts and p.suffix != ".pyc"}
    want |= {f"compsrt/_csrc/{p.name}" for p in (ROOT / "csrc").glob("*") if p.suffix in (".cu", ".cpp", ".h", ".cuh")}
    assert not want - names, sorted(want - names)[:10]
    assert any(n.startswith("compsrt/assets/calib/") for n in names)
    assert "compsrt/weights/swinir_light_x2.safetensors" in names
