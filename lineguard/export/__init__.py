"""lineguard export: trained checkpoints → ONNX bundles (needs the [export] extra: torch, onnx, ...)."""
