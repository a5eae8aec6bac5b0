"""Library versions for provenance records."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

PACKAGES = ("lineguard", "torch", "torchvision", "onnx", "onnxruntime", "onnxruntime-gpu", "numpy",
            "opencv-python-headless", "segment-anything", "transformers", "optimum")


def library_versions(packages: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    out = {}
    for p in packages:
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            continue
    return out
