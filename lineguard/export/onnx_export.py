"""torch → ONNX with the exporter chosen on purpose and the result checked.

torch 2.14's ``torch.onnx.export`` defaults to the dynamo exporter. For these graphs (a CNN
with an unrolled chunk loop, gathers and TopK) we use the TorchScript-based exporter
(``dynamo=False``): it produces a compact opset-17 graph with a symbolic batch dimension.
Every export is loaded back with ``onnx.checker`` and compared against PyTorch by the caller.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import onnx
import torch

OPSET = 17
EXPORTER = f"torch.onnx TorchScript exporter (dynamo=False), opset {OPSET}"


def export_onnx(
    module: torch.nn.Module,
    example: tuple[torch.Tensor, ...],
    path: Path,
    input_names: list[str],
    output_names: list[str],
    dynamic_axes: dict[str, dict[int, str]],
    output_shapes: dict[str, list[int | str]] | None = None,
) -> dict[str, Any]:
    """Export ``module`` to ``path``; return a provenance record.

    ``output_shapes`` states the outputs' shapes where the tracer's inferred ones are
    wrong or anonymous (it names dims after internal nodes), so the manifest reads cleanly.
    """
    module.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TracerWarnings about python ints in the unrolled loop
        torch.onnx.export(
            module, example, str(path), dynamo=False, opset_version=OPSET,
            input_names=input_names, output_names=output_names, dynamic_axes=dynamic_axes,
            do_constant_folding=True, external_data=False,
        )
    if output_shapes:
        model = onnx.load(str(path))
        for out in model.graph.output:
            if out.name in output_shapes:
                dims = out.type.tensor_type.shape.dim
                del dims[:]
                for d in output_shapes[out.name]:
                    dims.add().CopyFrom(onnx.TensorShapeProto.Dimension(
                        **({"dim_value": d} if isinstance(d, int) else {"dim_param": d})))
        onnx.save(model, str(path))
    onnx.checker.check_model(str(path), full_check=True)
    return {"exporter": EXPORTER, "torch": torch.__version__, "onnx": onnx.__version__}
