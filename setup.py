"""Package metadata and the compsrt-infer console script."""
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

CSRC = Path(__file__).resolve().parent / "csrc"


class BuildPyWithCsrc(build_py):
    """build_py that also ships ``csrc/`` sources (.cu, .cpp, headers) as ``compsrt/_csrc/`` in the wheel, where
    ``compsrt.kernels.packed_linear_cuda`` finds them when no checkout is around. Editable installs
    skip the copy: they run from the checkout, whose ``csrc/`` the loader reads directly."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        sources = sorted(p for p in CSRC.glob("*") if p.suffix in (".cu", ".cuh", ".h", ".cpp")) if CSRC.is_dir() else []
        if not sources:
            self.warn(f"no CUDA sources in {CSRC}: the wheel ships without compsrt/_csrc")
            return
        target = Path(self.build_lib) / "compsrt" / "_csrc"
        self.mkpath(str(target))
        for src in sources:
            self.copy_file(str(src), str(target / src.name))


setup(
    name="compsrt",
    version="0.1.0",
    description="Compress image super-resolution transformers to 2-4 bits (CompSRT) and run them",
    python_requires=">=3.10",
    packages=find_packages(include=["compsrt", "compsrt.*"]),
    package_data={"compsrt": ["weights/*.safetensors", "assets/*.png", "assets/calib/*.png"]},
    include_package_data=True,
    cmdclass={"build_py": BuildPyWithCsrc},
    install_requires=[
        "torch>=2.1",
        "numpy",
        "scipy",
        "safetensors",
        "pillow",
        "pypng",        # 16-bit RGB/RGBA/gray+alpha PNG, which Pillow reads as 8 bits and cannot write
        "tqdm",
        "ninja",
        "triton; platform_system == 'Linux'",
    ],
    extras_require={"test": ["pytest", "pytest-benchmark", "hypothesis"], "analysis": ["matplotlib"]},
    entry_points={"console_scripts": ["compsrt-infer=compsrt.cli:main"]},
)
