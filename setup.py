"""Package metadata and the compsrt-infer console script."""
from setuptools import find_packages, setup

setup(
    name="compsrt",
    version="0.1.0",
    description="Compress image super-resolution transformers to 2-4 bits (CompSRT) and run them",
    python_requires=">=3.10",
    packages=find_packages(include=["compsrt", "compsrt.*"]),
    package_data={"compsrt": ["weights/*.safetensors", "assets/*.png", "assets/*.safetensors"],
                  "": ["csrc/*"]},
    include_package_data=True,
    install_requires=[
        "torch>=2.1",
        "numpy",
        "scipy",
        "safetensors",
        "pillow",
        "tqdm",
        "ninja",
        "triton; platform_system == 'Linux'",
    ],
    extras_require={"test": ["pytest", "pytest-benchmark"]},
    entry_points={"console_scripts": ["compsrt-infer=compsrt.cli:main"]},
)
