"""The threshold a graph applies to its own outputs, so an imported model keeps the one it was tuned with.

anomalib's exports end in ``pred_label = pred_score > 0.5`` and ``pred_mask = anomaly_map > 0.5``
(its post-processor normalises scores so that its F1-adaptive threshold lands on 0.5). Any graph
that compares one of its outputs with a constant is read the same way: the comparison is the
model's decision, and ``rule: "model"`` writes it into the manifest as the bundle's threshold.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

COMPARISONS = ("Greater", "GreaterOrEqual")
PASS_THROUGH = ("Cast", "Identity", "Unsqueeze", "Squeeze", "Reshape")


def _scalar(m: onnx.ModelProto, name: str, nodes: dict[str, onnx.NodeProto]) -> float | None:
    """The value of ``name`` if it is a one-element constant (an initializer or a Constant node)."""
    t = next((i for i in m.graph.initializer if i.name == name), None)
    if t is None and name in nodes and nodes[name].op_type == "Constant" and nodes[name].attribute:
        t = nodes[name].attribute[0].t if nodes[name].attribute[0].name == "value" else None
    if t is None or int(np.prod(t.dims)) != 1:  # never converts a weight (PatchCore's bank) to numpy
        return None
    c = numpy_helper.to_array(t).reshape(())
    return float(c) if np.isfinite(c) else None


def compared_with(m: onnx.ModelProto, value: str, producer: dict[str, onnx.NodeProto] | None = None
                  ) -> dict[str, Any] | None:
    """``{"output", "op", "threshold"}`` when a graph output is ``value > c`` (or ``>=``) for a scalar c."""
    producer = producer if producer is not None else {o: n for n in m.graph.node for o in n.output}
    for out in m.graph.output:
        node = producer.get(out.name)
        while node is not None and node.op_type in PASS_THROUGH:
            node = producer.get(node.input[0])
        if node is None or node.op_type not in COMPARISONS or node.input[0] != value:
            continue
        c = _scalar(m, node.input[1], producer)
        if c is not None:
            return {"output": out.name, "op": node.op_type, "threshold": c}
    return None


def model_thresholds(m: onnx.ModelProto, score: str | None, anomaly_map: str) -> dict[str, Any] | None:
    """What ``calibrate`` would write for rule "model": thresholds, normalisation and its record.

    None when the graph does not threshold its score. The normalisation puts the model's own
    threshold at 0.5 with a span of 1, which for anomalib's [0, 1] scores is the identity.
    """
    producer = {o: n for n in m.graph.node for o in n.output}
    image = compared_with(m, score, producer) if score else None
    if image is None:
        return None
    pixel = compared_with(m, anomaly_map, producer)
    t = image["threshold"]
    thresholds = {"image": t} | ({"pixel": pixel["threshold"]} if pixel else {})
    if image["op"] == "Greater":  # the graph's own comparison: a score equal to t is good
        thresholds["strict"] = True
    record = {"rule": "model", "images": 0, "image_from": f"{image['output']} = {score} {image['op']} {t:g}"}
    if pixel:
        record["pixel_from"] = f"{pixel['output']} = {anomaly_map} {pixel['op']} {pixel['threshold']:g}"
    return {"thresholds": thresholds, "record": record,
            "normalization": {"method": "min_max", "threshold": t, "min": t - 0.5, "max": t + 0.5}}
