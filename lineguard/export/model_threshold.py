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


def _constants(m: onnx.ModelProto) -> dict[str, np.ndarray]:
    out = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    for n in m.graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            out[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    return out


def compared_with(m: onnx.ModelProto, value: str) -> dict[str, Any] | None:
    """``{"output", "op", "threshold"}`` when a graph output is ``value > c`` (or ``>=``) for a scalar c."""
    producer = {o: n for n in m.graph.node for o in n.output}
    consts = _constants(m)
    for out in m.graph.output:
        node = producer.get(out.name)
        while node is not None and node.op_type in PASS_THROUGH:
            node = producer.get(node.input[0])
        if node is None or node.op_type not in COMPARISONS or node.input[0] != value:
            continue
        c = consts.get(node.input[1])
        if c is not None and c.size == 1 and np.isfinite(c).all():
            return {"output": out.name, "op": node.op_type, "threshold": float(c.reshape(()))}
    return None


def model_thresholds(m: onnx.ModelProto, score: str | None, anomaly_map: str) -> dict[str, Any] | None:
    """What ``calibrate`` would write for rule "model": thresholds, normalisation and its record.

    None when the graph does not threshold its score. The normalisation puts the model's own
    threshold at 0.5 with a span of 1, which for anomalib's [0, 1] scores is the identity.
    """
    image = compared_with(m, score) if score else None
    if image is None:
        return None
    pixel = compared_with(m, anomaly_map)
    t = image["threshold"]
    thresholds = {"image": t} | ({"pixel": pixel["threshold"]} if pixel else {})
    if image["op"] == "Greater":  # the graph's own comparison: a score equal to t is good
        thresholds["strict"] = True
    record = {"rule": "model", "images": 0, "image_from": f"{image['output']} = {score} {image['op']} {t:g}"}
    if pixel:
        record["pixel_from"] = f"{pixel['output']} = {anomaly_map} {pixel['op']} {pixel['threshold']:g}"
    return {"thresholds": thresholds, "record": record,
            "normalization": {"method": "min_max", "threshold": t, "min": t - 0.5, "max": t + 0.5}}
